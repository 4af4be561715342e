"""Ray's own upkeep on a local Ray: the same pytest workload with Ray's defaults and with raylm's
trimmed settings (raylm/ray_setup.py: Serve's control loop every 0.5 s, Ray's metrics pipeline off),
side by side.

Each arm is a fresh `pytest` process with its own local Ray (the tests' session fixture starts it
through raylm.ray_setup, where a variable already in the environment wins, so the "defaults" arm
sets Ray's own values). Arms alternate, `--repeats` times, so a slow spell of the machine falls
on both. The workload is real raylm work: by default the Ray Train tests (DDP, FSDP2 over gloo,
sharded checkpoints) and the Ray Data connected-components test.

    python benchmarks/ray_upkeep.py [--repeats 2] [--tests tests/train/test_parallel.py ...]

Prints one JSON line per run (arm, wall seconds of the pytest process, passed or not) and a
summary; results go in benchmarks/RESULTS.md ("Ray's upkeep").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from raylm.ray_setup import RAY_UPKEEP_DEFAULTS  # noqa: E402

ARMS = {"ray-defaults": RAY_UPKEEP_DEFAULTS, "raylm": {}}  # "raylm": ray_setup's own values (RAY_UPKEEP)
TESTS = ["tests/train/test_parallel.py", "tests/data/test_components.py::test_connected_components_on_ray_data_match_scipy"]


def run_arm(name: str, tests: list[str]) -> dict:
    env = {**os.environ, **ARMS[name]}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"arm": name, "wall_s": round(wall, 1), "passed": done.returncode == 0, "pytest": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tests", nargs="+", default=TESTS)
    args = parser.parse_args()
    runs = []
    for repeat in range(args.repeats):
        for name in (list(ARMS) if repeat % 2 == 0 else list(reversed(ARMS))):
            runs.append(run_arm(name, args.tests))
            print(json.dumps(runs[-1]), flush=True)
    walls = {name: [r["wall_s"] for r in runs if r["arm"] == name] for name in ARMS}
    print(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs",
        "tests": args.tests, "wall_s": walls,
        "median_s": {name: statistics.median(w) for name, w in walls.items()},
        "all_passed": all(r["passed"] for r in runs)}, indent=2))


if __name__ == "__main__":
    main()
