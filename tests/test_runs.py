"""The run directory: manifests, resume on rerun, nothing half-written on failure."""

from __future__ import annotations

import json

import pytest

from raylm.runs import read_manifest, run_step


def test_rerun_skips_finished_step_and_redoes_changed_config(tmp_path):
    calls = []

    def step(work):
        calls.append(work)
        (work / "out.txt").write_text("done")
        return {"rows": 3}

    first = run_step("demo", tmp_path / "demo", {"lr": 1}, step)
    assert not first.skipped and (tmp_path / "demo" / "out.txt").read_text() == "done"
    manifest = read_manifest(tmp_path / "demo")
    assert manifest["metrics"] == {"rows": 3} and manifest["config"] == {"lr": 1}
    assert manifest["timings"]["seconds"] >= 0

    again = run_step("demo", tmp_path / "demo", {"lr": 1}, step)
    assert again.skipped and len(calls) == 1
    run_step("demo", tmp_path / "demo", {"lr": 2}, step)
    assert len(calls) == 2 and read_manifest(tmp_path / "demo")["config"] == {"lr": 2}


def test_failed_step_leaves_nothing_and_is_redone(tmp_path):
    def broken(work):
        (work / "half.txt").write_text("half")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_step("demo", tmp_path / "demo", {}, broken)
    assert list(tmp_path.iterdir()) == []

    result = run_step("demo", tmp_path / "demo", {}, lambda work: {"ok": True})
    assert not result.skipped
    assert json.loads((tmp_path / "demo" / "manifest.json").read_text())["metrics"] == {"ok": True}
