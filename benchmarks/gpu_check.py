"""The GPU check: raylm's training path on one card, stage by stage, one JSON line per stage as it goes.

Runs where only torch (+ numpy, pydantic, pyyaml) is installed: nothing on its import path
loads Ray, vLLM, pyarrow or tokenizers (the last line lists any that were loaded; a test
checks it is empty). On the device tool's H200 image pydantic is missing: carry its wheels
(pydantic, pydantic-core, annotated-types, typing-inspection). Stages:

- `env`: card, torch, the dense bf16 peak MFU is counted against (raylm/train/flops.py).
- `reference_step`: a plain compact step (compile, SDPA, bf16 autocast, fused AdamW) on the
  anchor's shape: the Llama-style 162M model of issue 15 (12 layers, dim 768, 12 heads, no GQA,
  SwiGLU 2,048, vocabulary 50,304, untied), B=32, T=1024, random tokens.
- `loop`: raylm's own training loop (raylm/train/loop.py: prefetch, loss inside the compiled
  forward, no per-step host syncs) on synthetic shards of the same shape; steady tokens/s from
  its log points after the first.
- `sdpa`: which SDPA kernels run the cluster preset's GQA shape (12 heads, 4 KV heads, d 64) in
  bf16, and the time of each, forced one at a time.
- `graph_breaks`: torch._dynamo.explain over the training forward with its loss.
- `memory_1b`: peak memory of a ~1B model's training step (eager) under DDP's layout (a whole
  model) and FSDP2 on a one-rank mesh, with and without activation checkpointing.

MFU in both conventions: `mfu` = 6 x non-embedding parameters + attention (raylm's),
`mfu_all_params` = 6 x all parameters + attention (the reference's).

    python benchmarks/gpu_check.py --out /tmp/gpu.jsonl          # on a GPU: under 5 minutes on an H200
    python benchmarks/gpu_check.py --smoke                       # CPU, tiny shapes: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.config import GPTConfig, StorageConfig, TrainConfig  # noqa: E402
from raylm.model.gpt import GPT  # noqa: E402
from raylm.tokenizer.shard_format import write_shard  # noqa: E402
from raylm.train.flops import mfu, peak_bf16_flops  # noqa: E402
from raylm.train.loop import LoopConfig, build, run  # noqa: E402

FORBIDDEN = ("ray", "vllm", "pyarrow", "tokenizers")
ANCHOR = dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12, n_kv_heads=12, intermediate_size=2048,
              max_seq_len=1024)
ONE_B = dict(vocab_size=50304, dim=2048, n_layers=18, n_heads=16, n_kv_heads=4, intermediate_size=5632,
             max_seq_len=1024)
TINY = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=128, max_seq_len=64)


def emit(out, stage: str, **fields) -> None:
    line = json.dumps({"stage": stage, **fields}, default=str)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_step(cfg: GPTConfig, device, batch: int, seq: int, steps: int, warmup: int, compile_: bool) -> dict:
    """The issue's reference recipe around raylm's model: the upper bound the loop is compared with."""
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    forward = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    for i in range(warmup + steps):
        if i == warmup:  # compile and autotune outside the timed window
            sync(device)
            start = time.perf_counter()
        with autocast:
            loss = forward(data[:, :-1], targets=data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    tokens_per_s = batch * seq * steps / (time.perf_counter() - start)
    return {"tokens_per_s": tokens_per_s, "params": model.num_params(non_embedding=False),
            "params_non_embedding": model.num_params(), "final_loss": loss.item(), "model": model}


def loop_throughput(cfg: GPTConfig, device, batch: int, seq: int, steps: int, log_every: int, compile_: bool,
                    folder: Path) -> dict:
    """raylm's loop, one process, on synthetic shards: what a Ray Train worker runs, without Ray."""
    rng = np.random.default_rng(0)
    for split, n in (("train", batch * (seq + 1) * (steps + 2)), ("val", 4 * (seq + 1) + 1)):
        write_shard(folder / f"{split}.bin", rng.integers(0, cfg.vocab_size, n).astype(np.uint16))
    train = TrainConfig(steps=steps, batch_size=batch, seq_len=seq, warmup_steps=2, log_every=log_every,
                        eval_every=10 * steps, eval_batches=1, checkpoint_every=10 * steps, compile=compile_)
    config = LoopConfig(step_name="gpu-check", train=train, model=cfg, storage=StorageConfig(uri=str(folder)),
                        data="shards", train_files=["train.bin"], val_files=["val.bin"], tokenizer="",
                        token_bytes=[1] * cfg.vocab_size)
    model, wrapped, optimizer, start, history = build(config, device)
    run(config, model, wrapped, optimizer, start, 0, 1, device, lambda m, step, save, full=None: history.append(m))
    points = [m["tokens_per_s"] for m in history if "tokens_per_s" in m][1:]  # the first holds the compile
    return {"tokens_per_s": statistics.median(points) if points else float("nan"), "log_points": len(points),
            "final_loss": history[-1]["loss"]}


