"""The sft step: the base model learns the conversation protocol on Ray Train; a chat checkpoint out.

    raylm sft        # <run>/pretrain/hf -> <run>/sft/hf (with a chat template)

Conversations come from the verifiable task families (raylm/tasks, counts in
`sft.mix`, seeded by `sft.data_seed`) plus any JSONL files in `sft.conversations`.
Each is rendered by raylm/tokenizer/chat.py into ids and a loss mask (assistant
tokens only), and whole conversations are packed greedily into rows of
seq_len + 1 tokens (padding masked out): no conversation is ever cut in half, so
the model always sees the system message its answer must follow. The rows go to
the shared training loop (raylm/train/loop.py) through Ray Train, starting from
the base checkpoint; the result is exported in HF layout with a chat template.

With `sft.pretrain_mix` > 0 that share of the train rows are windows of the
pretraining *train* shards, trained on every token with loss weight
`sft.pretrain_weight` (InstructGPT's PPO-ptx idea applied to SFT): without them
SFT forgets the web (val bits per byte 2.2 -> 5.1, benchmarks/RESULTS.md). Val
rows stay conversations only, and no val shard is ever read, so the eval's val
bits per byte stays held out. With `sft.calculator_share` < 1 that share of the arithmetic
demonstrations call the calculator and the rest do the sums mentally (RL then learns the choice).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from raylm.config import SftConfig
from raylm.model.hf import from_hf_config, save_pretrained
from raylm.runs import StepResult, Work
from raylm.tasks import Task, generate_tasks
from raylm.tasks.arithmetic import written_mentally
from raylm.tasks.conversations import load_conversations
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat
from raylm.tokenizer.shards import load_shards
from raylm.train.loop import LoopConfig
from raylm.train.pretrain import token_byte_lengths
from raylm.train.trainer import fit, model_from_state, plot_losses, workers_line

CHAT_SAMPLES = ["Which is larger, 9.11 or 9.9?", "What is your name?", "Who was Zorblat Quenmire?",
                "How many times does the letter r appear in strawberry?"]


def pack(rendered: list[tuple[list[int], list[int]]], row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy packing of whole conversations into rows of `row_len` tokens; pads are masked out."""
    rows, masks, row, mask = [], [], [], []
    for ids, loss_mask in rendered:
        if len(row) + len(ids) > row_len:
            rows.append(row + [pad_id] * (row_len - len(row)))
            masks.append(mask + [0] * (row_len - len(mask)))
            row, mask = [], []
        row, mask = row + ids, mask + loss_mask
    if row:
        rows.append(row + [pad_id] * (row_len - len(row)))
        masks.append(mask + [0] * (row_len - len(mask)))
    return np.array(rows, dtype=np.int32), np.array(masks, dtype=np.uint8)


def pretrain_rows(shards: list[np.ndarray], count: int, row_len: int, seed: int) -> np.ndarray:
    """`count` rows of `row_len` consecutive tokens cut from the shards (memmaps: only the rows are
    read), in a seeded order that goes through every window before any repeats (the tiny corpus is
    smaller than the mix asks for). A shard's tail shorter than a row is left out."""
    windows = [(s, offset) for s, shard in enumerate(shards) for offset in range(0, len(shard) - row_len + 1, row_len)]
    if not windows:
        raise ValueError(f"sft.pretrain_mix: the pretraining train shards hold no row of {row_len} tokens")
    rng, order = np.random.default_rng(seed), []
    while len(order) < count:
        order.extend(rng.permutation(len(windows)).tolist())
    rows = np.empty((count, row_len), dtype=np.int32)
    for row, w in zip(rows, order[:count]):
        shard, offset = windows[w]
        row[:] = shards[shard][offset:offset + row_len]
    return rows


def train_shard_names(shards: dict) -> list[str]:
    """The tokenizer's train shards, refusing any that is also listed as val: the eval's val bits per
    byte must stay held out from SFT exactly as from pretraining."""
    train, val = shards["train"]["shards"], set(shards["val"]["shards"])
    leaked = [name for name in train if name in val]
    if leaked:
        raise AssertionError(f"sft.pretrain_mix: shards listed as both train and val: {leaked}")
    return list(train)


def with_calculator_share(tasks: list[Task], share: float, seed: int) -> list[Task]:
    """Arithmetic tasks keep their calculator solution with probability `share`, else are written mentally
    (seeded; at 1 the tasks come back unchanged)."""
    rng = random.Random(f"{seed}-calculator")
    return [written_mentally(t) if t.family == "arithmetic" and rng.random() >= share else t for t in tasks]


