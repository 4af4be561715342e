"""The run directory: one folder per step, each finished by a manifest.json.

    runs/<name>/<step>/manifest.json   config, inputs, metrics, timings

A step writes into `<step>.partial/` and is renamed into place only when it has
finished, so a crashed or interrupted step leaves nothing that looks complete.
A step whose manifest records the same config is skipped on rerun (`raylm run`
resumes); a step with a different config, or none, is redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(step_dir: Path) -> dict | None:
    path = Path(step_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class StepResult:
    step_dir: Path
    manifest: dict
    skipped: bool


def run_step(name: str, step_dir: Path, config: dict, fn: Callable[[Path], dict[str, Any]],
             inputs: dict[str, str] | None = None) -> StepResult:
    """Run `fn(work_dir) -> metrics` unless `step_dir` already holds a matching manifest.

    `fn` writes its artifacts into work_dir; on success the folder is renamed to
    `step_dir` and a manifest.json (config, inputs, metrics, timings) is written.
    """
    step_dir = Path(step_dir)
    digest = config_hash(config)
    done = read_manifest(step_dir)
    if done and done.get("config_hash") == digest:
        print(f"[{name}] already finished in {step_dir} (config {digest}); skipping")
        return StepResult(step_dir, done, skipped=True)

    work_dir = step_dir.with_name(step_dir.name + ".partial")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    started = time.time()
    try:
        metrics = fn(work_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finished = time.time()
    manifest = {
        "step": name,
        "config": config,
        "config_hash": digest,
        "inputs": inputs or {},
        "metrics": metrics,
        "timings": {"started": started, "finished": finished, "seconds": round(finished - started, 3)},
    }
    (work_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    shutil.rmtree(step_dir, ignore_errors=True)
    work_dir.rename(step_dir)
    print(f"[{name}] finished in {finished - started:.1f}s -> {step_dir}")
    return StepResult(step_dir, manifest, skipped=False)
