"""Token shards: header, written by a plain callable per group of documents, split by document, and the same
shards whatever order the corpus was written in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.config import StorageConfig
from raylm.storage import Storage
from raylm.tokenizer.bpe import EOS, encode, save, train_bpe
from raylm.tokenizer.shards import is_val, read_shard, token_dtype, write_shard, write_shards, write_token_shards


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


def test_a_batch_becomes_one_shard_per_split_with_its_token_counts(tmp_path):
    texts = [f"Document {i} talks about rivers, bread and lighthouses number {i}." for i in range(40)]
    ids = [f"doc-{i}" for i in range(40)]
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    save(tok, tmp_path / "tok")
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    batch = pa.table({"id": ids, "text": texts})
    rows = write_shards(batch, storage, "tok/tokenizer.json", "shards", val_fraction=0.2).to_pylist()
    assert [r["split"] for r in rows] == ["train", "val"]
    eos = tok.token_to_id(EOS)
    for row in rows:
        docs = [t for i, t in zip(ids, texts) if is_val(i, 0.2) == (row["split"] == "val")]
        expected = [x for text in docs for x in (eos, *encode(tok, text))]
        shard = read_shard(tmp_path / "shards" / row["name"])
        assert shard.tolist() == expected and row["tokens"] == len(expected) and row["documents"] == len(docs)
        assert row["counts"] == np.bincount(expected, minlength=tok.get_vocab_size()).tolist()
    again = write_shards(batch, storage, "tok/tokenizer.json", "shards", val_fraction=0.2).to_pylist()
    assert [r["name"] for r in again] == [r["name"] for r in rows]  # named by their documents: reproducible


def test_split_by_document_is_stable():
    ids = [f"doc-{i}" for i in range(10_000)]
    val = [i for i in ids if is_val(i, 0.05)]
    assert 350 < len(val) < 650 and val == [i for i in ids if is_val(i, 0.05)]


def test_shards_depend_on_the_corpus_not_on_the_order_it_was_written_in(tmp_path, ray_session):
    """The data step's joins write documents in no fixed order; the shards (hence training) must not care."""
    texts = [f"Note {i}: the ferry to island {i % 7} leaves at {i % 12} o'clock with {i} crates." for i in range(120)]
    ids = [f"doc-{i:03d}" for i in range(120)]
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    save(tok, tmp_path / "tok")
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    order = np.random.default_rng(0).permutation(120)
    for name, rows, files in (("a", range(120), 1), ("b", order, 3)):
        (tmp_path / name / "kept").mkdir(parents=True)
        for k, part in enumerate(np.array_split(np.asarray(list(rows)), files)):
            pq.write_table(pa.table({"id": [ids[i] for i in part], "text": [texts[i] for i in part]}),
                           tmp_path / name / "kept" / f"part-{k}.parquet")
    listings = [write_token_shards(storage, f"{name}/kept", "tok/tokenizer.json", f"{name}/shards", 3, 0.1)
                for name in ("a", "b")]
    (a, counts_a), (b, counts_b) = listings
    assert a == b and len(a["train"]["shards"]) == 3 and a["train"]["documents"] + a["val"]["documents"] == 120
    assert all(np.array_equal(counts_a[s], counts_b[s]) for s in ("train", "val"))
    for name in a["train"]["shards"] + a["val"]["shards"]:
        assert (tmp_path / "a" / "shards" / name).read_bytes() == (tmp_path / "b" / "shards" / name).read_bytes()
