"""Where a run keeps everything: one URI that every node of the cluster can reach.

    storage = Storage(StorageConfig(uri="s3://bucket/runs", endpoint_override="127.0.0.1:9000", scheme="http"))
    storage.write_text("tiny/notes.txt", "hello")          # paths are relative to the storage root
    storage.read_text("tiny/notes.txt")
    ray.data.read_parquet(storage.path("tiny/data/kept"), filesystem=storage.fs)   # Ray Data, Ray Train
    folder = storage.local("tiny/sft/hf")                  # a node-local copy to hand to torch or vLLM

The URI is a local or mounted folder (the default: `runs` on a laptop), `s3://`,
`gs://`, or anything else `pyarrow.fs` resolves; S3 options that a URI cannot
carry (an endpoint, a region, http) come from `StorageConfig`, credentials from
the environment as usual (AWS_ACCESS_KEY_ID, ...). Every step, worker, actor and
replica reads and writes through this class, never through a node-local path, so
a run behaves the same on one laptop and on pods that share only a bucket.

Writes of one file are atomic (a local file is renamed into place; an object is
one PUT). Object stores cannot rename a folder, so `move` there copies file by
file and deletes the source afterwards; raylm/runs.py makes that recoverable.
`local` keeps a node-local cache (under `cache_dir`) that is refreshed whenever
the stored files' sizes or modification times change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from raylm.config import StorageConfig

MANIFEST = "manifest.json"  # written last into a step folder: the folder is finished once it is there
MARKER = ".raylm"           # written first into every folder raylm creates


class Storage:
    def __init__(self, cfg: StorageConfig):
        if "://" in cfg.uri:
            self.fs, root = _remote_filesystem(cfg)
        else:  # made absolute here, so that the config a worker receives names the same folder
            root = str(Path(cfg.uri).expanduser().resolve())
            cfg = cfg.model_copy(update={"uri": root})
            self.fs = pafs.LocalFileSystem()
        self.cfg, self.root = cfg, root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):  # Ray ships the typed config and each process opens its own filesystem
        return Storage, (self.cfg,)

    def __eq__(self, other) -> bool:
        return isinstance(other, Storage) and other.cfg == self.cfg

    def __hash__(self) -> int:
        return hash(self.cfg.model_dump_json())

    def __repr__(self) -> str:
        return f"Storage({self.uri()})"

    # --- names ---------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (what Ray Data and Ray Train take together with `fs`)."""
        rel = str(rel).strip("/")
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        """`rel` as a user reads it: a local path, or the URI with its scheme."""
        if self.is_local:
            return self.path(rel)
        scheme = self.cfg.uri.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}"

    def child(self, rel: str) -> Storage:
        """A Storage rooted at `rel` (same filesystem options)."""
        return Storage(self.cfg.model_copy(update={"uri": self.uri(rel)}))

    # --- queries -------------------------------------------------------------------------------
    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.Directory

    def list(self, rel: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under `rel` (empty when it does not exist)."""
        if not self.is_dir(rel):
            return []
        return self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=recursive))

    def files(self, rel: str) -> dict[str, pafs.FileInfo]:
        """Every file under `rel`, keyed by its path relative to `rel`."""
        base = self.path(rel) + "/"
        return {i.path[len(base):]: i for i in self.list(rel, recursive=True) if i.type == pafs.FileType.File}

    # --- bytes ---------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """The stored bytes as they are (pyarrow would gunzip a *.gz name on the way)."""
        with self.fs.open_input_stream(self.path(rel), compression=None) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: readers see the old file or the new one, never half of it."""
        self._write(rel, lambda out: out.write(data))

    def _write(self, rel: str, fill) -> None:
        """fill(binary file) writes the content; local: into a temp file renamed into place."""
        path = self.path(rel)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, path)
            return
        # compression=None: bytes as given (pyarrow would gzip a *.gz name); an object appears whole at the end
        with self.fs.open_output_stream(path, compression=None) as f:
            fill(f)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, value) -> None:
        self.write_bytes(rel, json.dumps(value, indent=2, default=str).encode())

    # --- folders -------------------------------------------------------------------------------
    def make_dir(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def delete(self, rel: str) -> None:
        """Remove a file or a folder with everything in it; nothing there is fine.

        On object stores a folder goes file by file, its manifest first and its marker last, so that a
        crash half-way never leaves what looks finished, nor a raylm folder that no longer looks like one."""
        kind = self.info(rel).type
        if kind == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))
        elif kind == pafs.FileType.Directory and self.is_local:
            shutil.rmtree(self.path(rel))
        elif kind == pafs.FileType.Directory:
            order = {MANIFEST: 0, MARKER: 2}
            for name in sorted(self.files(rel), key=lambda n: (order.get(n, 1), n)):
                self.fs.delete_file(self.path(f"{rel}/{name}"))
            self.fs.delete_dir(self.path(rel))

    def move(self, src: str, dst: str) -> None:
        """Rename a file or folder. Local: one atomic rename. Object stores: copy, then delete `src`."""
        if self.is_local:
            Path(self.path(dst)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(src), self.path(dst))
            return
        if self.is_file(src):
            self.fs.copy_file(self.path(src), self.path(dst))
        else:
            self.copy_tree(src, dst)
        self.delete(src)

    def copy_tree(self, src: str, dst: str) -> None:
        """File by file, the manifest last: a half-done copy never looks finished."""
        names = sorted(self.files(src), key=lambda name: (name == MANIFEST, name))
        for name in names:
            self.fs.copy_file(self.path(f"{src}/{name}"), self.path(f"{dst}/{name}"))

    def upload(self, local: Path, rel: str) -> None:
        """A local file or folder into storage (no-op when it already is that storage path)."""
        local = Path(local)
        if self.is_local and local.resolve() == Path(self.path(rel)):
            return
        files = [(local, rel)] if local.is_file() else [
            (file, f"{rel}/{file.relative_to(local).as_posix()}") for file in sorted(local.rglob("*")) if file.is_file()]
        for file, dest in files:  # streamed: a 7B checkpoint's shards are tens of GB
            with open(file, "rb") as src:
                self._write(dest, lambda out: shutil.copyfileobj(src, out, length=8 << 20))

    def local(self, rel: str, only: tuple[str, ...] = ()) -> Path:
        """A node-local path holding `rel` (file or folder; `only` these files of a folder): the path itself
        on local storage, else a cached download, refreshed when the stored files changed."""
        if self.is_local:
            path = Path(self.path(rel))
            if not path.exists():
                raise FileNotFoundError(f"not in storage: {self.uri(rel)}")
            return path
        info = self.info(rel)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"not in storage: {self.uri(rel)}")
        files = {"": info} if info.type == pafs.FileType.File else self.files(rel)
        if only:
            files = {name: i for name, i in files.items() if name in only}
        key = hashlib.sha1("|".join((self.uri(rel), *only)).encode()).hexdigest()[:16]
        folder = Path(self.cfg.cache_dir or Path(tempfile.gettempdir()) / "raylm-cache") / key
        target, stamp_file = folder / Path(self.path(rel)).name, folder / "stamp.json"
        stamp = json.dumps({name: [i.size, str(i.mtime)] for name, i in sorted(files.items())})
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "lock", "w") as lock:  # workers on one node share the copy: one downloads
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stamp_file.is_file() and stamp_file.read_text() == stamp:
                return target
            stamp_file.unlink(missing_ok=True)
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            for name in files:
                dest = target / name if name else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = self.path(f"{rel}/{name}" if name else rel)
                with self.fs.open_input_stream(source, compression=None) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, length=8 << 20)
            stamp_file.write_text(stamp)
        return target


def _remote_filesystem(cfg: StorageConfig) -> tuple[pafs.FileSystem, str]:
    scheme = cfg.uri.split("://", 1)[0]
    if scheme == "s3":
        options = {k: v for k, v in {"endpoint_override": cfg.endpoint_override, "region": cfg.region,
                                     "scheme": cfg.scheme}.items() if v}
        fs = pafs.S3FileSystem(**options)
        return fs, cfg.uri.split("://", 1)[1]
    if cfg.endpoint_override or cfg.region or cfg.scheme:
        raise ValueError(f"storage.endpoint_override/region/scheme apply to s3:// only, not {scheme}://")
    return pafs.FileSystem.from_uri(cfg.uri)
