"""The pretrain step: next-token prediction on Ray Train (TorchTrainer, V2 API), HF export.

    raylm pretrain                      # runs/<name>/tokenizer -> runs/<name>/pretrain/hf

Ray Train keeps its checkpoints in runs/<name>/ray_train/pretrain-<config hash>/,
outside the step folder, so rerunning the same config resumes (raylm/train/trainer.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from raylm.config import PretrainConfig
from raylm.model.hf import save_pretrained
from raylm.runs import config_hash, read_manifest
from raylm.train.trainer import fit, model_from_state, plot_losses

PEAK_BF16_FLOPS = 989e12  # H100 SXM dense bf16; MFU is reported against it on GPU


def token_byte_lengths(tokenizer_dir: Path) -> list[int]:
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    lengths = []
    for i in range(tok.get_vocab_size()):
        token = tok.id_to_token(i)
        lengths.append(0 if token in specials else len(tok.decode([i]).encode("utf-8", "surrogatepass")))
    return lengths


def loop_config(cfg: PretrainConfig, tokenizer_dir: Path) -> dict:
    """The plain-data config the workers get: the step config plus paths and tokenizer facts."""
    tokenizer_dir = Path(tokenizer_dir).resolve()
    shards = read_manifest(tokenizer_dir)["metrics"]["shards"]
    token_bytes = token_byte_lengths(tokenizer_dir)
    model = {**cfg.model.model_dump(), "vocab_size": len(token_bytes)}
    return {
        **cfg.model_dump(exclude={"model"}), "model": model,
        "train_shards": [str(tokenizer_dir / "shards" / s) for s in shards["train"]["shards"]],
        "val_shards": [str(tokenizer_dir / "shards" / s) for s in shards["val"]["shards"]],
        "token_bytes": token_bytes, "tokenizer_file": str(tokenizer_dir / "tokenizer.json"),
        "peak_flops": PEAK_BF16_FLOPS,
    }


def run_pretrain(cfg: PretrainConfig, tokenizer_dir: Path, out_dir: Path, storage_dir: Path,
                 extra: dict | None = None) -> dict:
    config = {**loop_config(cfg, tokenizer_dir), **(extra or {})}
    name = f"pretrain-{config_hash(cfg.model_dump())}"  # same config, same name: a rerun resumes
    print(f"[pretrain] {cfg.num_workers} Ray Train workers, {cfg.steps} steps; checkpoints in {storage_dir / name}",
          flush=True)
    state = fit(config, cfg.num_workers, cfg.use_gpu, cfg.max_failures, storage_dir, name)
    model = model_from_state(state)
    save_pretrained(model, Path(out_dir) / "hf", tokenizer_dir=tokenizer_dir)
    (Path(out_dir) / "history.json").write_text(json.dumps(state["history"]))
    plot_losses(state["history"], Path(out_dir) / "loss.png")
    final = state["metrics"]
    unigram = read_manifest(tokenizer_dir)["metrics"]["unigram_val_bits_per_byte"]
    print(f"[pretrain] val bpb {final.get('val_bpb', float('nan')):.4f} vs unigram {unigram:.4f}; "
          f"HF checkpoint written", flush=True)
    return {"steps": state["step"], "final": final, "unigram_val_bits_per_byte": unigram,
            "num_params": model.num_params(non_embedding=False), "checkpoint": str(Path(out_dir) / "hf"),
            "ray_train_run": str(Path(storage_dir) / name)}
