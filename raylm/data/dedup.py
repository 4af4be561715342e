"""Exact and fuzzy (MinHash-LSH) deduplication on Ray Data.

Exact: documents sharing a content hash (case/whitespace-normalized sha1) are grouped
(in the driver up to 200 K documents, else by a Ray Data groupby, a distributed
shuffle); all but the smallest id are dropped.

Fuzzy, FineWeb's recipe (word 5-grams, 14 bands x 8 hashes by default):
1. `MinHasher.signature_rows`: per batch, each document's MinHash signature (a
   distributed dataset: no process holds the corpus's signatures).
2. `band_rows`: each signature cut into bands, each band hashed to one 64-bit key
   -> rows (band, key, id); a groupby on (band, key) puts colliding documents
   together and each group emits its pairs: the candidate pairs.
3. Verification (`verify`, FineWeb had none): candidate pairs are joined with
   their two documents and kept only if their Jaccard clears `verify_threshold`:
   "exact" compares the shingle sets (the default: every edge is then a true
   near-duplicate pair), "signature" the MinHash agreement (an estimate, cheaper
   to shuffle), "none" keeps every candidate as FineWeb did. This removes the LSH
   false positives and the chains they create between unrelated clusters.
4. Connected components over the verified edges give clusters, on Ray Data too
   (`raylm.data.components`: large-star/small-star rounds of shuffles; the driver
   sees one count per round, never an edge); the smallest id of each cluster is kept.

A corpus of at most LOCAL_BYTES takes all four steps in one Ray task instead (the same
functions, on one partition): Ray Data's shuffles have seconds of fixed cost each.

    hasher = MinHasher(DedupConfig())
    hasher.signature("some text ...")           # uint32[num_buckets * hashes_per_bucket]
    clusters = minhash_clusters(ds, DedupConfig(), num_partitions=4)  # Dataset of (id, cluster_id)
"""

from __future__ import annotations

import re

import mmh3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.expressions import col

from raylm.config import DedupConfig
from raylm.data.components import components_of_table, connected_components

_WORDS = re.compile(r"\w+")
_CHUNK = 4096  # shingles hashed at once; bounds memory for very long documents


