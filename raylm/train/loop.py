"""The per-worker training loop shared by pretraining and SFT: runs inside Ray Train.

Everything that is not the model lives here: DDP (gloo on CPU, nccl on GPU, applied
by ray.train.torch.prepare_model), bf16 autocast and torch.compile on GPU, AdamW
with warmup + cosine or WSD schedule, gradient accumulation and clipping, a
deterministic data order that is a pure function of the step (so a restored run
reads exactly the batches it would have read), metrics, val loss and bits per
byte, sample generations, and checkpoints reported through ray.train.report.

Pretraining reads token shards (TokenStream: every token is a target); SFT reads
packed conversation rows with a loss mask (PackedRows: only assistant tokens are
targets) and starts from a checkpoint (`init_checkpoint`). Both give batches of
(tokens, mask), so the loop itself does not know which step it is running.

Workers get a typed `LoopConfig` (pydantic, pickled by Ray) and read every input
(shards, rows, the init checkpoint, the tokenizer) from the run's storage through
node-local copies, so they may run on any node. The same function runs in one
plain process (`run_without_ray`) for tests and for benchmarks/pretrain_cpu.py,
which measures what Ray adds.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from raylm.config import GPTConfig, StorageConfig, TrainConfig
from raylm.model.engine import Engine
from raylm.model.gpt import GPT
from raylm.storage import Storage
from raylm.tokenizer.shards import read_shard

CHECKPOINT_FILE = "train_state.pt"


class LoopConfig(BaseModel):
    """Everything a training worker needs; storage paths are relative to `storage`."""

    model_config = ConfigDict(extra="forbid")

    step_name: str
    train: TrainConfig
    model: GPTConfig
    storage: StorageConfig
    data: Literal["shards", "rows"]           # token shards (pretraining) or packed rows with a loss mask (SFT)
    train_files: list[str]
    val_files: list[str]
    tokenizer: str                            # a folder holding tokenizer.json
    token_bytes: list[int]                    # UTF-8 bytes per token id: the denominator of bits per byte
    init_checkpoint: str | None = None        # an HF folder to start from (SFT)
    chat_samples: list[str] = []
    peak_flops: float = 989e12


class TokenStream:
    """Sequences of seq_len + 1 tokens drawn from the shards in a seeded, per-epoch permutation.

    Sample k of the run (counted over all ranks) is a pure function of (seed, k): a
    restored run continues exactly where the failed one was, and ranks never overlap.
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, seed: int):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.seq_len, self.seed = seq_len, seed
        self.num_sequences = int((self.offsets[-1] - 1) // seq_len)
        if self.num_sequences < 1:
            raise ValueError(f"{self.offsets[-1]} tokens are too few for sequences of {seq_len}")
        self._perm_epoch, self._perm = -1, None

    def _tokens(self, start: int, length: int) -> np.ndarray:
        parts, pos = [], start
        while length > 0:
            shard = int(np.searchsorted(self.offsets, pos, side="right") - 1)
            local = pos - self.offsets[shard]
            piece = self.shards[shard][local:local + length]
            parts.append(piece)
            pos += len(piece)
            length -= len(piece)
        return np.concatenate(parts).astype(np.int64)

    def sample(self, k: int) -> np.ndarray:
        epoch, index = divmod(k, self.num_sequences)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return self._tokens(int(self._perm[index]) * self.seq_len, self.seq_len + 1)

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, None]:
        return torch.from_numpy(np.stack([self.sample(first + i) for i in range(size)])), None


class PackedRows:
    """Rows of whole conversations packed to seq_len + 1 tokens, with a loss mask (raylm/train/sft.py writes them).

    Row k of the run is row perm_epoch[k % N]: the same pure-function-of-the-step
    order as TokenStream, so SFT resumes exactly too.
    """

    def __init__(self, path: Path, seed: int):
        packed = np.load(path)
        self.tokens, self.mask = packed["tokens"], packed["mask"]
        self.num_sequences, self.seed = len(self.tokens), seed
        if self.num_sequences < 1:
            raise ValueError(f"{path} holds no rows")
        self._perm_epoch, self._perm = -1, None

    def row(self, k: int) -> int:
        epoch, index = divmod(k, self.num_sequences)
        if self.seed is None:  # val: always the same rows in file order
            return index
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return int(self._perm[index])

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row(k) for k in range(first, first + size)]
        tokens = torch.from_numpy(self.tokens[rows].astype(np.int64))
        return tokens, torch.from_numpy(self.mask[rows, 1:].astype(np.float32))


