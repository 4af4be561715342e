"""Token shards: header, fixed sizes, split by document."""

from __future__ import annotations

import numpy as np
import pytest

from raylm.tokenizer.shards import ShardWriter, is_val, read_shard, token_dtype, write_shard


def test_shard_round_trip_and_bad_magic(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    write_shard(tmp_path / "a.bin", tokens)
    assert (tmp_path / "a.bin").stat().st_size == 1024 + 2000
    assert np.array_equal(read_shard(tmp_path / "a.bin"), tokens)
    big = np.array([70_000, 1], dtype=np.uint32)
    write_shard(tmp_path / "b.bin", big)
    assert read_shard(tmp_path / "b.bin").tolist() == [70_000, 1]
    (tmp_path / "c.bin").write_bytes(b"\x00" * 2048)
    with pytest.raises(ValueError, match="not a raylm token shard"):
        read_shard(tmp_path / "c.bin")
    assert token_dtype(4096) == np.uint16 and token_dtype(100_000) == np.uint32


def test_writer_packs_fixed_size_shards(tmp_path):
    writer = ShardWriter(tmp_path, "train", shard_tokens=100, dtype=np.dtype(np.uint16))
    stream = [np.arange(n, dtype=np.int64) for n in (30, 95, 7, 160)]
    for doc in stream:
        writer.add(doc, num_bytes=len(doc))
    writer.close()
    sizes = [len(read_shard(p)) for p in writer.paths]
    assert sizes == [100, 100, 92] and writer.num_tokens == 292
    assert np.array_equal(np.concatenate([read_shard(p) for p in writer.paths]), np.concatenate(stream))


def test_split_by_document_is_stable():
    ids = [f"doc-{i}" for i in range(10_000)]
    val = [i for i in ids if is_val(i, 0.05)]
    assert 350 < len(val) < 650 and val == [i for i in ids if is_val(i, 0.05)]
