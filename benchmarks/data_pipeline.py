"""Data step benchmark: raylm on Ray Data vs datatrove, side by side in one run.

1. Throughput on two corpora, each read by both pipelines: the bundled sample crawl
   (replicated with fresh record ids; small pages, 6.5 K extracted characters) and a
   crawl of large real pages (benchmarks/large_pages.py: Debian's HTML documentation,
   16 K characters). documents/second/core of `raylm data` (its read+clean stage
   alone, as the first job of a fresh cluster and again as a job on the running cluster, then
   the whole step with its per-stage seconds) vs datatrove's
   LocalPipelineExecutor with the same extraction (trafilatura, FineWeb settings) and
   datatrove's own filter classes (raylm's faster ones decide identically, see
   tests/data/test_filter_equivalence.py). Both get the machine's cores; raylm runs on the
   local Ray that `raylm` itself starts (raylm.ray_setup.start_local_ray). `--rounds N`
   runs each corpus N times, who goes first alternating, and reports every round and
   the medians: this machine's speed drifts between minutes. Also the CPU
   seconds per document each pipeline's processes spent (all of them: Ray's daemons,
   datatrove's extraction sandboxes), which a busy machine disturbs less than wall time.
2. Extractors: trafilatura vs resiliparse on the same pages, one process: pages/s and
   how much text survives the filter chain.
3. Fuzzy dedup on a corpus with planted near-duplicates over a spread of Jaccard values:
   raylm's MinHash-LSH on Ray Data vs datatrove's four MinhashDedup stages, both with
   FineWeb's parameters (5-grams, 14 bands x 8 hashes), scored against brute-force
   Jaccard (sparse matrix product over all pairs) at threshold 0.8.

    python benchmarks/data_pipeline.py [--copies 3] [--corpora sample,large] [--rounds 1] [--dedup-docs 2000]
                                       [--out benchmarks/out]

Prints a report and writes OUT/data_pipeline.json; results go in benchmarks/RESULTS.md.
The large-page crawl and its .deb files stay in OUT between runs (built once).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.config import SAMPLE_CRAWL, DataConfig, DedupConfig  # noqa: E402
from raylm.data.dedup import shingles  # noqa: E402
from raylm.ray_setup import start_local_ray  # noqa: E402

NUM_CPUS = os.cpu_count() or 2
KEEP = {"debs", "large-crawl", "large-crawl.json"}  # built once, kept in OUT between runs


class CpuClock:
    """CPU seconds of this process and every process it starts (sampled: short-lived ones count too)."""

    def __init__(self, interval: float = 0.5):
        import threading

        import psutil

        self.root, self.interval = psutil.Process(), interval
        self.start = self._times()
        self.seen = dict(self.start)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _times(self) -> dict[int, float]:
        times = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                cpu = proc.cpu_times()
                times[proc.pid] = cpu.user + cpu.system
            except Exception:  # it ended between listing and reading
                continue
        return times

    def _poll(self) -> None:
        while not self.done.wait(self.interval):
            self.seen.update(self._times())

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        self.seen.update(self._times())
        return sum(t - self.start.get(pid, 0.0) for pid, t in self.seen.items())


def replicate_sample(out: Path, copies: int) -> int:
    """`copies` x the sample crawl, each record with a fresh WARC-Record-ID; returns #responses.

    Records get WARC-Identified-Payload-Type, as Common Crawl's do: datatrove's WarcReader
    trusts it (and without it sniffs XHTML pages as XML and skips them).
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for copy in range(copies):
        for src in sorted(SAMPLE_CRAWL.glob("*.warc.gz")):
            with open(out / f"copy{copy}-{src.name}", "wb") as f:
                writer = WARCWriter(f, gzip=True)
                for rec in ArchiveIterator(open(src, "rb"), record_types=WarcRecordType.response, parse_http=True):
                    http = rec.http_headers
                    headers = StatusAndHeaders(f"{http.status_code} {http.reason_phrase}", list(http.items()),
                                               protocol="HTTP/1.1")
                    payload_type = (rec.http_content_type or "application/octet-stream").split(";")[0]
                    writer.write_record(writer.create_warc_record(
                        rec.headers["WARC-Target-URI"], "response", payload=io.BytesIO(rec.reader.read()),
                        http_headers=headers, warc_headers_dict={"WARC-Identified-Payload-Type": payload_type}))
                    count += 1
    return count


