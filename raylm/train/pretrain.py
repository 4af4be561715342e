"""The pretrain step: next-token prediction on Ray Train (TorchTrainer, V2 API), HF export.

    raylm pretrain                      # <run>/tokenizer -> <run>/pretrain/hf

Ray Train keeps its checkpoints in the run's storage under ray_train/pretrain-<step digest>/,
outside the step folder, so rerunning the same step resumes; the digest covers the
pretrain config and every upstream step (data, tokenizer), so a change anywhere
above trains from step 0 instead of restoring a model of other data
(raylm/train/trainer.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from raylm.config import PretrainConfig
from raylm.model.hf import TOKENIZER_FILES, save_pretrained
from raylm.runs import StepResult, Work
from raylm.storage import Storage
from raylm.train.loop import LoopConfig
from raylm.train.trainer import fit, model_from_state, plot_losses, workers_line


def token_byte_lengths(tokenizer_dir: Path) -> list[int]:
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte."""
    from raylm.tokenizer.bpe import load

    tok = load(tokenizer_dir)
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    lengths = []
    for i in range(tok.get_vocab_size()):
        token = tok.id_to_token(i)
        lengths.append(0 if token in specials else len(tok.decode([i]).encode("utf-8", "surrogatepass")))
    return lengths


def loop_config(cfg: PretrainConfig, tokenizer: StepResult) -> LoopConfig:
    """What the workers get: the step config, the model shape, the shards in storage, tokenizer facts."""
    storage, shards = tokenizer.storage, tokenizer.metrics["shards"]
    token_bytes = token_byte_lengths(storage.local(tokenizer.rel, only=("tokenizer.json",)))
    model = cfg.model.model_copy(update={"vocab_size": len(token_bytes)})
    if cfg.model.vocab_size not in (0, len(token_bytes)):
        raise ValueError(f"pretrain.model.vocab_size {cfg.model.vocab_size} differs from the tokenizer's "
                         f"{len(token_bytes)}; leave it 0")
    return LoopConfig(
        step_name="pretrain", train=cfg, model=model, storage=storage.cfg, data="shards",
        train_files=[f"{tokenizer.rel}/shards/{s}" for s in shards["train"]["shards"]],
        val_files=[f"{tokenizer.rel}/shards/{s}" for s in shards["val"]["shards"]],
        tokenizer=tokenizer.rel, token_bytes=token_bytes)


def run_pretrain(cfg: PretrainConfig, tokenizer: StepResult, work: Work, train_rel: str, key: str) -> dict:
    """`train_rel`: the run's Ray Train folder in storage; `key`: this step's digest."""
    storage = work.storage
    config = loop_config(cfg, tokenizer)
    name = f"pretrain-{key}"  # same step, same name: a rerun resumes; anything changed upstream: a new run
    print(f"[pretrain] {workers_line(cfg)}, {cfg.steps} steps; checkpoints in "
          f"{storage.uri(f'{train_rel}/{name}')}", flush=True)
    state = fit(config, cfg.num_workers, cfg.use_gpu, cfg.max_failures, storage, train_rel, name)
    model = model_from_state(state)
    save_pretrained(model, work.local / "hf",
                    tokenizer_dir=tokenizer.storage.local(tokenizer.rel, only=TOKENIZER_FILES))
    (work.local / "history.json").write_text(json.dumps(state["history"]))
    plot_losses(state["history"], work.local / "loss.png")
    final = state["metrics"]
    unigram = tokenizer.metrics["unigram_val_bits_per_byte"]
    print(f"[pretrain] val bpb {final.get('val_bpb', float('nan')):.4f} vs unigram {unigram:.4f}; "
          f"HF checkpoint written", flush=True)
    return {"steps": state["step"], "final": final, "unigram_val_bits_per_byte": unigram,
            "num_params": model.num_params(non_embedding=False), "ray_train_run": storage.uri(f"{train_rel}/{name}")}
