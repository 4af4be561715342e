"""What Ray Train adds: the same per-worker loop in one plain process vs on Ray Train, one run.

Both train the tiny preset's model on the tokenizer shards of a finished run for the
same steps with the same total batch: Ray Train with N workers x B sequences
(DDP over gloo, one torch thread each), the plain process with N*B sequences and N
torch threads, and Ray Train with one worker of N CPUs (N threads) and N*B sequences.
Reported: steady-state tokens/s (from the loop's own log points, after the first, so
start-up and the first steps do not count) and wall time.

    python benchmarks/pretrain_cpu.py [--config tiny] [--steps 60]

Needs `raylm run` (or `raylm tokenizer`) to have finished the run's tokenizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.config import StorageConfig, load_config  # noqa: E402
from raylm.runs import run_step  # noqa: E402
from raylm.steps import Run  # noqa: E402
from raylm.storage import Storage  # noqa: E402
from raylm.train.loop import run_without_ray  # noqa: E402
from raylm.train.pretrain import loop_config  # noqa: E402


def steady_tokens_per_s(history: list[dict]) -> float:
    points = [m["tokens_per_s"] for m in history if "tokens_per_s" in m]
    return sum(points[1:]) / max(1, len(points) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="the run (its storage and name) whose tokenizer step is used")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    run_cfg = load_config(args.config)
    cfg = run_cfg.pretrain
    workers = cfg.num_workers
    cfg.steps, cfg.log_every, cfg.eval_every, cfg.checkpoint_every = args.steps, 10, args.steps, args.steps
    tokenizer = Run(run_cfg).result("tokenizer")
    if tokenizer is None:
        raise SystemExit(f"no finished tokenizer step in run '{run_cfg.name}': run `raylm tokenizer` first")

    import torch

    plain = loop_config(cfg.model_copy(update={"batch_size": cfg.batch_size * workers}), tokenizer)
    torch.set_num_threads(workers)
    t = time.time()
    plain_history = run_without_ray(plain)
    plain_wall = time.time() - t

    import ray

    from raylm.train.pretrain import run_pretrain

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    out = Storage(StorageConfig(uri="benchmarks/out/pretrain_cpu"))

    def on_ray_train(train_cfg) -> tuple[dict, float, list[dict]]:
        t = time.time()
        name = f"bench-{int(t)}"  # a fresh Ray Train run every time: nothing resumed
        metrics = run_step("pretrain", out, name, name,
                           lambda work: run_pretrain(train_cfg, tokenizer, work, "ray_train", name)).metrics
        return metrics, time.time() - t, json.loads(out.read_text(f"{name}/history.json"))

    result, ray_wall, ray_history = on_ray_train(cfg)
    # the same batch on one worker holding every core (cpus_per_worker): no DDP, the threads share the work
    one = cfg.model_copy(update={"num_workers": 1, "cpus_per_worker": workers * cfg.cpus_per_worker,
                                 "batch_size": cfg.batch_size * workers})
    one_result, one_wall, one_history = on_ray_train(one)
    ray.shutdown()

    plain_tps, ray_tps = steady_tokens_per_s(plain_history), steady_tokens_per_s(ray_history)
    one_tps = steady_tokens_per_s(one_history)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs",
        "config": {"workers": workers, "batch_per_worker": cfg.batch_size, "seq_len": cfg.seq_len,
                   "steps": cfg.steps, "model": cfg.model.model_dump()},
        "plain_process": {"tokens_per_s": plain_tps, "wall_s": plain_wall,
                          "final_loss": plain_history[-1]["loss"]},
        "ray_train": {"tokens_per_s": ray_tps, "wall_s": ray_wall, "final_loss": result["final"]["loss"]},
        "ray_train_one_worker": {"cpus": one.cpus_per_worker, "tokens_per_s": one_tps, "wall_s": one_wall,
                                 "final_loss": one_result["final"]["loss"]},
        "ray_overhead_steady": 1 - ray_tps / plain_tps,
        "ray_overhead_wall": ray_wall / plain_wall - 1,
        "one_worker_speedup_steady": one_tps / ray_tps,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
