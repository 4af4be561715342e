"""Rollout throughput: vLLM actor vs transformers `generate` vs raylm's torch engine; weight-sync time.

Same checkpoint, same prompts (held-out arithmetic/compare/spelling tasks rendered
by the chat protocol), same sampling (temperature 1, n samples per prompt, stop at
<|im_end|>, at most --max-new-tokens). Each engine runs in a Ray actor with the
same CPUs (--cpus), after one warm-up call. Reported: generated tokens/s (stop
tokens included, padding not) and wall time; then the time to push the policy's
weights into the vLLM actor (safetensors bytes -> reload in place) over --syncs
pushes, and its share of an RL step when the run has an rl/history.json.

    python benchmarks/rollout.py --checkpoint runs/tiny/sft/hf [--prompts 32 --n 8 --cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class TransformersGenerator:
    """transformers' own generate on the same HF checkpoint (left padding, sampling)."""

    def __init__(self, checkpoint: str, stop_id: int, pad_id: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.stop_id, self.pad_id = stop_id, pad_id

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=temperature,
                                      top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                      eos_token_id=self.stop_id, pad_token_id=self.pad_id)
        tokens = 0
        for row in out[:, width:].tolist():
            tokens += row.index(self.stop_id) + 1 if self.stop_id in row else len(row)
        return tokens


def timed(fn, repeats: int = 1):
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return result, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/tiny/sft/hf"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--engines", default="vllm,torch,transformers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/rollout.json"))
    args = parser.parse_args()

    import ray

    from raylm.config import StorageConfig
    from raylm.model.hf import load_pretrained
    from raylm.rl.rollout import RolloutPool
    from raylm.storage import Storage
    from raylm.rl.weight_sync import pack
    from raylm.tasks import generate_tasks
    from raylm.tokenizer.bpe import load
    from raylm.tokenizer.chat import ChatFormat

    chat = ChatFormat(load(args.checkpoint))
    per_family = -(-args.prompts // 3)
    tasks = generate_tasks({"arithmetic": per_family, "compare": per_family, "spelling": per_family}, 99)
    prompts = [chat.prompt(t.messages) for t in tasks[:args.prompts]]
    ray.init(num_cpus=max(2, int(args.cpus)), include_dashboard=False)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "checkpoint": str(args.checkpoint),
                     "prompts": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens,
                     "cpus_per_engine": args.cpus, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "engines": {}}
    for name in args.engines.split(","):
        if name == "transformers":
            actor = ray.remote(TransformersGenerator).options(num_cpus=args.cpus).remote(
                str(args.checkpoint), chat.im_end, chat.tok.token_to_id("<|pad|>"))
            ray.get(actor.generate.remote(prompts[:2], 2, 1.0, 8))  # warm-up
            tokens, seconds = timed(lambda: ray.get(actor.generate.remote(prompts, args.n, 1.0, args.max_new_tokens)))
            ray.kill(actor)
        else:
            started = time.perf_counter()
            storage = Storage(StorageConfig(uri=str(args.checkpoint)))
            pool = RolloutPool(name, storage, "", 1, [chat.im_end], cpus_per_worker=args.cpus)
            pool.generate(prompts[:2], 2, 1.0, 8)  # warm-up (and waits for the engine to load)
            load_s = time.perf_counter() - started
            groups, seconds = timed(lambda: pool.generate(prompts, args.n, 1.0, args.max_new_tokens, seed=0))
            tokens = sum(len(s.ids) for g in groups for s in g)
            if name == "vllm":
                blob = pack(load_pretrained(args.checkpoint))
                syncs = [pool.load_weights(blob) for _ in range(args.syncs)]
                results["weight_sync"] = {"bytes": len(blob), "median_s": statistics.median(syncs),
                                          "max_s": max(syncs)}
            pool.shutdown()
            results["engines"][name] = {"start_s": load_s}
        results["engines"].setdefault(name, {}).update(tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds)
        print(f"{name:>12}: {tokens:,} tokens in {seconds:.1f}s -> {tokens / seconds:,.0f} tok/s", flush=True)

    history = args.checkpoint.parent.parent / "rl" / "history.json"
    if history.is_file():
        steps = [m for m in json.loads(history.read_text()) if "sync_s" in m]
        results["rl_run"] = {"steps": len(steps),
                             "median_sync_share": statistics.median(m["sync_share"] for m in steps),
                             "median_step_s": statistics.median(m["generate_s"] + m["score_s"] + m["train_s"] +
                                                                m["sync_s"] for m in steps)}
    if "weight_sync" in results:
        print(f"weight sync: {results['weight_sync']['bytes'] / 1e6:.1f} MB, median "
              f"{results['weight_sync']['median_s'] * 1000:.0f} ms over {args.syncs} pushes")
    if "rl_run" in results:
        print(f"RL run: median step {results['rl_run']['median_step_s']:.1f}s, "
              f"sync share {100 * results['rl_run']['median_sync_share']:.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM spawns processes
    main()
