"""The per-worker training loop shared by pretraining and SFT: runs inside Ray Train.

Everything that is not the model lives here: data parallelism (DDP or FSDP2, gloo on
CPU, nccl on GPU: raylm/train/parallel.py), bf16 autocast and torch.compile of the
forward with its loss on GPU, AdamW (fused on GPU) with warmup + cosine or WSD
schedule, gradient accumulation and clipping, a deterministic data order that is a
pure function of the step (so a restored run reads exactly the batches it would have
read), batches built ahead on a thread (raylm/train/batches.py), metrics (tokens/s,
MFU in both conventions against the card's own peak: raylm/train/flops.py), val loss
and bits per byte, sample generations, and checkpoints reported through ray.train.report.

The loop does not wait for the device between steps: losses and the gradient norm stay
on the device and are read only at log, eval and checkpoint steps.

Pretraining reads token shards (TokenStream: every token is a target); SFT reads
packed conversation rows with a loss mask (PackedRows: only assistant tokens are
targets) and starts from a checkpoint (`init_checkpoint`). Both give batches of
(tokens, mask), so the loop itself does not know which step it is running.

Workers get a typed `LoopConfig` (pydantic, pickled by Ray) and read every input
(shards, rows, the init checkpoint, the tokenizer) from the run's storage through
node-local copies, so they may run on any node. The same function runs in one
plain process (`run_without_ray`) for tests, for benchmarks/pretrain_cpu.py (which
measures what Ray adds) and for benchmarks/gpu_check.py: nothing on this module's
import path loads Ray, pyarrow or tokenizers.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from raylm.config import GPTConfig, StorageConfig, TrainConfig
from raylm.model.engine import Engine
from raylm.model.gpt import GPT, token_loss  # noqa: F401 (token_loss: imported from here by the RL learner)
from raylm.train.batches import Prefetcher, local_file, open_stream
from raylm.train.flops import mfu, peak_bf16_flops
from raylm.train.parallel import (CHECKPOINT_FILE, full_model_state, grad_norm_tensor, load_meta,  # noqa: F401
                                  restore_checkpoint, save_checkpoint, wrap)


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


def train_loop(config: LoopConfig) -> None:
    """Ray Train's train_loop_per_worker."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # the worker's reserved CPUs, no more (Ray's OMP_NUM_THREADS may say otherwise)
        torch.set_num_threads(config.train.cpus_per_worker)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model, wrapped, optimizer, start, history = build(config, device, world, Path(folder))
    else:
        model, wrapped, optimizer, start, history = build(config, device, world)
    parallelism = config.train.parallelism

    def report(metrics: dict, step: int, save: bool, full_model: dict | None = None) -> None:
        history.append(metrics)
        if not save:
            ray.train.report(metrics)
            return
        # FSDP: every rank writes its shards; the final checkpoint also holds the whole model (gathered by
        # the loop) for the export
        full = full_model if step == config.train.steps else None
        with tempfile.TemporaryDirectory() as tmp:
            meta = {"step": step, "metrics": metrics, "history": history, "model_config": model.cfg.model_dump()}
            save_checkpoint(Path(tmp), model, optimizer, parallelism, rank, meta, full_model=full)
            writes = rank == 0 or parallelism == "fsdp"
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if writes else None)

    run(config, model, wrapped, optimizer, start, rank, world, device, report, restored=checkpoint is not None)


def build(config: LoopConfig, device: torch.device, world: int = 1, checkpoint: Path | None = None):
    """(model, wrapped, optimizer, start step, history): fresh, from `init_checkpoint` (SFT), or restored
    from a checkpoint folder. `wrapped` is what the forward runs through (DDP, or the FSDP-sharded model)."""
    cfg = config.train
    torch.manual_seed(cfg.seed)
    model = GPT(config.model).to(device)
    model.checkpoint_blocks, model.loss_chunk = cfg.activation_checkpointing, cfg.loss_chunk_tokens
    state = load_meta(checkpoint) if checkpoint is not None else None
    if state is None and config.init_checkpoint:  # SFT starts from an earlier step's weights
        from raylm.model.hf import load_pretrained

        model.load_state_dict(load_pretrained(local_file(config, config.init_checkpoint)).state_dict())
    wrapped = wrap(model, cfg.parallelism, device, world, bf16=device.type == "cuda")
    # after wrapping: FSDP replaces the parameters with sharded ones
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    if state is None:
        return model, wrapped, optimizer, 0, []
    restore_checkpoint(checkpoint, state, model, optimizer, cfg.parallelism)
    return model, wrapped, optimizer, state["step"], list(state["history"])


