"""Storage: the same operations on a local folder and on an S3 endpoint (moto on loopback)."""

from __future__ import annotations

import pytest

from raylm.config import StorageConfig
from raylm.storage import MANIFEST, MARKER, Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(StorageConfig(uri=str(tmp_path / "runs")))
    return request.getfixturevalue("s3_storage")


def test_files_folders_moves_and_local_copies(storage, tmp_path):
    storage.write_text("run/a/b.txt", "hello")
    storage.write_bytes("run/a/c/d.bin", b"\x00\x01")
    storage.write_json("run/a/" + MANIFEST, {"ok": True})
    gzipped = b"\x1f\x8b not really gzip"  # bytes go in and out as they are, whatever the file's name
    storage.write_bytes("run/raw.warc.gz", gzipped)
    assert storage.read_bytes("run/raw.warc.gz") == gzipped and storage.local("run/raw.warc.gz").read_bytes() == gzipped
    assert storage.read_text("run/a/b.txt") == "hello" and storage.read_json("run/a/" + MANIFEST) == {"ok": True}
    assert storage.is_dir("run/a") and storage.is_file("run/a/b.txt") and not storage.exists("run/nope")
    assert sorted(storage.files("run/a")) == ["b.txt", "c/d.bin", MANIFEST]

    local = storage.local("run/a")
    assert (local / "b.txt").read_text() == "hello" and (local / "c" / "d.bin").read_bytes() == b"\x00\x01"
    assert storage.local("run/a", only=("b.txt",)).joinpath("b.txt").read_text() == "hello"
    assert (storage.child("run/a").local("") / "b.txt").read_text() == "hello"  # a Storage rooted at a folder
    assert storage.child("run/a/b.txt").local("").read_text() == "hello"  # ... or at a file
    storage.write_text("run/a/b.txt", "changed")  # a stale cached copy is refreshed
    assert (storage.local("run/a") / "b.txt").read_text() == "changed"

    storage.move("run/a", "run/z")
    assert not storage.exists("run/a") and sorted(storage.files("run/z")) == ["b.txt", "c/d.bin", MANIFEST]
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "x.txt").write_text("x")
    storage.upload(tmp_path / "up", "run/up")
    assert storage.read_text("run/up/x.txt") == "x"
    storage.write_text("run/z/" + MARKER, "")
    storage.delete("run/z")
    assert not storage.exists("run/z")
    with pytest.raises(FileNotFoundError, match="not in storage"):
        storage.local("run/nope")


def test_a_worker_gets_the_same_storage(storage):
    import pickle

    copy = pickle.loads(pickle.dumps(storage))
    assert copy == storage and copy.uri("x") == storage.uri("x") and copy.path("x") == storage.path("x")
    assert storage.uri("run").startswith("s3://" if not storage.is_local else "/")


def test_relative_local_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = Storage(StorageConfig(uri="runs"))
    assert storage.cfg.uri == str(tmp_path / "runs") and storage.path("a") == str(tmp_path / "runs" / "a")