def open_stream(config: LoopConfig, split: str):
    """The batches of one split: packed conversation rows (SFT) or token shards (pretraining)."""
    storage = Storage(config.storage)
    files = [storage.local(rel) for rel in (config.train_files if split == "train" else config.val_files)]
    if config.data == "rows":
        return PackedRows(files[0], config.train.seed if split == "train" else None)
    return TokenStream([read_shard(f) for f in files], config.train.seq_len, config.train.seed if split == "train" else 0)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per target token; with a mask, only masked-in tokens count (mean over them)."""
    nats = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if mask is None:
        return nats.mean() if reduction == "mean" else nats
    mask = mask.flatten().to(nats.device)
    return (nats * mask).sum() / mask.sum().clamp(min=1) if reduction == "mean" else nats * mask


def lr_at(step: int, cfg: TrainConfig) -> float:
    peak, warmup, total = cfg.lr, cfg.warmup_steps, cfg.steps
    floor = peak * cfg.min_lr_ratio
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "wsd":  # warmup-stable-decay: flat, then a linear cool-down over the last 20%
        decay_start = int(0.8 * total)
        return peak if step < decay_start else floor + (peak - floor) * (total - step) / max(1, total - decay_start)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: GPT, stream, token_bytes: torch.Tensor, batches: int, batch_size: int,
             device, autocast) -> dict:
    """Val loss (nats/target token) and bits per byte over the first `batches` val batches (the same every time)."""
    model.eval()
    total_nats, total_bytes, total_tokens = 0.0, 0, 0
    n = min(batches * batch_size, stream.num_sequences)
    for first in range(0, n, batch_size):
        seqs, mask = stream.batch(first, min(batch_size, n - first))
        seqs = seqs.to(device)
        with autocast:
            logits = model(seqs[:, :-1])
        nats = token_loss(logits, seqs[:, 1:], mask, reduction="none")
        weights = torch.ones_like(nats) if mask is None else mask.flatten()
        total_nats += nats.sum().item()
        total_tokens += int(weights.sum())
        total_bytes += int((token_bytes[seqs[:, 1:].flatten().cpu()] * weights.cpu()).sum())
    model.train()
    return {"val_loss": total_nats / max(1, total_tokens), "val_bpb": total_nats / math.log(2) / max(1, total_bytes)}


def _save_state(folder: Path, model: GPT, optimizer, step: int, history: list[dict]) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "metrics": history[-1], "history": history, "model_config": model.cfg.model_dump()},
               folder / CHECKPOINT_FILE)


def train_loop(config: LoopConfig) -> None:
    """Ray Train's train_loop_per_worker."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model, optimizer, start = build(config, device, state)
    ddp = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
    history = state["history"] if state else []

    def report(metrics: dict, step: int, save: bool) -> None:
        history.append(metrics)
        if not save:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                _save_state(Path(tmp), model, optimizer, step, history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)

    run(config, model, ddp, optimizer, start, rank, world, device, report, restored=state is not None)


def build(config: LoopConfig, device, state: dict | None):
    torch.manual_seed(config.train.seed)
    model = GPT(config.model).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.train.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    start = 0
    if state is None and config.init_checkpoint:  # SFT starts from an earlier step's weights
        from raylm.model.hf import load_pretrained

        folder = Storage(config.storage).local(config.init_checkpoint)
        model.load_state_dict(load_pretrained(folder).state_dict())
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    return model, optimizer, start


