"""Training-step throughput of a 124M-class raylm GPT on one GPU: plain torch, no Ray or vLLM.

The per-worker work of `raylm pretrain` on a GPU: bf16 autocast, torch.compile,
SDPA attention (flash kernels), fused AdamW, random tokens (the data loader is not
what is measured). Prints tokens/s and MFU against the card's dense bf16 peak.

    python benchmarks/gpu_pretrain.py                       # 124M-class preset, B=32, T=1024
    python benchmarks/gpu_pretrain.py --device cpu --tiny   # a smoke test of the script itself

MFU counts 6 * N (non-embedding parameters incl. lm_head) + 12 * L * d * T FLOPs per
token (PaLM, appendix B), the usual convention.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.model.gpt import GPT, GPTConfig  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(name: str) -> float:
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    if args.tiny:
        cfg = GPTConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
        args.batch, args.seq, args.steps, args.warmup = 4, 128, 3, 1
    else:  # GPT-2 small's shape in the Llama architecture
        cfg = GPTConfig(vocab_size=32768, dim=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=args.seq)
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    step_fn = model if args.no_compile or device.type != "cuda" else torch.compile(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)

    def step():
        with autocast:
            logits = step_fn(data[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):  # compile and autotune outside the timed window
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens_per_s = args.batch * args.seq * args.steps / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    flops = model.flops_per_token(args.seq) * tokens_per_s
    print(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name,
        "torch": torch.__version__, "params": model.num_params(non_embedding=False),
        "params_non_embedding": model.num_params(), "batch": args.batch, "seq": args.seq,
        "compile": step_fn is not model, "step_ms": 1000 * seconds / args.steps,
        "tokens_per_s": tokens_per_s, "tflops": flops / 1e12, "mfu": flops / peak_flops(name),
        "final_loss": float(loss),
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }, indent=2))


if __name__ == "__main__":
    main()
