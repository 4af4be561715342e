"""Step folders in the run's storage: written aside, finished atomically, skipped when current, locked.

    <storage>/<name>/<step>/manifest.json     config, digest, inputs, metrics, timings
    result = run_step("pretrain", storage, "tiny/pretrain", digest, fn, config=...)   # fn(work) -> metrics

A step writes into `<step>.partial` (the `Work` it gets: a folder in storage, plus a
local folder whose files are uploaded into it at the end; on local storage the two
are the same folder). It is finished once `manifest.json` is in the partial folder;
only then does it replace the old step folder, and a crash at any point of that
swap is completed on the next start (`_recover`), so nothing finished is ever lost.
A step whose manifest records the same digest is skipped; a missing or unreadable
manifest means the step is redone. raylm writes a `.raylm` marker into every folder
it creates and never deletes an existing folder that has neither the marker nor a
manifest (a user's `--output` with other files in it is an error, nothing touched).
One lock per run (`hold_lock`) keeps two processes from writing the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raylm.errors import InputError
from raylm.storage import MANIFEST, MARKER, Storage


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(storage: Storage, rel: str) -> dict | None:
    """The finished step's manifest; None when there is none or it cannot be read (the step is then redone)."""
    try:
        manifest = storage.read_json(f"{rel}/{MANIFEST}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # truncated or corrupt: not a finished step
        print(f"[runs] unreadable manifest in {storage.uri(rel)} ({type(err).__name__}): the step will be redone")
        return None
    return manifest if isinstance(manifest, dict) and "config_hash" in manifest else None


@dataclass
class Work:
    """Where a running step writes: `rel` in storage (Ray Data, Ray Train and tasks write there directly)
    and `local`, a folder on this machine for files made with ordinary file APIs (uploaded at the end)."""

    storage: Storage
    rel: str
    local: Path

    def path(self, name: str = "") -> str:
        """Filesystem path in storage, for `filesystem=storage.fs` APIs."""
        return self.storage.path(f"{self.rel}/{name}" if name else self.rel)

    def publish(self, name: str) -> str:
        """Upload local/name now (workers need it before the step ends); returns its path relative to storage."""
        self.storage.upload(self.local / name, f"{self.rel}/{name}")
        return f"{self.rel}/{name}"


@dataclass
class StepResult:
    storage: Storage
    rel: str
    manifest: dict
    skipped: bool

    @property
    def digest(self) -> str:
        return self.manifest["config_hash"]

    @property
    def metrics(self) -> dict:
        return self.manifest["metrics"]

    @property
    def step_dir(self) -> str:
        return self.storage.uri(self.rel)


def owned_by_raylm(storage: Storage, rel: str) -> bool:
    """A folder raylm made (marker or manifest), or an empty one: the only kind raylm may replace."""
    entries = storage.list(rel)
    names = {Path(e.path).name for e in entries}
    return not entries or MARKER in names or MANIFEST in names


def run_step(name: str, storage: Storage, rel: str, digest: str, fn: Callable[[Work], dict[str, Any]],
             config: Any = None, inputs: dict[str, str] | None = None) -> StepResult:
    """Run `fn(work) -> metrics` unless `rel` holds a manifest with this digest."""
    rel = rel.strip("/")
    _recover(storage, rel)
    done = read_manifest(storage, rel)
    if done and done["config_hash"] == digest:
        print(f"[{name}] already finished in {storage.uri(rel)} ({digest}); skipping")
        return StepResult(storage, rel, done, skipped=True)
    if storage.is_file(rel) or (storage.exists(rel) and not owned_by_raylm(storage, rel)):
        raise InputError(f"{storage.uri(rel)} exists and was not written by raylm (no {MARKER} or {MANIFEST}); "
                         f"choose another output or empty it")

    partial = f"{rel}.partial"
    storage.delete(partial)  # an unfinished earlier attempt (raylm's by its name)
    storage.make_dir(partial)
    storage.write_text(f"{partial}/{MARKER}", "written by raylm; a step's folder\n")
    local = Path(storage.path(partial)) if storage.is_local else Path(tempfile.mkdtemp(prefix=f"raylm-{name}-"))
    started = time.time()
    try:
        metrics = fn(Work(storage, partial, local))
        if not storage.is_local:
            storage.upload(local, partial)
    except BaseException:
        storage.delete(partial)
        raise
    finally:
        if not storage.is_local:
            shutil.rmtree(local, ignore_errors=True)
    finished = time.time()
    manifest = {"step": name, "config": config, "config_hash": digest, "inputs": inputs or {}, "metrics": metrics,
                "timings": {"started": started, "finished": finished, "seconds": round(finished - started, 3)}}
    storage.write_json(f"{partial}/{MANIFEST}", manifest)  # from here on the step is finished
    _swap_in(storage, partial, rel)
    print(f"[{name}] finished in {finished - started:.1f}s -> {storage.uri(rel)}")
    return StepResult(storage, rel, manifest, skipped=False)


def _swap_in(storage: Storage, partial: str, rel: str) -> None:
    """Replace `rel` by the finished `partial`. Local: two atomic renames, the old folder parked as
    `.replaced` in between. Object stores cannot rename: the old folder is deleted (manifest first, marker
    last, so a half-deleted one is never taken for finished) and the partial copied in (manifest last)."""
    replaced = f"{rel}.replaced"
    if storage.is_local:
        if storage.exists(rel):
            storage.move(rel, replaced)
        storage.move(partial, rel)
        storage.delete(replaced)
    else:
        storage.delete(rel)
        storage.move(partial, rel)


def _recover(storage: Storage, rel: str) -> None:
    """Finish a swap that a crash interrupted: a partial folder with a manifest is a finished step."""
    partial, replaced = f"{rel}.partial", f"{rel}.replaced"
    if read_manifest(storage, partial) is not None:
        print(f"[runs] {storage.uri(partial)} finished but was not moved into place: completing that")
        _swap_in(storage, partial, rel)
    storage.delete(replaced)


@contextmanager
def hold_lock(storage: Storage, rel: str):
    """One writer per run: `rel` (a lock file) names its holder; a holder on this machine that is gone
    is taken over. Object stores have no atomic create here, so there it is a check, then a write."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if storage.is_file(rel):
        try:
            holder = storage.read_json(rel)
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") != me["host"] or _pid_alive(holder.get("pid")):
            raise InputError(f"the run is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                             f"{holder.get('since')}; if that process is gone, delete {storage.uri(rel)}")
        storage.delete(rel)  # its holder on this machine is gone
    if storage.is_local:
        Path(storage.path(rel)).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(storage.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # two racing starts: one wins
        except FileExistsError:
            raise InputError(f"the run is in use by another process ({storage.uri(rel)} appeared just now)") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
    else:
        storage.write_json(rel, me)
    try:
        yield
    finally:
        storage.delete(rel)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
