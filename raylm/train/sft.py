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
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from raylm.config import SftConfig
from raylm.model.hf import from_hf_config, save_pretrained
from raylm.runs import StepResult, Work
from raylm.tasks import generate_tasks
from raylm.tasks.conversations import load_conversations
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat
from raylm.train.loop import LoopConfig
from raylm.train.pretrain import token_byte_lengths
from raylm.train.trainer import fit, model_from_state, plot_losses

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


def build_sft_data(cfg: SftConfig, tokenizer_dir: Path, out_dir: Path) -> dict:
    """Render, split and pack the SFT conversations into out_dir/{train,val}.npz; returns counts."""
    chat = ChatFormat(load(tokenizer_dir))
    conversations = [(t.family, t.conversation()) for t in generate_tasks(cfg.mix, cfg.data_seed)]
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
        np.savez(out_dir / f"{split}.npz", tokens=tokens, mask=mask)
        counts[split] = {"conversations": len(rendered), "rows": len(tokens),
                         "trained_tokens": int(mask.sum()), "fill": float((tokens != pad).mean())}
    return counts


def run_sft(cfg: SftConfig, pretrain: StepResult, work: Work, train_rel: str, key: str) -> dict:
    """`train_rel`: the run's Ray Train folder in storage; `key`: this step's digest (names the Ray Train run)."""
    storage, base_rel = work.storage, f"{pretrain.rel}/hf"
    base_dir = storage.local(base_rel)
    model_config = from_hf_config(json.loads((base_dir / "config.json").read_text()))
    if cfg.seq_len > model_config.max_seq_len:
        raise ValueError(f"sft.seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len}")
    counts = build_sft_data(cfg, base_dir, work.local)
    print(f"[sft] {counts['train']['conversations']} train / {counts['val']['conversations']} val conversations "
          f"in {counts['train']['rows']} rows ({counts['train']['fill']:.0%} filled), "
          f"{counts['too_long']} too long for {cfg.seq_len} tokens", flush=True)
    config = LoopConfig(
        step_name="sft", train=cfg, model=model_config, storage=storage.cfg, data="rows",
        train_files=[work.publish("train.npz")], val_files=[work.publish("val.npz")],
        tokenizer=base_rel, token_bytes=token_byte_lengths(base_dir), init_checkpoint=base_rel,
        chat_samples=CHAT_SAMPLES)
    name = f"sft-{key}"  # the digest covers the base model's whole history: a new base starts from step 0
    print(f"[sft] {cfg.num_workers} Ray Train workers, {cfg.steps} steps from {storage.uri(base_rel)}", flush=True)
    state = fit(config, cfg.num_workers, cfg.use_gpu, cfg.max_failures, storage, train_rel, name)
    model = model_from_state(state)
    save_pretrained(model, work.local / "hf", tokenizer_dir=base_dir, chat=True)
    (work.local / "history.json").write_text(json.dumps(state["history"]))
    plot_losses(state["history"], work.local / "loss.png", "SFT (assistant tokens only)")
    print(f"[sft] val loss {state['metrics'].get('val_loss', float('nan')):.4f}; chat checkpoint written",
          flush=True)
    return {"steps": state["step"], "final": state["metrics"], "data": counts,
            "ray_train_run": storage.uri(f"{train_rel}/{name}")}
