"""RL with and without `rl.overlap`, side by side: wall time per step and the held-out gain.

Both arms start from the same SFT checkpoint with the same preset (rl.* from --config, -o overrides on
top), on one local Ray; they run one after the other, in the order given by --order, so the machine is
shared by nothing else. `rl.overlap=false`: sample, then update, then push (the actors take turns).
`rl.overlap=true`: step k+1's rollouts are sampled during step k's update (raylm/rl/steps.py). Reported per
arm: the RL step's wall seconds (actor start-up and the two held-out evaluations included) and per GRPO step,
the mean generate / train seconds, the clipped share, and held-out pass@1 at the start and the end.

    python benchmarks/rl_overlap.py --checkpoint runs/tiny/sft/hf [--steps 40] [-o rl.eval_per_family=200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_arm(cfg, root: Path, overlap: bool) -> dict:
    from raylm.config import StorageConfig
    from raylm.rl.driver import run_rl
    from raylm.runs import StepResult, run_step
    from raylm.storage import Storage

    storage = Storage(StorageConfig(uri=str(root)))
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)
    name = f"overlap-{str(overlap).lower()}"
    rl = cfg.rl.model_copy(update={"overlap": overlap})
    started = time.perf_counter()
    run_step("rl", storage, name, name, lambda work: run_rl(rl, sft, work, f"{name}/state.pt"))
    wall = time.perf_counter() - started
    history = json.loads((root / name / "history.json").read_text())
    steps = history[1:]
    family = f"pass@1/{rl.families[0]}"
    return {"overlap": overlap, "wall_s": wall, "steps": len(steps),
            "generate_s": statistics.mean(m["generate_s"] for m in steps),
            "train_s": statistics.mean(m["train_s"] for m in steps),
            "clip_fraction": statistics.mean(m.get("clip_fraction", 0.0) for m in steps),
            "start": history[0][family], "end": history[-1][family]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an SFT chat checkpoint (HF folder)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--order", default="off,on", help="arms in the order they run")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from raylm.config import load_config
    from raylm.ray_setup import apply_local_ray_env

    cfg = load_config(args.config, [f"rl.steps={args.steps}", f"rl.eval_every={args.steps}", *args.override])
    apply_local_ray_env()
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(args.checkpoint, root / "sft" / "hf")
        for arm in args.order.split(","):
            rows.append(run_arm(cfg, root, arm == "on"))
            print(f"[bench] overlap {arm}: {rows[-1]['wall_s']:.0f} s", flush=True)
    ray.shutdown()

    print(f"\n{platform.machine()} {platform.system()}, {len(os.sched_getaffinity(0))} cores, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {args.checkpoint}, {args.steps} steps of "
          f"{cfg.rl.prompts_per_step} x {cfg.rl.group_size}, {cfg.rl.engine}\n")
    print("| rl.overlap | wall (s) | s/step | generate (s) | train (s) | clipped | pass@1 start -> end |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {str(r['overlap']).lower()} | {r['wall_s']:.0f} | {r['wall_s'] / r['steps']:.2f} | "
              f"{r['generate_s']:.2f} | {r['train_s']:.2f} | {r['clip_fraction']:.1%} | "
              f"{r['start']:.3f} -> {r['end']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