def sdpa_kernels(device, smoke: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, T, heads, kv, d = (2, 64, 4, 2, 16) if smoke else (16, 1024, 12, 4, 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(B, heads, T, d, device=device, dtype=dtype)
    k, v = (torch.randn(B, kv, T, d, device=device, dtype=dtype) for _ in range(2))
    found = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                for _ in range(3):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                sync(device)
                start = time.perf_counter()
                for _ in range(10):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                sync(device)
            found[backend.name] = {"ms": 100 * (time.perf_counter() - start)}
        except RuntimeError as error:  # this backend refuses the shape or dtype
            found[backend.name] = {"unsupported": str(error).splitlines()[0][:160]}
    chosen = None
    if device.type == "cuda":  # the kernel the default dispatch picks, by name, from the profiler
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            sync(device)
        chosen = sorted({e.key for e in prof.key_averages() if "attention" in e.key.lower() or "fmha" in e.key.lower()
                         or "flash" in e.key.lower()})
    return {"shape": {"B": B, "T": T, "heads": heads, "kv_heads": kv, "head_dim": d, "dtype": str(dtype)},
            "backends": found, "default_kernels": chosen}


def graph_breaks(model: GPT, device, batch: int, seq: int) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    data = torch.randint(0, model.cfg.vocab_size, (batch, seq + 1), device=device)
    explained = torch._dynamo.explain(model)(data[:, :-1], targets=data[:, 1:])
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "reasons": [str(r.reason)[:200] for r in explained.break_reasons][:5]}


def memory_peak(cfg: GPTConfig, device, batch: int, seq: int, parallelism: str, recompute: bool) -> dict:
    """Peak memory of one eager training step (after one warm-up step), on a one-rank process group."""
    from raylm.train.parallel import wrap

    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    model.checkpoint_blocks, model.loss_chunk = recompute, 8192
    wrapped = wrap(model, parallelism, device, 1, bf16=device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    for i in range(2):
        if i == 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with autocast:
            loss = wrapped(data[:, :-1], targets=data[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {"params": model.num_params(non_embedding=False), "parallelism": parallelism,
              "activation_checkpointing": recompute, "batch": batch, "seq": seq, "peak_gib": peak,
              "step_s": time.perf_counter() - start}
    del model, wrapped, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: a check of the script itself")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[], help="stages to leave out")
    args = parser.parse_args()

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    smoke = args.smoke or device.type == "cpu"
    anchor, big = (GPTConfig(**TINY), GPTConfig(**TINY)) if smoke else (GPTConfig(**ANCHOR), GPTConfig(**ONE_B))
    batch, seq, steps = (4, 32, 4) if smoke else (args.batch, args.seq, args.steps)
    compile_ = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_flops(name)
    emit(args.out, "env", date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=name,
         torch=torch.__version__, cuda=torch.version.cuda, peak_bf16_flops=peak, batch=batch, seq=seq)

    stage_start = time.perf_counter()
    ref = reference_step(anchor, device, batch, seq, steps, 2 if smoke else 10, compile_)
    model = ref.pop("model")
    emit(args.out, "reference_step", **ref, **mfu(ref["tokens_per_s"], model, seq, 1, peak),
         seconds=time.perf_counter() - stage_start)

    if "loop" not in args.skip:
        stage_start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            loop = loop_throughput(anchor, device, batch, seq, 8 if smoke else 60, 2 if smoke else 10, compile_,
                                   Path(folder))
        emit(args.out, "loop", **loop, **mfu(loop["tokens_per_s"], model, seq, 1, peak),
             vs_reference=loop["tokens_per_s"] / ref["tokens_per_s"], seconds=time.perf_counter() - stage_start)
    emit(args.out, "sdpa", **sdpa_kernels(device, smoke))
    if "graph_breaks" not in args.skip:
        emit(args.out, "graph_breaks", **graph_breaks(model, device, 2, seq))
    del model
    if "memory_1b" not in args.skip:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        mem_batch = 2 if smoke else 8
        for parallelism, recompute in (("ddp", False), ("fsdp", False), ("fsdp", True)):
            emit(args.out, "memory_1b", **memory_peak(big, device, mem_batch, seq, parallelism, recompute))
        torch.distributed.destroy_process_group()
    emit(args.out, "imports", forbidden_loaded=[m for m in FORBIDDEN if m in sys.modules])


if __name__ == "__main__":
    main()