def run(config: LoopConfig, model: GPT, wrapped, optimizer, start: int, rank: int, world: int, device, report,
        restored: bool = False) -> None:
    """The loop proper; `wrapped` is what build() returned (DDP, the sharded model, or the model itself).
    `report(metrics, step, save, full_model)` is called at log, eval and checkpoint steps; `full_model` is the
    gathered state dict under FSDP where the loop gathered one (rank 0), else None."""
    cfg = config.train
    cuda = device.type == "cuda"
    fsdp = cfg.parallelism == "fsdp"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    forward = torch.compile(wrapped) if cuda and cfg.compile else wrapped
    train, val = open_stream(config, "train"), open_stream(config, "val")
    tag = f"[{config.step_name}]"
    token_bytes = torch.tensor(config.token_bytes, dtype=torch.int64)
    batch, accum, steps = cfg.batch_size, cfg.grad_accum, cfg.steps
    tokens_per_step = batch * accum * world * cfg.seq_len
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if cuda else float("nan")
    if rank == 0 and restored:
        print(f"{tag} restored from checkpoint at step {start}", flush=True)
    firsts = (((step * accum + micro) * world + rank) * batch for step in range(start, steps) for micro in range(accum))
    batches = iter(Prefetcher(train, firsts, batch, pin=cuda, depth=cfg.prefetch))
    last_log, last_step = time.time(), start
    for step in range(start, steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            seqs, mask = next(batches)
            seqs = seqs.to(device, non_blocking=True)
            mask = None if mask is None else mask.to(device, non_blocking=True)
            last = micro == accum - 1  # gradients are reduced across ranks once per step, on the last micro-batch
            if fsdp:
                wrapped.set_requires_gradient_sync(last)
            sync = nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
            with sync:
                with autocast:
                    loss = forward(seqs[:, :-1], targets=seqs[:, 1:], mask=mask)
                (loss / accum).backward()
            loss_sum += loss.detach()
        grad_norm = grad_norm_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        log = done % cfg.log_every == 0 or done == steps
        evaluate_now = done % cfg.eval_every == 0 or done == steps
        save = done % cfg.checkpoint_every == 0 or done == steps
        show = bool(config.tokenizer) and (done == steps or bool(cfg.sample_every and done % cfg.sample_every == 0))
        if not (log or evaluate_now or save or show):
            continue  # nothing is read from the device: the next step is queued behind this one
        metrics = {"step": done, "loss": loss_sum.item() / accum, "lr": lr, "grad_norm": grad_norm.item(),
                   "restored_from": start if restored else None}
        if log:
            elapsed = time.time() - last_log  # after the .item() above: the device has finished these steps
            metrics["tokens_per_s"] = tokens_per_step * (done - last_step) / max(elapsed, 1e-9)
            if cuda:
                metrics.update(mfu(metrics["tokens_per_s"], model, cfg.seq_len, world, peak))
            last_log, last_step = time.time(), done
            if rank == 0:
                extra = f" mfu {metrics['mfu']:.1%}" if cuda else ""
                print(f"{tag} step {done}/{steps} loss {metrics['loss']:.4f} lr {lr:.2e} "
                      f"{metrics['tokens_per_s']:,.0f} tok/s{extra}", flush=True)
        if evaluate_now:
            metrics.update(evaluate(model, val, token_bytes, cfg.eval_batches, batch, device, autocast))
            if rank == 0:
                print(f"{tag} step {done} val loss {metrics['val_loss']:.4f} "
                      f"val bpb {metrics['val_bpb']:.4f}", flush=True)
        # FSDP: the whole model, for the samples and the final checkpoint, gathered once (every rank joins;
        # only rank 0 receives it)
        full = full_model_state(model, "fsdp") if fsdp and (show or (save and done == steps)) else None
        if show and rank == 0:
            for prompt, text in sample(plain_copy(full, config) if fsdp else model, config).items():
                print(f"{tag} sample {prompt!r} -> {text!r}", flush=True)
        if log or evaluate_now or save:  # a report is a sync point: not every step
            report(metrics, done, save, full)


def plain_copy(state: dict, config: LoopConfig) -> GPT:
    """An unsharded model on CPU from a gathered state dict (rank 0's, under FSDP)."""
    plain = GPT(config.model)
    plain.load_state_dict(state)
    return plain


def sample(model: GPT, config: LoopConfig) -> dict[str, str]:
    """A few greedy continuations (or, with `chat_samples`, assistant replies), decoded; for the log."""
    from raylm.tokenizer.bpe import load
    from raylm.tokenizer.chat import ChatFormat

    tok = load(local_file(config, config.tokenizer))
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
    model, wrapped, optimizer, start, history = build(config, device)
    run(config, model, wrapped, optimizer, start, 0, 1, device, lambda m, step, save, full=None: history.append(m))
    return history
