"""Step folders: manifests, resume, atomic finish that survives a crash, foreign folders, the run lock."""

from __future__ import annotations

import json
import os

import pytest

import raylm.runs
from raylm.config import StorageConfig
from raylm.errors import InputError
from raylm.runs import hold_lock, read_manifest, run_step
from raylm.storage import Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(StorageConfig(uri=str(tmp_path / "runs")))
    return request.getfixturevalue("s3_storage")


def writer(text: str, calls: list | None = None):
    def step(work):
        if calls is not None:
            calls.append(work)
        (work.local / "out.txt").write_text(text)
        return {"text": text}
    return step


def test_rerun_skips_finished_step_and_redoes_changed_digest(storage):
    calls = []
    first = run_step("demo", storage, "r/demo", "d1", writer("one", calls), config={"lr": 1})
    assert not first.skipped and storage.read_text("r/demo/out.txt") == "one"
    manifest = read_manifest(storage, "r/demo")
    assert manifest["metrics"] == {"text": "one"} and manifest["config"] == {"lr": 1}
    assert manifest["timings"]["seconds"] >= 0
    assert run_step("demo", storage, "r/demo", "d1", writer("one", calls)).skipped and len(calls) == 1
    run_step("demo", storage, "r/demo", "d2", writer("two", calls))
    assert len(calls) == 2 and storage.read_text("r/demo/out.txt") == "two"
    assert sorted(storage.files("r")) == sorted(["demo/.raylm", "demo/out.txt", "demo/manifest.json"])


def test_failed_step_leaves_nothing_and_is_redone(storage):
    def broken(work):
        (work.local / "half.txt").write_text("half")
        storage.write_text(f"{work.rel}/written-by-a-task.txt", "x")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_step("demo", storage, "r/demo", "d1", broken)
    assert storage.files("r") == {}
    assert not run_step("demo", storage, "r/demo", "d1", writer("ok")).skipped


def test_crash_between_finished_and_renamed_loses_nothing(storage, monkeypatch):
    """The new step is finished (its manifest written) and the process dies while moving it into place:
    locally the old folder is parked aside; on S3 it is deleted and the new one half copied. The next start
    completes the move and skips the step: no work is lost, nothing half-copied is used."""
    run_step("demo", storage, "r/demo", "old", writer("old"))
    real_move, real_fs = Storage.move, storage.fs

    class DiesAfterTwoCopies:  # object stores copy file by file: the process dies after two files
        copies = 0

        def __getattr__(self, name):
            return getattr(real_fs, name)

        def copy_file(self, src, dst):
            self.copies += 1
            if self.copies > 2:
                raise KeyboardInterrupt("killed during the swap")
            real_fs.copy_file(src, dst)

    def die_while_moving_in(self, src, dst):
        if self.is_local and src == "r/demo.partial":
            raise KeyboardInterrupt("killed during the swap")  # after the old folder was parked aside
        return real_move(self, src, dst)

    monkeypatch.setattr(Storage, "move", die_while_moving_in)
    if not storage.is_local:
        storage.fs = DiesAfterTwoCopies()
    with pytest.raises(KeyboardInterrupt):
        run_step("demo", storage, "r/demo", "new", writer("new"))
    monkeypatch.setattr(Storage, "move", real_move)
    storage.fs = real_fs
    assert read_manifest(storage, "r/demo.partial")["config_hash"] == "new"  # the finished step is kept
    assert read_manifest(storage, "r/demo") is None  # and nothing half-copied looks finished

    again = run_step("demo", storage, "r/demo", "new", writer("redone"))
    assert again.skipped and storage.read_text("r/demo/out.txt") == "new"
    assert not storage.exists("r/demo.partial") and not storage.exists("r/demo.replaced")


def test_a_folder_raylm_did_not_write_is_never_touched(storage):
    storage.write_text("r/mine/notes.txt", "the user's")
    with pytest.raises(InputError, match="was not written by raylm"):
        run_step("demo", storage, "r/mine", "d1", writer("x"))
    assert storage.read_text("r/mine/notes.txt") == "the user's" and sorted(storage.files("r")) == ["mine/notes.txt"]


def test_corrupt_manifest_means_redo(storage):
    run_step("demo", storage, "r/demo", "d1", writer("one"))
    storage.write_text("r/demo/manifest.json", '{"step": "demo", "config_ha')
    result = run_step("demo", storage, "r/demo", "d1", writer("two"))
    assert not result.skipped and storage.read_text("r/demo/out.txt") == "two"


def test_one_writer_per_run(tmp_path):
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    with hold_lock(storage, "r/raylm.lock"):
        holder = json.loads((tmp_path / "r" / "raylm.lock").read_text())
        assert holder["pid"] == os.getpid()
        storage.write_json("r/raylm.lock", {**holder, "pid": 1})  # pid 1 is alive: another process holds it
        with pytest.raises(InputError, match="in use by pid 1 on"):
            with hold_lock(storage, "r/raylm.lock"):
                pass
    assert not (tmp_path / "r" / "raylm.lock").exists()
    storage.write_json("r/raylm.lock", {"host": raylm.runs.socket.gethostname(), "pid": 2**22 + 7})  # gone
    with hold_lock(storage, "r/raylm.lock"):  # a dead holder on this machine is taken over
        assert json.loads((tmp_path / "r" / "raylm.lock").read_text())["pid"] == os.getpid()
