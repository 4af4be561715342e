"""Token shards: the cleaned corpus tokenized and written into binary shards by Ray Data tasks.

Every document goes to one of `num_shards` groups by a hash of its id (a Ray Data
groupby, so the corpus is shuffled by key across the cluster); each group, sorted
by id, is tokenized by one task, which writes its train and val shard straight into
the run's storage. The driver only receives each shard's name, token count and
token-id counts (a vocabulary-sized vector, for the unigram baseline), so nothing
on the driver grows with the corpus. Shards are named by a hash of their
documents' ids and listed in name order. So a shard's contents depend on the
corpus alone, not on the order the data step happened to write it in (its joins
do not keep one): the same corpus gives the same shards, hence the same training
order and the same weights, on any cluster and in every run.

The file format (a header, then the tokens for np.memmap) is in
raylm/tokenizer/shard_format.py, which training imports without Ray. Every document
starts with <|endoftext|>, which marks document boundaries. Documents go to the
train or val split by a hash of their id, so a split never holds half a document.

    shards = write_token_shards(storage, "tiny/data/kept", tokenizer_rel, "tiny/tokenizer/shards", num_shards=4,
                                val_fraction=0.1)
    tokens = read_shard(storage.local("tiny/tokenizer/shards/train_0123abcd.bin"))   # np.memmap
"""

from __future__ import annotations

import functools
import hashlib
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.context import ShuffleStrategy

from raylm.storage import Storage
from raylm.tokenizer.bpe import EOS, fast_encoder, load
from raylm.tokenizer.shard_format import read_shard, shard_bytes, token_dtype, write_shard  # noqa: F401 (re-exported)

def is_val(doc_id: str, val_fraction: float) -> bool:
    return zlib.crc32(doc_id.encode()) % 10_000 < val_fraction * 10_000


@functools.lru_cache(maxsize=4)
def _cached_encoder(storage: Storage, tokenizer_rel: str):
    # Building it takes milliseconds, so plain tasks (fused with the parquet read) beat an
    # actor pool; the cache makes it once per Ray worker process.
    tok = load(storage.local(tokenizer_rel))
    return fast_encoder(tok), tok.token_to_id(EOS), tok.get_vocab_size()


METADATA = pa.schema([("split", pa.string()), ("name", pa.string()), ("documents", pa.int64()),
                      ("tokens", pa.int64()), ("bytes", pa.int64()), ("counts", pa.list_(pa.int64()))])


def write_shards(batch: pa.Table, storage: Storage, tokenizer_rel: str, shards_rel: str,
                 val_fraction: float) -> pa.Table:
    """One batch of documents -> its train and val shards in storage -> one metadata row per shard."""
    encoder, eos, vocab = _cached_encoder(storage, tokenizer_rel)
    ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
    encoded = encoder.encode_ordinary_batch(texts, num_threads=1)  # Ray tasks are the parallelism
    rows = []
    for split in ("train", "val"):
        docs = [i for i, doc_id in enumerate(ids) if is_val(doc_id, val_fraction) == (split == "val")]
        if not docs:
            continue
        tokens = np.fromiter((t for i in docs for t in (eos, *encoded[i])), dtype=np.int64)
        name = f"{split}_{hashlib.sha1(' '.join(ids[i] for i in docs).encode()).hexdigest()[:16]}.bin"
        storage.write_bytes(f"{shards_rel}/{name}", shard_bytes(tokens.astype(token_dtype(vocab))))
        rows.append({"split": split, "name": name, "documents": len(docs), "tokens": len(tokens),
                     "bytes": sum(len(texts[i].encode("utf-8")) for i in docs),
                     "counts": np.bincount(tokens, minlength=vocab).tolist()})
    return pa.Table.from_pylist(rows, schema=METADATA)


def shard_of(doc_id: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha1(doc_id.encode()).digest()[:8], "little") % num_shards


def _with_shard(batch: pa.Table, num_shards: int) -> pa.Table:
    shards = [shard_of(doc_id, num_shards) for doc_id in batch.column("id").to_pylist()]
    return batch.append_column("shard", pa.array(shards, pa.int64()))


def write_group(group: pa.Table, storage: Storage, tokenizer_rel: str, shards_rel: str,
                val_fraction: float) -> pa.Table:
    """One shard's documents, sorted by id (their order is the training order within the shard)."""
    group = group.take(pc.sort_indices(group, [("id", "ascending")])).drop_columns(["shard"])
    return write_shards(group, storage, tokenizer_rel, shards_rel, val_fraction)


def write_token_shards(storage: Storage, kept_rel: str, tokenizer_rel: str, shards_rel: str,
                       num_shards: int, val_fraction: float) -> tuple[dict, dict[str, np.ndarray]]:
    """Tokenize the kept documents into `num_shards` pairs of train/val shards under `shards_rel`; returns
    (the manifest's shard listing, token-id counts per split)."""
    files = [storage.path(f"{kept_rel}/{n}") for n in sorted(storage.files(kept_rel)) if n.endswith(".parquet")]
    documents = ray.data.read_parquet(files, filesystem=storage.fs).select_columns(["id", "text"])
    # The groupby as a sort on tasks rather than Ray Data's default shuffle, whose aggregator actors take
    # seconds to start: 1-5 s instead of 7-13 s for the sample on 2 cores, the same shards. A dataset owns a
    # copy of the context it was read in, shared by what derives from it: the setting stays with this one.
    documents.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    metadata = (documents.map_batches(_with_shard, fn_args=(num_shards,), batch_format="pyarrow")
                .groupby("shard")
                .map_groups(write_group, fn_args=(storage, tokenizer_rel, shards_rel, val_fraction),
                            batch_format="pyarrow"))
    listing = {s: {"documents": 0, "tokens": 0, "bytes": 0, "shards": []} for s in ("train", "val")}
    counts: dict[str, np.ndarray] = {}
    for batch in metadata.iter_batches(batch_format="pyarrow", batch_size=64):
        for row in batch.drop_columns(["counts"]).to_pylist():
            entry = listing[row["split"]]
            entry["shards"].append(row["name"])
            for key in ("documents", "tokens", "bytes"):
                entry[key] += row[key]
        for split, row_counts in zip(batch.column("split").to_pylist(), batch.column("counts").to_pylist()):
            counts[split] = counts.get(split, 0) + np.asarray(row_counts, dtype=np.int64)
    for entry in listing.values():
        entry["shards"].sort()
    return listing, counts


def load_shards(storage: Storage, shards_rel: str, names: list[str]) -> list[np.ndarray]:
    """The shards as node-local memmaps (downloaded once per node when storage is remote)."""
    return [read_shard(storage.local(f"{shards_rel}/{name}")) for name in names]

