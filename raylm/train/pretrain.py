"""The pretrain step: next-token prediction on Ray Train (TorchTrainer, V2 API), HF export.

    raylm pretrain                      # runs/<name>/tokenizer -> runs/<name>/pretrain/hf

Ray Train keeps its checkpoints in runs/<name>/ray_train/pretrain-<config hash>/,
outside the step folder: rerunning the same run name with the same config
resumes from the latest checkpoint (Ray Train V2 restores a run from its storage
path and name), and FailureConfig(max_failures) restarts the worker group from the
last checkpoint when a worker dies mid-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raylm.config import PretrainConfig
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from raylm.runs import config_hash, read_manifest
from raylm.train.loop import CHECKPOINT_FILE, train_loop

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


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([m["step"] for m in history], [m["loss"] for m in history], label="train loss", lw=1)
    evals = [m for m in history if "val_loss" in m]
    ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_pretrain(cfg: PretrainConfig, tokenizer_dir: Path, out_dir: Path, storage_dir: Path,
                 extra: dict | None = None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {**loop_config(cfg, tokenizer_dir), **(extra or {})}
    name = f"pretrain-{config_hash(cfg.model_dump())}"  # same config, same name: a rerun resumes
    print(f"[pretrain] {cfg.num_workers} Ray Train workers, {cfg.steps} steps; checkpoints in {storage_dir / name}",
          flush=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_dir).resolve()),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
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
