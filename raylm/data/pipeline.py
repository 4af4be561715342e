"""The data step on Ray Data: raw crawl in, clean deduplicated corpus + removal log out.

    raylm data --input raylm/sample/crawl --output /tmp/clean     # or as part of `raylm run`

Stages (each a Ray Data job; intermediate results are parquet in the work folder,
so no stage needs the corpus in memory):
1. read + clean   WARC/JSONL/parquet -> Cleaner actors (URL blocklist, extraction,
                  FineWeb filters) -> _cleaned/*.parquet with step/reason per document
2. exact dedup    groupby(content_hash)
3. MinHash dedup  band rows -> groupby(band, key) -> edges -> connected components (one Ray task
                  for a corpus of at most 64 MB)
4. write          duplicates dropped (by an id filter, or anti-joins past LOCAL_IDS), PII scrub,
                  kept/*.parquet + removed/*.parquet
Then stats.json and funnel.png (documents and characters left after each step).
"""

from __future__ import annotations

import functools
import math
import time

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from datatrove.pipeline.formatters import PIIFormatter
from ray.data.expressions import col

from raylm.config import DataConfig, PiiConfig
from raylm.data.clean import Cleaner
from raylm.data.dedup import exact_duplicates, minhash_clusters
from raylm.data.readers import InputFiles, read_documents
from raylm.data.report import write_report
from raylm.errors import InputError
from raylm.runs import Work

KEPT_COLUMNS = ["id", "url", "text", "language_score", "cluster_id"]
PARTITION_BYTES = 256 << 20  # shuffle partitions (groupbys, joins) of about this much data each
# Files of at least this much data in the step's parquet folders: the cleaning actors emit small blocks (a
# few pages each), and a file per block made the stages that read _cleaned/ back start a read task per file
# (80 files of the large-page benchmark crawl took 12-15 s to read on 2 cores, the same data in 2 files 2-3 s)
FILE_BYTES = 128 << 20
REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("step", pa.string()),
                            ("reason", pa.string()), ("num_chars", pa.int64())])


class EmptyCorpusError(InputError):
    """The input held no documents (or nothing survived): nothing to write."""


@functools.lru_cache(maxsize=4)
def _pii_formatter(emails: bool, ips: bool) -> PIIFormatter:
    return PIIFormatter(remove_emails=emails, remove_ips=ips)  # compiled once per worker process


def scrub_pii(batch: pa.Table, cfg: PiiConfig) -> pa.Table:
    """Replace e-mail addresses and public IP addresses (datatrove's PIIFormatter)."""
    formatter = _pii_formatter(cfg.emails, cfg.ips)
    texts = []
    for text in batch.column("text").to_pylist():
        # datatrove cycles through its stand-in addresses across calls; restart the cycle per document, so
        # a document's scrubbed text depends on that document alone, not on which worker saw what first
        # (otherwise two runs of the same crawl write different text and train different tokenizers)
        formatter.emails_replacer._replace_i = formatter.ip_replacer._replace_i = 0
        texts.append(formatter.format(text))
    return batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))


def _with_cluster_id(batch: pa.Table) -> pa.Table:
    """Documents outside every near-duplicate cluster are a cluster of one."""
    cluster = pc.coalesce(batch.column("cluster_id"), batch.column("id"))
    return batch.set_column(batch.schema.get_field_index("cluster_id"), "cluster_id", cluster)


def _removed_rows(ds: ray.data.Dataset, step: str | None = None, reason: str | None = None) -> ray.data.Dataset:
    """Rows of the removal log, in one schema whatever made them (a join gives large_string columns, and
    one file of the log takes blocks from every stage), labelled with step and reason when given."""
    def label(batch: pa.Table) -> pa.Table:
        n = len(batch)
        return pa.table({"id": batch.column("id"), "url": batch.column("url"),
                         "step": pa.array([step] * n, pa.string()) if step else batch.column("step"),
                         "reason": pa.array([reason] * n, pa.string()) if reason else batch.column("reason"),
                         "num_chars": batch.column("num_chars")}).cast(REMOVED_SCHEMA)
    return ds.map_batches(label, batch_format="pyarrow")


# Up to this many ids, the documents to drop (duplicates) or to label (cluster ids) go to the workers inside
# the query, as an `in` filter or a dict, instead of meeting the corpus in a join: a join is a hash shuffle,
# seconds of fixed cost on a small machine whatever the size of the data. A fixed bound (about 1 MB of ids),
# so nothing on the driver grows with the corpus beyond it; more ids take the joins.
LOCAL_IDS = 20_000


def _local_ids(ids: ray.data.Dataset) -> list[str] | None:
    """The `id` column of a materialized dataset, or None when it has more than LOCAL_IDS rows."""
    if ids.count() > LOCAL_IDS:
        return None
    return [row["id"] for row in ids.select_columns(["id"]).take_all()]


