"""Ray Train's report poll: the same short Ray Train run with the controller polling every 2 s (Ray's
default) and every 0.25 s (what raylm sets on a local Ray: raylm/ray_setup.py), side by side.

A worker's `ray.train.report` goes into a queue of one that the controller empties once per poll, so a
loop that reports more often than the poll interval waits for it. The run: the tiny GPT shape of
tests/train/test_parallel.py (dim 64, 2 layers) on synthetic token shards, 2 DDP workers, a report every
`--log-every` steps, one checkpoint at the end. Each arm runs in a fresh process with its own local Ray
(the controller reads RAY_TRAIN_HEALTH_CHECK_INTERVAL_S when it starts), one after the other.

    python benchmarks/train_report_poll.py [--steps 40] [--log-every 1] [--intervals 2,0.25]

Prints one JSON line per arm (wall seconds of the fit, from the trainer's start to its result, and the
reports made) and a summary; results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 256


def one_arm(steps: int, log_every: int) -> dict:
    """In this process (the interval is in the environment already): a fresh Ray, one fit, its timings."""
    import numpy as np
    import ray

    sys.path.insert(0, str(ROOT))
    from raylm.config import GPTConfig, StorageConfig, TrainConfig
    from raylm.storage import Storage
    from raylm.tokenizer.shard_format import write_shard
    from raylm.train.loop import LoopConfig
    from raylm.train.trainer import fit

    root = Path(tempfile.mkdtemp(prefix="report-poll-"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 40_000), ("val", 4_000)):
        write_shard(root / f"{split}.bin", rng.integers(1, VOCAB, n).astype(np.uint16))
    config = LoopConfig(step_name="poll", train=TrainConfig(num_workers=2, steps=steps, batch_size=4, seq_len=32,
                                                            lr=3e-3, warmup_steps=2, log_every=log_every,
                                                            eval_every=steps, eval_batches=2, checkpoint_every=steps),
                        model=GPTConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
                        storage=StorageConfig(uri=str(root)), data="shards", train_files=["train.bin"],
                        val_files=["val.bin"], tokenizer="", token_bytes=[1] * VOCAB)
    ray.init(num_cpus=2, include_dashboard=False)
    start = time.time()
    state = fit(config, 2, False, 0, Storage(config.storage), "ray_train", "poll")
    wall = time.time() - start
    ray.shutdown()
    return {"wall_s": wall, "steps": state["step"], "reports": len(state["history"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--intervals", default="2,0.25", help="poll intervals in seconds, one arm each")
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)  # run one arm in this process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(one_arm(args.steps, args.log_every)), flush=True)
        return
    arms = []
    for interval in args.intervals.split(","):
        env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}
        run = subprocess.run([sys.executable, __file__, "--arm", "--steps", str(args.steps), "--log-every",
                              str(args.log_every)], env=env, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            raise SystemExit(run.stderr[-3000:])
        arm = {"poll_interval_s": float(interval), **json.loads(run.stdout.strip().splitlines()[-1])}
        print(json.dumps(arm), flush=True)
        arms.append(arm)
    print(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs",
        "config": {"steps": args.steps, "log_every": args.log_every, "workers": 2, "model": "dim 64, 2 layers"},
        "arms": arms}, indent=2))


if __name__ == "__main__":
    main()