def bench_raylm(crawl: Path, work: Path) -> dict:
    """The read+clean stage twice and then the whole data step, on one fresh local Ray.

    The first clean stage is the first job of a fresh cluster: it also pays for what Ray does once per
    cluster (Ray Data's stats, actor-location and autoscaling-coordinator actors, about 3.5 s of CPU here,
    and the first use of the prestarted idle workers). The second one and the whole step run as jobs on
    a running cluster do; each starts its own cleaning actors and pays their set-up.
    """
    import ray

    from raylm.config import StorageConfig
    from raylm.data.url_filter import offline_url_filter
    from raylm.data.pipeline import clean_documents, run_data
    from raylm.data.readers import find_inputs
    from raylm.runs import run_step
    from raylm.storage import Storage

    offline_url_filter()  # its one-time cache (the sorted domain blocklist) is built before timing
    cfg = DataConfig(input=[str(crawl)], num_workers=NUM_CPUS, batch_size=16)
    inputs = find_inputs(cfg.input)
    start_local_ray(NUM_CPUS)
    timed = {}
    for run in ("clean_stage_cold", "clean_stage"):
        clock, t = CpuClock(), time.time()
        clean_documents(cfg, inputs, str(work / run))  # the data step's own first stage
        timed[f"{run}_s"], timed[f"{run}_cpu_s"] = time.time() - t, clock.stop()
    clock, t = CpuClock(), time.time()
    storage = Storage(StorageConfig(uri=str(work)))
    stats = run_step("data", storage, "full", "bench", lambda folder: run_data(cfg, inputs, folder)).metrics
    timed["full_step_s"], timed["full_step_cpu_s"] = time.time() - t, clock.stop()
    ray.shutdown()
    return {**timed, "stage_s": stats["seconds"], "kept": stats["kept_documents"],
            "after_filters": stats["funnel"][-3]["documents"]}