def split_by_ids(docs: ray.data.Dataset, ids: ray.data.Dataset, parts: int) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(the documents whose id is among `ids`', the others); `ids` is a materialized dataset with an id column.
    Both are lazy: a caller that uses one of them pays for that one only."""
    local = _local_ids(ids)
    if local is None:
        ids = ids.select_columns(["id"])
        return docs.join(ids, "left_semi", parts, on=("id",)), docs.join(ids, "left_anti", parts, on=("id",))
    if not local:
        return docs.limit(0), docs
    return docs.filter(expr=col("id").is_in(local)), docs.filter(expr=col("id").not_in(local))


def _add_cluster_ids(batch: pa.Table, clusters: dict[str, str]) -> pa.Table:
    ids = batch.column("id").to_pylist()
    return batch.append_column("cluster_id", pa.array([clusters.get(i, i) for i in ids], pa.string()))


def with_cluster_ids(docs: ray.data.Dataset, clusters: ray.data.Dataset, parts: int) -> ray.data.Dataset:
    """A cluster_id column: the near-duplicate cluster's id from (id, cluster_id) rows, else the document's own."""
    if clusters.count() > LOCAL_IDS:
        return docs.join(clusters, "left_outer", parts, on=("id",)).map_batches(_with_cluster_id, batch_format="pyarrow")
    lookup = {row["id"]: row["cluster_id"] for row in clusters.take_all()}
    return docs.map_batches(_add_cluster_ids, fn_args=(lookup,), batch_format="pyarrow")


def _log(message: str) -> None:
    print(f"[data] {message}", flush=True)


def num_partitions(ds: ray.data.Dataset) -> int:
    """Shuffle partitions from the size of the data, not from the CPUs free right now (a cluster that
    is still scaling up, or whose head runs no work, would get one partition for any corpus)."""
    return max(1, math.ceil((ds.size_bytes() or 0) / PARTITION_BYTES))


def clean_documents(cfg: DataConfig, inputs: list[InputFiles], path: str, fs=None) -> None:
    """Stage 1: read the inputs and write every record, cleaned or with the step that dropped it, to `path`
    (parquet). benchmarks/data_pipeline.py times this function as "the clean stage"."""
    read_documents(inputs, rows_per_block=cfg.batch_size).map_batches(
        Cleaner, fn_constructor_args=(cfg,), batch_format="pyarrow", batch_size=cfg.batch_size,
        num_cpus=cfg.worker_cpus, compute=ray.data.ActorPoolStrategy(size=cfg.num_workers),
    ).write_parquet(path, filesystem=fs, min_bytes_per_file=FILE_BYTES)


def run_data(cfg: DataConfig, inputs: list[InputFiles], work: Work) -> dict:
    """Run the whole data step into the step's folder in storage; returns the metrics for the manifest."""
    fs = work.storage.fs
    timings: dict[str, float] = {}

    t = time.time()
    _log(f"1/4 read + clean: {', '.join(cfg.input)} (extractor={cfg.extractor}, {cfg.num_workers} actors)")
    clean_documents(cfg, inputs, work.path("_cleaned"), fs)
    cleaned = ray.data.read_parquet(work.path("_cleaned"), filesystem=fs)
    kept = cleaned.filter(expr=col("step").is_null()).drop_columns(["step", "reason"]).materialize()
    timings["clean"] = time.time() - t
    num_read = cleaned.count()
    if num_read == 0:
        raise EmptyCorpusError(f"no documents found in {', '.join(cfg.input)}")
    parts = num_partitions(kept)

    t = time.time()
    removed = [_removed_rows(cleaned.filter(expr=col("step").is_not_null()))]
    if cfg.dedup.exact and kept.count():
        _log("2/4 exact dedup: groupby(content_hash)")
        exact = exact_duplicates(kept, parts).materialize()
        removed.append(_removed_rows(exact, "exact_dedup", "exact_duplicate"))
        kept = split_by_ids(kept, exact, parts)[1].materialize()
    timings["exact_dedup"] = time.time() - t

    t = time.time()
    clusters = ray.data.from_arrow(pa.schema([("id", pa.string()), ("cluster_id", pa.string())]).empty_table())
    if cfg.dedup.minhash and kept.count():
        _log(f"3/4 MinHash dedup: {cfg.dedup.ngram_size}-grams, "
             f"{cfg.dedup.num_buckets} bands x {cfg.dedup.hashes_per_bucket} hashes")
        clusters = minhash_clusters(kept, cfg.dedup, parts).materialize()
    dropped_ids = clusters.filter(expr=col("id") != col("cluster_id")).select_columns(["id"]).materialize()
    if dropped_ids.count():
        near, kept = split_by_ids(kept, dropped_ids, parts)
        removed.append(_removed_rows(near, "minhash_dedup", "near_duplicate"))
    timings["minhash_dedup"] = time.time() - t

    t = time.time()
    _log("4/4 PII scrub + write kept/ and removed/")
    kept = with_cluster_ids(kept, clusters, parts)
    if cfg.pii.emails or cfg.pii.ips:
        kept = kept.map_batches(scrub_pii, fn_args=(cfg.pii,), batch_format="pyarrow")
    kept.select_columns(KEPT_COLUMNS).write_parquet(work.path("kept"), filesystem=fs, min_bytes_per_file=FILE_BYTES)
    removed_log = removed[0].union(*removed[1:]) if len(removed) > 1 else removed[0]
    removed_log.write_parquet(work.path("removed"), filesystem=fs, min_bytes_per_file=FILE_BYTES)
    work.storage.delete(f"{work.rel}/_cleaned")
    timings["write"] = time.time() - t

    stats = write_report(work.storage, work.rel, work.local, timings)
    if stats["kept_documents"] == 0:
        raise EmptyCorpusError("every document was removed; see removed/ and stats.json for why")
    _log(f"kept {stats['kept_documents']} of {stats['input_records']} records "
         f"({stats['kept_characters']:,} characters); see stats.json and funnel.png")
    return stats
