"""MinHash dedup's connected components: driver memory, on Ray Data vs on the driver (scipy), as the corpus grows.

For each corpus size (documents, 10x apart by default), a synthetic corpus of random-word
documents with planted near-duplicate clusters of varying size: stars (edits of one original)
and chains (each document an edit of the previous one, so A~B and B~C while A and C are too
far apart to be an edge). MinHash + exact verification (`near_duplicate_edges`, the first
half of `minhash_clusters`) gives the verified edges once; then the components stage runs
two ways on those same edges:

- new: `connected_components` on Ray Data (the second half of `minhash_clusters`), result
  materialized in the object store;
- old: every edge collected onto the driver and scipy's connected_components there (the code
  `minhash_clusters` had before).

The clusters must be identical. Measured per stage: the driver process's peak RSS above its
RSS at the start of the stage (Linux: /proc/self/clear_refs resets VmHWM, read back after),
seconds, rounds; each stage runs `--repeats` times and the largest peak counts. The claim:
the new driver's peak does not grow with the corpus; the old one grows with the edges.

    python benchmarks/dedup_scale.py [--sizes 2000,20000] [--repeats 3] [--out benchmarks/out]

Prints a table and writes OUT/dedup_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.config import DedupConfig  # noqa: E402

NUM_CPUS = os.cpu_count() or 2
VOCAB = [f"w{i}" for i in range(20_000)]
WORDS_PER_DOC = 200
EDITS = 3  # words replaced per edit: Jaccard ~0.86 to the source, ~0.73 two edits away


def edit(words: list[str], rng: random.Random) -> list[str]:
    words = list(words)
    for i in rng.sample(range(len(words)), EDITS):
        words[i] = rng.choice(VOCAB)
    return words


def planted_corpus(num_docs: int, seed: int = 0) -> dict[str, str]:
    """About a third of the documents in near-duplicate clusters: stars of 2-10 and chains of 3-8."""
    rng = random.Random(seed)
    docs: list[list[str]] = []
    while len(docs) < num_docs:
        original = [rng.choice(VOCAB) for _ in range(WORDS_PER_DOC)]
        docs.append(original)
        kind = rng.random()
        if kind < 0.15:  # a star: independent edits of one original
            docs += [edit(original, rng) for _ in range(rng.randint(1, 9))]
        elif kind < 0.25:  # a chain: each an edit of the one before
            for _ in range(rng.randint(2, 7)):
                docs.append(edit(docs[-1], rng))
    docs = docs[:num_docs]
    ids = [f"<urn:uuid:{rng.getrandbits(128):032x}>" for _ in docs]  # WARC record ids: order unrelated to clusters
    return dict(zip(ids, (" ".join(words) for words in docs)))


class PeakRss:
    """Driver RSS high-water mark above the RSS at entry (Linux: VmHWM, reset through clear_refs)."""

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        self.start = self._status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mib = (self._status_kib("VmHWM") - self.start) / 1024

    @staticmethod
    def _status_kib(field: str) -> int:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class Tee(io.TextIOBase):
    """Echo to stdout and keep a copy (to count the components rounds)."""

    def __init__(self, out):
        self.out, self.text = out, io.StringIO()

    def write(self, s: str) -> int:
        self.text.write(s)
        return self.out.write(s)


def components_on_driver(edges) -> pa.Table:
    """The old path: every verified edge onto the driver, scipy's connected components there."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    src_ids, dst_ids = [], []
    for batch in edges.iter_batches(batch_format="pyarrow", batch_size=65_536):
        src_ids.append(batch.column("src").to_numpy(zero_copy_only=False))
        dst_ids.append(batch.column("dst").to_numpy(zero_copy_only=False))
    src = np.concatenate(src_ids).astype(str)
    dst = np.concatenate(dst_ids).astype(str)
    ids, index = np.unique(np.concatenate([src, dst]), return_inverse=True)
    m = len(src)
    graph = coo_matrix((np.ones(m, dtype=np.int8), (index[:m], index[m:])), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # ids are sorted: first member = smallest id
    return pa.table({"id": pa.array(ids, pa.string()), "cluster_id": pa.array(ids[first[labels]], pa.string())})


def warm_up() -> None:
    """Both paths once on a tiny graph: imports and executor start-up are not what is measured."""
    import ray.data

    from raylm.data.components import connected_components

    edges = ray.data.from_items([{"src": "a", "dst": "b"}, {"src": "b", "dst": "c"}]).materialize()
    with contextlib.redirect_stdout(io.StringIO()):
        connected_components(edges, NUM_CPUS).materialize()
    components_on_driver(edges)


def measured(stage, repeats: int) -> tuple[object, dict]:
    """Run a stage `repeats` times: its last result, the largest driver peak of all runs, the median seconds."""
    peaks, seconds = [], []
    for _ in range(repeats):
        result = None  # the previous run's result is not part of this run's baseline
        with PeakRss() as rss:
            t = time.time()
            result = stage()
            seconds.append(time.time() - t)
        peaks.append(rss.peak_mib)
    return result, {"driver_peak_mib": max(peaks), "driver_peak_mib_each": peaks,
                    "seconds": float(np.median(seconds))}


def bench_size(num_docs: int, repeats: int) -> dict:
    import ray.data

    from raylm.data.components import connected_components
    from raylm.data.dedup import near_duplicate_edges

    t = time.time()
    docs = planted_corpus(num_docs)
    ds = ray.data.from_items([{"id": k, "text": v} for k, v in docs.items()], override_num_blocks=NUM_CPUS * 2)
    edges = near_duplicate_edges(ds.materialize(), DedupConfig(), NUM_CPUS).materialize()
    result = {"documents": num_docs, "edges": edges.count(), "edges_s": time.time() - t}

    log = Tee(sys.stdout)
    with contextlib.redirect_stdout(log):
        clusters, result["new"] = measured(lambda: connected_components(edges, NUM_CPUS).materialize(), repeats)
    result["new"]["rounds"] = log.text.getvalue().count("components round") // repeats
    _, result["old"] = measured(lambda: components_on_driver(edges), repeats)

    new = clusters.to_pandas()  # the comparison brings both onto the driver, outside the measured stages
    old = components_on_driver(edges).to_pandas()
    assert len(new) == new["id"].nunique()
    assert dict(zip(new["id"], new["cluster_id"])) == dict(zip(old["id"], old["cluster_id"])), "clusters differ"
    result["clustered_documents"] = len(old)
    result["clusters"] = int(old["cluster_id"].nunique())
    return result


def report(results: list[dict]) -> str:
    header = (f"{'documents':>9} {'edges':>7} {'clustered':>9} {'clusters':>8} | {'new MiB':>7} {'new s':>6} "
              f"{'rounds':>6} | {'old MiB':>7} {'old s':>6}")
    rows = [f"{r['documents']:>9} {r['edges']:>7} {r['clustered_documents']:>9} {r['clusters']:>8} | "
            f"{r['new']['driver_peak_mib']:>7.1f} {r['new']['seconds']:>6.1f} {r['new']['rounds']:>6} | "
            f"{r['old']['driver_peak_mib']:>7.1f} {r['old']['seconds']:>6.1f}" for r in results]
    title = "driver peak RSS above the stage's start (MiB, largest of the repeats) and median seconds, components only"
    return "\n".join([title, header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000", help="corpus sizes in documents, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each components stage (largest peak)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    # Ray 2.60 runs shuffle map and reduce tasks in worker pools of their own; with the default soft
    # limit (num_cpus workers) a 2-core machine restarts worker processes between jobs, seconds each.
    os.environ.setdefault("RAY_num_workers_soft_limit", str(4 * NUM_CPUS))
    ray.init(num_cpus=NUM_CPUS, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    warm_up()
    results = []
    for num_docs in sizes:
        print(f"[bench] {num_docs} documents", flush=True)
        results.append(bench_size(num_docs, args.repeats))
    ray.shutdown()

    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": NUM_CPUS,
           "repeats": args.repeats, "machine": f"{platform.machine()} {platform.platform()}", "results": results}
    (args.out / "dedup_scale.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out / 'dedup_scale.json'}")


if __name__ == "__main__":
    main()