def bench_datatrove(crawl: Path, work: Path) -> dict:
    """datatrove's FineWeb pipeline with its own classes: reader, URL filter, extractor, filters, writer."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter

    from raylm.data.filters import build_filters
    from raylm.data.url_filter import offline_url_filter

    files = sorted(crawl.glob("*.warc.gz"))
    tasks = min(len(files), NUM_CPUS)
    pipeline = [
        WarcReader(str(crawl), glob_pattern="*.warc.gz"),
        offline_url_filter(fast=False, load=False),  # lists load in each task, as datatrove does
        Trafilatura(favour_precision=True, timeout=30),
        *build_filters(DataConfig().filters, fast=False).values(),
        ParquetWriter(str(work / "datatrove-out")),
    ]
    clock, t = CpuClock(), time.time()
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=NUM_CPUS,
                          logging_dir=str(work / "datatrove-logs")).run()
    seconds, cpu = time.time() - t, clock.stop()
    import pyarrow.dataset as pads

    kept = pads.dataset(str(work / "datatrove-out"), format="parquet").count_rows()
    return {"seconds": seconds, "cpu_s": cpu, "tasks": tasks, "after_filters": kept}


def bench_throughput(crawl: Path, work: Path, rounds: int = 1) -> dict:
    """raylm and datatrove back to back on one crawl, `rounds` times, who goes first alternating (this
    machine's speed drifts by 10-30% between minutes, which one pair of runs cannot tell from a difference);
    documents/s/core with the cores each was given, per round and the median of the rounds."""
    import gzip
    import statistics

    from raylm.data.readers import find_inputs, iter_warc

    records = 0
    for path in (p for group in find_inputs([str(crawl)]) for p in group.files["warc"]):
        with gzip.open(path) as stream:
            records += sum(1 for _ in iter_warc(stream, path))
    per_round = []
    for number in range(rounds):
        folder = work / f"round{number}"
        if number % 2:
            datatrove, raylm = bench_datatrove(crawl, folder), bench_raylm(crawl, folder / "raylm")
        else:
            raylm, datatrove = bench_raylm(crawl, folder / "raylm"), bench_datatrove(crawl, folder)
        per_round.append(throughput_round(records, raylm, datatrove))
        print(f"[bench] round {number + 1}/{rounds}: vs datatrove {per_round[-1]['ratio_vs_datatrove']}", flush=True)
    median = {group: {key: statistics.median(r[group][key] for r in per_round) for key in per_round[0][group]}
              for group in ("docs_per_s_per_core", "cpu_ms_per_doc", "ratio_vs_datatrove")}
    return {"records": records, "cores": per_round[0]["cores"], "rounds": per_round, **median}


def throughput_round(records: int, raylm: dict, datatrove: dict) -> dict:
    runs = ("clean_stage_cold", "clean_stage", "full_step")
    datatrove_per_core_s = datatrove["seconds"] / datatrove["tasks"]
    return {
        "cores": {"raylm": NUM_CPUS, "datatrove": datatrove["tasks"]},
        "raylm": raylm, "datatrove": datatrove,
        "docs_per_s_per_core": {**{f"raylm_{run}": records / raylm[f"{run}_s"] / NUM_CPUS for run in runs},
                                "datatrove_filters": records / datatrove_per_core_s},
        "cpu_ms_per_doc": {**{f"raylm_{run}": 1000 * raylm[f"{run}_cpu_s"] / records for run in runs},
                           "datatrove_filters": 1000 * datatrove["cpu_s"] / records},
        "ratio_vs_datatrove": {run: datatrove_per_core_s / (raylm[f"{run}_s"] / NUM_CPUS) for run in runs},
    }


def bench_extractors(limit: int = 300) -> dict:
    import gzip

    from datatrove.data import Document

    from raylm.data.clean import extract_text
    from raylm.data.filters import build_filters, run_filters
    from raylm.data.readers import iter_warc

    pages = []
    for src in sorted(SAMPLE_CRAWL.glob("*.warc.gz")):
        with gzip.open(src) as stream:
            pages += [r["html"] for r in iter_warc(stream, str(src)) if r["html"]]
    pages = pages[:limit]
    filters = build_filters(DataConfig().filters)
    result = {}
    for name in ("trafilatura", "resiliparse"):
        t = time.time()
        texts = [extract_text(html, name) for html in pages]
        seconds = time.time() - t
        kept = [t for t in texts if t and run_filters(filters, Document(text=t, id="x"))[0] is None]
        result[name] = {"pages": len(pages), "pages_per_s": len(pages) / seconds,
                        "mean_chars": float(np.mean([len(t) for t in texts])),
                        "pass_filters": len(kept), "chars_after_filters": sum(len(t) for t in kept)}
    return result


def dedup_corpus(num_docs: int, seed: int = 0) -> tuple[dict[str, str], list[float]]:
    """Real extracted texts as originals, plus edited copies at a spread of Jaccard levels."""
    import gzip

    from raylm.data.clean import extract_text
    from raylm.data.readers import iter_warc

    rng = random.Random(seed)
    texts = []
    for src in sorted(SAMPLE_CRAWL.glob("*.warc.gz")):
        with gzip.open(src) as stream:
            texts += [extract_text(r["html"], "resiliparse") for r in iter_warc(stream, str(src)) if r["html"]]
    texts = sorted({t for t in texts if len(t.split()) > 120})
    docs = {f"orig-{i:05d}": t for i, t in enumerate(texts)}
    vocab = sorted({w for t in texts[:50] for w in t.split()})
    edit_rates = []
    while len(docs) < num_docs:
        base = rng.choice(texts)
        words = base.split()
        rate = rng.choice([0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08])  # fraction of words replaced
        for i in rng.sample(range(len(words)), int(rate * len(words))):
            words[i] = rng.choice(vocab)
        if rng.random() < 0.5:  # a different boilerplate header, as a mirror would have
            words = ["Mirrored", "copy", "updated", "weekly"] + words
        docs[f"copy-{len(docs):05d}"] = " ".join(words)
        edit_rates.append(rate)
    return docs, edit_rates


def jaccard_pairs(docs: dict[str, str], threshold: float) -> tuple[set, dict]:
    """All pairs with Jaccard >= threshold, by a sparse matrix product (exact, brute force)."""
    from scipy.sparse import csr_matrix

    ids = sorted(docs)
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, doc_id in enumerate(ids):
        for g in shingles(docs[doc_id], 5):
            rows.append(r)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(ids), len(vocab)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    inter = (m @ m.T).tocoo()
    jac = {}
    for i, j, v in zip(inter.row, inter.col, inter.data):
        if i < j:
            jac[(ids[i], ids[j])] = v / (sizes[i] + sizes[j] - v)
    return {p for p, v in jac.items() if v >= threshold}, jac


def cluster_pairs(cluster_of: dict[str, object]) -> set:
    groups: dict[object, list[str]] = {}
    for doc_id, cluster in cluster_of.items():
        groups.setdefault(cluster, []).append(doc_id)
    return {(a, b) for members in groups.values() for a in sorted(members) for b in sorted(members) if a < b}


def score(cluster_of: dict[str, object], truth: set, jac: dict) -> dict:
    """Pair and document metrics of predicted clusters against exact Jaccard >= threshold.

    pairs: every pair inside a predicted cluster counts as declared duplicate (strict:
    transitive members count too). documents: a removed document (any cluster member
    but one) is correct if it has a true partner (J >= threshold) in its cluster;
    recall counts the documents that the true duplicate graph says should go.
    """
    found = cluster_pairs(cluster_of)
    hits = found & truth
    groups: dict[object, list[str]] = {}
    for doc_id, cluster in cluster_of.items():
        groups.setdefault(cluster, []).append(doc_id)
    partners: dict[str, set] = {}
    for a, b in truth:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    removed = [d for members in groups.values() for d in sorted(members)[1:]]
    correct = sum(1 for members in groups.values() for d in sorted(members)[1:]
                  if partners.get(d, set()) & set(members))
    true_components = components_of(truth)
    should_remove = sum(len(c) - 1 for c in true_components)
    covered = sum(len(c) - len({cluster_of.get(d, d) for d in c}) for c in true_components)
    return {"pairs_declared": len(found), "true_pairs": len(truth),
            "pair_recall": len(hits) / max(1, len(truth)), "pair_precision": len(hits) / max(1, len(found)),
            "docs_removed": len(removed), "docs_should_remove": should_remove,
            "doc_precision": correct / max(1, len(removed)), "doc_recall": covered / max(1, should_remove),
            "false_pairs_jaccard": sorted(round(float(jac.get(p, 0.0)), 3) for p in found - truth)[-10:],
            "missed_pairs_jaccard": sorted(round(float(jac.get(p, 0.0)), 3) for p in truth - found)[:10]}


def components_of(pairs: set) -> list[set]:
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[str, set] = {}
    for x in list(parent):
        groups.setdefault(find(x), set()).add(x)
    return list(groups.values())


def bench_dedup(num_docs: int, work: Path) -> dict:
    import ray
    import ray.data

    from raylm.data.dedup import minhash_clusters

    docs, _ = dedup_corpus(num_docs)
    t = time.time()
    truth, jac = jaccard_pairs(docs, 0.8)
    truth_s = time.time() - t
    result = {"documents": len(docs), "ground_truth_s": truth_s}

    start_local_ray(NUM_CPUS)
    ds = ray.data.from_items([{"id": k, "text": v} for k, v in docs.items()], override_num_blocks=NUM_CPUS * 2)
    ds = ds.materialize()
    for name, verify in (("raylm", "exact"), ("raylm_verify_signature", "signature"), ("raylm_no_verify", "none")):
        t = time.time()
        table = minhash_clusters(ds, DedupConfig(verify=verify), num_partitions=NUM_CPUS).to_pandas()
        seconds = time.time() - t
        cluster_of = dict(zip(table["id"], table["cluster_id"]))
        result[name] = {"seconds": seconds, "verify": verify, **score(cluster_of, truth, jac)}
    ray.shutdown()

    cluster_of, seconds = run_datatrove_minhash(docs, work / "dt-minhash")
    result["datatrove"] = {"seconds": seconds, **score(cluster_of, truth, jac)}
    return result


def run_datatrove_minhash(docs: dict[str, str], work: Path) -> tuple[dict, float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    inputs = work / "input"
    inputs.mkdir(parents=True)
    items = list(docs.items())
    shards = [items[i::NUM_CPUS] for i in range(NUM_CPUS)]
    for i, shard in enumerate(shards):
        (inputs / f"{i:03d}.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in shard))
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    logs = str(work / "logs")
    t = time.time()
    LocalPipelineExecutor([JsonlReader(str(inputs)), MinhashDedupSignature(str(work / "sigs"), config=config)],
                          tasks=NUM_CPUS, workers=NUM_CPUS, logging_dir=logs + "/1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
                          tasks=config.num_buckets, workers=NUM_CPUS, logging_dir=logs + "/2").run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config,
                                               save_cluster_id=True)], tasks=1, logging_dir=logs + "/3").run()
    LocalPipelineExecutor([JsonlReader(str(inputs)),
                           MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                              exclusion_writer=JsonlWriter(str(work / "removed"))),
                           JsonlWriter(str(work / "kept"))], tasks=NUM_CPUS, workers=NUM_CPUS,
                          logging_dir=logs + "/4").run()
    seconds = time.time() - t
    import gzip

    cluster_of = {}
    for path in list((work / "kept").glob("*")) + list((work / "removed").glob("*")):
        for line in gzip.open(path, "rt"):
            doc = json.loads(line)
            if doc["metadata"].get("minhash_cluster_id", -1) != -1:
                cluster_of[doc["id"]] = doc["metadata"]["minhash_cluster_id"]
    return cluster_of, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="copies of the sample crawl for the throughput run")
    parser.add_argument("--corpora", default="sample,large", help="throughput corpora: sample, large or both")
    parser.add_argument("--rounds", type=int, default=1, help="throughput runs per corpus, alternating who goes first")
    parser.add_argument("--dedup-docs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--only", choices=["throughput", "extractors", "dedup"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["throughput", "extractors", "dedup"])
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.iterdir():  # a clean work folder, but the large-page crawl is built once
        if old.name not in KEEP:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    print(f"[bench] {sorted(only)}; work in {args.out}", flush=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": NUM_CPUS,
              "machine": f"{platform.machine()} {platform.processor() or ''} {platform.platform()}".strip(),
              "python": platform.python_version()}

    if "throughput" in only:
        from large_pages import build as build_large_pages

        crawls = {}
        for corpus in args.corpora.split(","):
            if corpus == "sample":
                crawls[corpus] = args.out / "crawl"
                replicate_sample(crawls[corpus], args.copies)
            elif corpus == "large":
                crawls[corpus] = args.out / "large-crawl"
                if not (args.out / "large-crawl.json").exists():
                    build_large_pages(crawls[corpus], args.out / "debs")
                report["large_pages"] = json.loads((args.out / "large-crawl.json").read_text())
            else:
                parser.error(f"unknown corpus {corpus!r}")
        report["throughput"] = {}
        for corpus, crawl in crawls.items():
            print(f"[bench] throughput on the {corpus} crawl", flush=True)
            report["throughput"][corpus] = bench_throughput(crawl, args.out / f"throughput-{corpus}",
                                                                  args.rounds)
            print(json.dumps(report["throughput"][corpus], indent=2), flush=True)
    if "extractors" in only:
        report["extractors"] = bench_extractors()
    if "dedup" in only:
        report["dedup"] = bench_dedup(args.dedup_docs, args.out)

    (args.out / "data_pipeline.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