def shingles(text: str, ngram_size: int) -> set[str]:
    """Word n-grams of the lowercased text with punctuation removed."""
    words = _WORDS.findall(text.lower())
    if len(words) < ngram_size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """MinHash signatures with multiply-shift hashing: h_i(x) = (a_i * x + b_i) mod 2^64 >> 32."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.num_hashes = cfg.num_buckets * cfg.hashes_per_bucket
        rng = np.random.default_rng(cfg.seed)
        self.a = rng.integers(1, 2**63, size=self.num_hashes, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self.b = rng.integers(0, 2**63, size=self.num_hashes, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        grams = shingles(text, self.cfg.ngram_size)
        hashed = np.fromiter((mmh3.hash64(g, signed=False)[0] for g in grams), dtype=np.uint64, count=len(grams))
        signature = np.full(self.num_hashes, np.iinfo(np.uint32).max, dtype=np.uint64)
        for start in range(0, len(hashed), _CHUNK):
            chunk = hashed[start:start + _CHUNK, None]
            with np.errstate(over="ignore"):  # wrap-around is the hash function
                permuted = (chunk * self.a + self.b) >> np.uint64(32)
            np.minimum(signature, permuted.min(axis=0), out=signature)
        return signature.astype(np.uint32)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        bands = signature.reshape(self.cfg.num_buckets, self.cfg.hashes_per_bucket)
        return [mmh3.hash64(band.tobytes(), signed=True)[0] for band in bands]

    def signature_rows(self, batch: pa.Table) -> pa.Table:
        """(id, text) batch -> (id, signature) with the signature as raw uint32 bytes."""
        sigs = [self.signature(text).tobytes() for text in batch.column("text").to_pylist()]
        return pa.table({"id": batch.column("id"), "signature": pa.array(sigs, pa.binary())})

    def band_rows(self, batch: pa.Table) -> pa.Table:
        """(id, signature) batch -> (band, key, id) rows, num_buckets per document."""
        bands, keys, ids = [], [], []
        for doc_id, sig in zip(batch.column("id").to_pylist(), batch.column("signature").to_pylist()):
            for band, key in enumerate(self.band_keys(np.frombuffer(sig, dtype=np.uint32))):
                bands.append(band)
                keys.append(key)
                ids.append(doc_id)
        return pa.table({"band": pa.array(bands, pa.int16()), "key": pa.array(keys, pa.int64()),
                         "id": pa.array(ids, pa.string())})


_MAX_ALL_PAIRS = 32  # larger buckets (templated pages) emit a star instead of all pairs


def _bucket_pairs(ids: list[str]) -> list[tuple[str, str]]:
    """The candidate pairs of one bucket: all pairs for small buckets, a star from the smallest id otherwise."""
    ids = sorted(set(ids))
    if len(ids) <= _MAX_ALL_PAIRS:
        return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    return [(ids[0], b) for b in ids[1:]]


def _pair_table(pairs: list[tuple[str, str]]) -> pa.Table:
    """Always the (src, dst) schema, even when empty: joins need it."""
    return pa.table({"src": pa.array([a for a, _ in pairs], pa.string()),
                     "dst": pa.array([b for _, b in pairs], pa.string())})


def _candidate_pairs(group: pa.Table) -> pa.Table:
    """Documents sharing a band key (one group of the (band, key) groupby): their candidate pairs."""
    return _pair_table(_bucket_pairs(group.column("id").to_pylist()))


def signature_agreement(a: bytes, b: bytes) -> float:
    """Share of MinHash values two signatures agree on: an estimate of their Jaccard."""
    return float(np.mean(np.frombuffer(a, np.uint32) == np.frombuffer(b, np.uint32)))


def _verify(batch: pa.Table, threshold: float, mode: str, ngram_size: int) -> pa.Table:
    """Keep the candidate pairs whose similarity clears the threshold."""
    if mode == "exact":
        measure = lambda a, b: jaccard(shingles(a, ngram_size), shingles(b, ngram_size))  # noqa: E731
    else:
        measure = signature_agreement
    keep = [measure(a, b) >= threshold for a, b in zip(batch.column("a").to_pylist(), batch.column("b").to_pylist())]
    return batch.select(["src", "dst"]).filter(pa.array(keep, pa.bool_()))


def verify_pairs(edges: ray.data.Dataset, payload: ray.data.Dataset, cfg: DedupConfig,
                 num_partitions: int) -> ray.data.Dataset:
    """Candidate pairs meet the (id, payload) rows of their two documents by joins; dissimilar pairs go.

    A semi-join first narrows the payload to the documents that have a candidate
    pair (duplicates only), so the pair joins stay small.
    """
    column = "text" if cfg.verify == "exact" else "signature"
    ids = edges.select_columns(["src"]).rename_columns({"src": "id"}).union(
        edges.select_columns(["dst"]).rename_columns({"dst": "id"}))
    candidates = payload.select_columns(["id", column]).join(ids, "left_semi", num_partitions, on=("id",))
    candidates = candidates.materialize()
    left = candidates.rename_columns({"id": "src", column: "a"})
    right = candidates.rename_columns({"id": "dst", column: "b"})
    pairs = edges.join(left, "inner", num_partitions, on=("src",)).join(right, "inner", num_partitions, on=("dst",))
    return pairs.map_batches(_verify, fn_args=(cfg.verify_threshold, cfg.verify, cfg.ngram_size),
                             batch_format="pyarrow")


def near_duplicate_edges(docs: ray.data.Dataset, cfg: DedupConfig, num_partitions: int) -> ray.data.Dataset:
    """(src, dst) rows: the candidate pairs of a (id, text) dataset, verified as `cfg.verify` says."""
    hasher = MinHasher(cfg)
    sigs = docs.select_columns(["id", "text"]).map_batches(hasher.signature_rows, batch_format="pyarrow")
    sigs = sigs.materialize()  # used twice when pairs are verified by signature
    edges = sigs.map_batches(hasher.band_rows, batch_format="pyarrow").groupby(
        ["band", "key"], num_partitions=num_partitions).map_groups(_candidate_pairs, batch_format="pyarrow")
    edges = edges.materialize()
    if cfg.verify != "none" and edges.count():
        edges = verify_pairs(edges, docs if cfg.verify == "exact" else sigs, cfg, num_partitions)
    return edges


# Up to this much data (the id and text columns), the whole near-duplicate search runs in one Ray task: the same
# signatures, buckets, pairs, verification and components as on Ray Data, without its hash shuffles (six or
# more, each seconds of fixed cost on a small machine: 9 s for the 90 pages of `make run`). A fixed bound on
# one worker's memory; larger corpora take the distributed path.
LOCAL_BYTES = 64 << 20


def minhash_clusters(docs: ray.data.Dataset, cfg: DedupConfig, num_partitions: int) -> ray.data.Dataset:
    """Near-duplicate clusters of a (id, text) dataset, as (id, cluster_id) rows (documents with a duplicate only).

    `docs` should be materialized (its size decides the path; the pipeline's is)."""
    if (docs.size_bytes() or 0) <= LOCAL_BYTES:
        blocks = docs.to_arrow_refs()  # the blocks go to the task from the object store, not through the driver
        return ray.data.from_arrow_refs([_clusters_in_one_task.remote(cfg, *blocks)])
    docs = docs.select_columns(["id", "text"])
    return connected_components(near_duplicate_edges(docs, cfg, num_partitions), num_partitions)


@ray.remote
def _clusters_in_one_task(cfg: DedupConfig, *blocks: pa.Table) -> pa.Table:
    """minhash_clusters of a small corpus in this process, step for step as on Ray Data."""
    docs = pa.concat_tables([block.select(["id", "text"]) for block in blocks]) if blocks else \
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    hasher = MinHasher(cfg)
    sigs = hasher.signature_rows(docs)
    bands = hasher.band_rows(sigs)
    buckets = bands.group_by(["band", "key"], use_threads=False).aggregate([("id", "list")])
    edges = _pair_table([pair for ids in buckets.column("id_list").to_pylist() if len(ids) > 1
                         for pair in _bucket_pairs(ids)])
    if cfg.verify != "none" and edges.num_rows:
        payload, column = (docs, "text") if cfg.verify == "exact" else (sigs, "signature")
        lookup = dict(zip(payload.column("id").to_pylist(), payload.column(column).to_pylist()))
        edges = _verify(edges.append_column("a", pa.array([lookup[i] for i in edges.column("src").to_pylist()]))
                        .append_column("b", pa.array([lookup[i] for i in edges.column("dst").to_pylist()])),
                        cfg.verify_threshold, cfg.verify, cfg.ngram_size)
    return components_of_table(edges)


def _drop_all_but_first(group: pd.DataFrame) -> pd.DataFrame:
    return group.sort_values("id").iloc[1:]


# Up to this many documents the driver groups the hashes (about 100 bytes each, 20 MB at most): a fixed bound,
# so nothing on the driver grows with the corpus beyond it.
EXACT_LOCAL_ROWS = 200_000


def exact_duplicates(docs: ray.data.Dataset, num_partitions: int) -> ray.data.Dataset:
    """Rows (id, url, num_chars) of documents whose content hash an earlier (smaller) id has.

    Up to EXACT_LOCAL_ROWS documents, their (id, content_hash) pairs are grouped in the
    driver with pyarrow and the duplicates picked by a filter: a Ray Data groupby is a
    hash shuffle that starts its aggregator actors (a Python process each, seconds of
    CPU) whatever the data size. Larger inputs take the groupby.
    """
    docs = docs.select_columns(["id", "url", "num_chars", "content_hash"])
    if docs.count() > EXACT_LOCAL_ROWS:  # free on a materialized dataset, as the pipeline's is
        return docs.groupby("content_hash", num_partitions=num_partitions).map_groups(
            _drop_all_but_first, batch_format="pandas")
    pairs = pa.concat_tables([pa.table({"id": pa.array([], pa.string()), "content_hash": pa.array([], pa.string())})] + [
        batch for batch in docs.select_columns(["id", "content_hash"]).iter_batches(batch_format="pyarrow",
                                                                                   batch_size=None)])
    first = pairs.group_by("content_hash", use_threads=False).aggregate([("id", "min")])
    pairs = pairs.join(first, "content_hash")
    duplicates = pairs.filter(pc.not_equal(pairs.column("id"), pairs.column("id_min"))).column("id")
    return docs.filter(expr=col("id").is_in(duplicates.to_pylist()))