def run(config: LoopConfig, model: GPT, ddp, optimizer, start: int, rank: int, world: int, device, report,
        restored: bool = False) -> None:
    """The loop proper; `ddp` is the wrapped model (or the model itself in one process)."""
    cfg = config.train
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    forward = torch.compile(ddp) if cuda and cfg.compile else ddp
    train, val = open_stream(config, "train"), open_stream(config, "val")
    tag = f"[{config.step_name}]"
    token_bytes = torch.tensor(config.token_bytes, dtype=torch.int64)
    batch, accum, steps = cfg.batch_size, cfg.grad_accum, cfg.steps
    tokens_per_step = batch * accum * world * cfg.seq_len
    flops_per_token = model.flops_per_token(cfg.seq_len)
    if rank == 0 and restored:
        print(f"{tag} restored from checkpoint at step {start}", flush=True)
    last_log, last_step = time.time(), start
    for step in range(start, steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(accum):
            first = ((step * accum + micro) * world + rank) * batch
            seqs, mask = train.batch(first, batch)
            seqs = seqs.to(device, non_blocking=True)
            sync = nullcontext() if micro == accum - 1 or not hasattr(ddp, "no_sync") else ddp.no_sync()
            with sync, autocast:
                logits = forward(seqs[:, :-1])
                loss = token_loss(logits, seqs[:, 1:], mask)
                (loss / accum).backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        metrics = {"step": done, "loss": loss_sum / accum, "lr": lr, "grad_norm": float(grad_norm),
                   "restored_from": start if restored else None}
        if done % cfg.log_every == 0 or done == steps:
            elapsed = time.time() - last_log
            metrics["tokens_per_s"] = tokens_per_step * (done - last_step) / max(elapsed, 1e-9)
            if cuda:
                metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / (config.peak_flops * world)
            last_log, last_step = time.time(), done
            if rank == 0:
                print(f"{tag} step {done}/{steps} loss {metrics['loss']:.4f} lr {lr:.2e} "
                      f"{metrics['tokens_per_s']:,.0f} tok/s", flush=True)
        if done % cfg.eval_every == 0 or done == steps:
            metrics.update(evaluate(model, val, token_bytes, cfg.eval_batches, batch, device, autocast))
            if rank == 0:
                print(f"{tag} step {done} val loss {metrics['val_loss']:.4f} "
                      f"val bpb {metrics['val_bpb']:.4f}", flush=True)
        if rank == 0 and (done == steps or (cfg.sample_every and done % cfg.sample_every == 0)):
            for prompt, text in sample(model, config).items():
                print(f"{tag} sample {prompt!r} -> {text!r}", flush=True)
        save = done % cfg.checkpoint_every == 0 or done == steps
        if "tokens_per_s" in metrics or "val_loss" in metrics or save:  # a report is a sync point: not every step
            report(metrics, done, save)


def sample(model: GPT, config: LoopConfig) -> dict[str, str]:
    """A few greedy continuations (or, with `chat_samples`, assistant replies), decoded; for the log."""
    from raylm.tokenizer.bpe import load
    from raylm.tokenizer.chat import ChatFormat

    tok = load(Storage(config.storage).local(config.tokenizer))
    engine = Engine(model)
    if config.chat_samples:
        chat = ChatFormat(tok)
        prompts = config.chat_samples
        ids = [chat.prompt([{"role": "user", "content": p}]) for p in prompts]
        outs = engine.generate(ids, 48, temperature=0, stop_ids=chat.stop_ids)
    else:
        prompts = ["The package manager", "To install Debian"]
        eos = tok.token_to_id("<|endoftext|>")
        outs = engine.generate([[eos, *tok.encode(p).ids] for p in prompts], 24, temperature=0, stop_ids=(eos,))
    model.train()
    return {p: tok.decode(o, skip_special_tokens=False) for p, o in zip(prompts, outs)}


def run_without_ray(config: LoopConfig) -> list[dict]:
    """One process, no Ray: the baseline of benchmarks/pretrain_cpu.py and a test harness."""
    device = torch.device("cuda" if torch.cuda.is_available() and config.train.use_gpu else "cpu")
    model, optimizer, start = build(config, device, None)
    history: list[dict] = []
    run(config, model, model, optimizer, start, 0, 1, device, lambda m, step, save: history.append(m))
    return history
