"""The reward step's two models trained one after the other (two Ray Train runs on every worker, as before
2026-11-29) and side by side (one run, half the workers each: raylm/train/reward_loop.py), in one process.

Both arms train on the rankings a finished run's reward step wrote (<run>/reward/proxy.json, watch.json),
from its SFT checkpoint, with its reward config, on one local Ray, one arm after the other so the machine
is shared by nothing else. Reported per arm: wall seconds (Ray Train start-up included) and each model's
held-out pair accuracy against the labels; and how far apart the two arms' weights are (the same
arithmetic: float32 rounding apart).

    python benchmarks/reward_side_by_side.py --name rd [--order sequential,side]
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

OUT = Path(__file__).parent / "out" / "reward_side_by_side"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--name", required=True, help="a run whose sft and reward steps are finished")
    parser.add_argument("--order", default="sequential,side", help="arms in the order they run")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args()

    from raylm.config import load_config
    from raylm.ray_setup import init_ray
    from raylm.rlhf.reward import train_reward_models
    from raylm.runs import Work
    from raylm.steps import Run
    from raylm.tokenizer.bpe import load
    from raylm.tokenizer.chat import ChatFormat
    from raylm.train.reward_loop import RewardJob, pair_accuracy

    cfg = load_config(args.config, args.override)
    cfg.name = args.name
    run = Run(cfg, on_work=lambda: init_ray(cfg))
    sft, reward = run.result("sft"), run.result("reward")
    if sft is None or reward is None:
        sys.exit(f"steps sft and reward must be finished and current in run {cfg.name}: run `raylm run` first")
    init_ray(cfg)
    folder = reward.storage.local(reward.rel)
    data = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("proxy", "watch")}
    pad = ChatFormat(load(sft.storage.local(f"{sft.rel}/hf"))).tok.token_to_id("<|pad|>")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Work(run.storage, f"{cfg.name}/benchmarks/reward_side_by_side", OUT)
    for name in data:
        (OUT / f"{name}.json").write_text(json.dumps(data[name]))
    jobs = [RewardJob(name=name, data_file=work.publish(f"{name}.json")) for name in data]
    stamp = f"{time.time():.0f}"  # a fresh Ray Train run name per invocation: nothing resumes
    arms: dict[str, dict] = {}
    for arm in args.order.split(","):
        started = time.time()
        if arm == "sequential":
            trained = {}
            for job in jobs:
                trained.update(train_reward_models(cfg, sft, work, f"seq-{stamp}", [job], pad))
        elif arm == "side":
            trained = train_reward_models(cfg, sft, work, f"side-{stamp}", jobs, pad)
        else:
            sys.exit(f"unknown arm {arm!r}: sequential or side")
        wall = time.time() - started
        models = {name: model for name, (model, _) in trained.items()}
        accuracy = {name: pair_accuracy(scores, [r["order"] for r in data[name]["val"]])
                    for name, (_, scores) in trained.items()}   # the loops' own last evaluation
        arms[arm] = {"wall_s": wall, "accuracy": accuracy, "models": models}
        print(f"[bench] {arm}: {wall:.0f} s, held-out accuracy {accuracy}", flush=True)

    print(f"\n{platform.machine()} {platform.system()}, {len(os.sched_getaffinity(0))} cores, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; run {cfg.name}, {cfg.reward.num_workers} workers, "
          f"{cfg.reward.steps} steps of {cfg.reward.batch_size} rankings per worker\n")
    print("| arm | Ray Train runs | wall (s) | proxy held-out accuracy | watcher held-out accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for arm, r in arms.items():
        print(f"| {arm} | {2 if arm == 'sequential' else 1} | {r['wall_s']:.0f} | {r['accuracy']['proxy']:.1%} | "
              f"{r['accuracy']['watch']:.1%} |")
    if len(arms) == 2:
        a, b = (arms[k]["models"] for k in arms)
        gap = max((a[n].state_dict()[k] - b[n].state_dict()[k]).abs().max().item()
                  for n in a for k in a[n].state_dict())
        print(f"\nlargest weight difference between the arms: {gap:.2e}")
    (OUT / "result.json").write_text(json.dumps({k: {"wall_s": v["wall_s"], "accuracy": v["accuracy"]}
                                                 for k, v in arms.items()}, indent=1))


if __name__ == "__main__":
    main()