def build_sft_data(cfg: SftConfig, tokenizer_dir: Path, out_dir: Path,
                   pretrain_shards: list[np.ndarray] | None = None) -> dict:
    """Render, split and pack the SFT conversations into out_dir/{train,val}.npz, adding
    `cfg.pretrain_mix` of the train rows from `pretrain_shards` (train shards only); returns counts."""
    chat = ChatFormat(load(tokenizer_dir))
    conversations = [(t.family, t.conversation()) for t in with_calculator_share(
        generate_tasks(cfg.mix, cfg.data_seed), cfg.calculator_share, cfg.data_seed)]
    for path in cfg.conversations:
        conversations += [("jsonl", c) for c in load_conversations(path)]
    random.Random(cfg.data_seed).shuffle(conversations)
    num_val = max(1, int(len(conversations) * cfg.val_fraction))
    counts: dict = {"too_long": 0, "families": {}}
    splits = {"val": conversations[:num_val], "train": conversations[num_val:]}
    pad = chat.tok.token_to_id("<|pad|>")
    for split, items in splits.items():
        rendered = []
        for family, messages in items:
            out = chat.render(messages)
            if len(out.ids) > cfg.seq_len + 1:
                counts["too_long"] += 1  # counted, not cut: a half conversation teaches the wrong thing
                continue
            rendered.append((out.ids, out.mask))
            counts["families"][family] = counts["families"].get(family, 0) + 1
        tokens, mask = pack(rendered, cfg.seq_len + 1, pad)
        counts[split] = {"conversations": len(rendered), "rows": len(tokens),
                         "trained_tokens": int(mask.sum()), "fill": float((tokens != pad).mean())}
        if split == "train" and cfg.pretrain_mix > 0:
            if not pretrain_shards:
                raise ValueError("sft.pretrain_mix > 0 needs the pretraining train shards")
            web = pretrain_rows(pretrain_shards, round(len(tokens) * cfg.pretrain_mix / (1 - cfg.pretrain_mix)),
                                cfg.seq_len + 1, cfg.data_seed)
            # the mask doubles as a per-token loss weight (token_loss: sum(weight * nats) / sum(weight))
            dtype = np.uint8 if cfg.pretrain_weight == 1 else np.float16
            weight = np.full(web.shape, cfg.pretrain_weight, dtype=dtype)
            tokens, mask = np.concatenate([tokens, web]), np.concatenate([mask, weight])
            counts[split].update(pretrain_rows=len(web), pretrain_tokens=int(web.size))
        np.savez(out_dir / f"{split}.npz", tokens=tokens, mask=mask)
    return counts


def run_sft(cfg: SftConfig, pretrain: StepResult, tokenizer: StepResult, work: Work, train_rel: str,
            key: str) -> dict:
    """`tokenizer`: the step whose train shards feed `sft.pretrain_mix`; `train_rel`: the run's Ray Train
    folder in storage; `key`: this step's digest (names the Ray Train run)."""
    storage, base_rel = work.storage, f"{pretrain.rel}/hf"
    base_dir = storage.local(base_rel)
    model_config = from_hf_config(json.loads((base_dir / "config.json").read_text()))
    if cfg.seq_len > model_config.max_seq_len:
        raise ValueError(f"sft.seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len}")
    web = None
    if cfg.pretrain_mix > 0:
        shards = train_shard_names(tokenizer.metrics["shards"])
        web = load_shards(tokenizer.storage, f"{tokenizer.rel}/shards", shards)
    counts = build_sft_data(cfg, base_dir, work.local, web)
    print(f"[sft] {counts['train']['conversations']} train / {counts['val']['conversations']} val conversations "
          f"in {counts['train']['rows']} rows ({counts['train']['fill']:.0%} filled), "
          f"{counts['too_long']} too long for {cfg.seq_len} tokens", flush=True)
    if web is not None:
        print(f"[sft] + {counts['train']['pretrain_rows']} rows of pretraining text ({cfg.pretrain_mix:.0%} of "
              f"the train rows, every token trained) from {len(web)} train shards", flush=True)
    config = LoopConfig(
        step_name="sft", train=cfg, model=model_config, storage=storage.cfg, data="rows",
        train_files=[work.publish("train.npz")], val_files=[work.publish("val.npz")],
        tokenizer=base_rel, token_bytes=token_byte_lengths(base_dir), init_checkpoint=base_rel,
        chat_samples=CHAT_SAMPLES)
    name = f"sft-{key}"  # the digest covers the base model's whole history: a new base starts from step 0
    print(f"[sft] {workers_line(cfg)}, {cfg.steps} steps from {storage.uri(base_rel)}", flush=True)
    state = fit(config, cfg.num_workers, cfg.use_gpu, cfg.max_failures, storage, train_rel, name)
    model = model_from_state(state)
    save_pretrained(model, work.local / "hf", tokenizer_dir=base_dir, chat=True)
    (work.local / "history.json").write_text(json.dumps(state["history"]))
    plot_losses(state["history"], work.local / "loss.png", "SFT (assistant tokens only)")
    print(f"[sft] val loss {state['metrics'].get('val_loss', float('nan')):.4f}; chat checkpoint written",
          flush=True)
    return {"steps": state["step"], "final": state["metrics"], "data": counts,
            "ray_train_run": storage.uri(f"{train_rel}/{name}")}
