"""benchmarks/gpu_check.py runs every stage (tiny shapes on CPU) without loading Ray, vLLM, pyarrow or tokenizers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_runs_every_stage_on_torch_alone(tmp_path):
    out = tmp_path / "check.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    stages = [line["stage"] for line in lines]
    assert stages == ["env", "reference_step", "loop", "sdpa", "graph_breaks", "memory_1b", "memory_1b",
                      "memory_1b", "imports"]
    by_stage = {line["stage"]: line for line in lines}
    assert by_stage["imports"]["forbidden_loaded"] == []
    assert by_stage["loop"]["tokens_per_s"] > 0 and by_stage["loop"]["log_points"] >= 2
    assert by_stage["graph_breaks"]["graph_breaks"] == 0  # the forward with its loss compiles as one graph
    assert {m["parallelism"] for m in lines if m["stage"] == "memory_1b"} == {"ddp", "fsdp"}
