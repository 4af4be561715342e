"""MinHash-LSH finds planted near-duplicates (Jaccard >= 0.8) and keeps distinct documents."""

from __future__ import annotations

import random

import numpy as np

from raylm.config import DedupConfig
from raylm.data.dedup import MinHasher, jaccard, minhash_clusters, shingles

VOCAB = [f"w{i}" for i in range(5000)]


def document(rng: random.Random, num_words: int = 300) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(num_words))


def edit(text: str, rng: random.Random, num_edits: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), num_edits):
        words[i] = rng.choice(VOCAB)
    return " ".join(words)


def planted_corpus(seed: int = 0):
    rng = random.Random(seed)
    originals = [document(rng) for _ in range(40)]
    docs = {f"doc-{i:02d}": text for i, text in enumerate(originals)}
    pairs = []
    for i in range(0, 40, 2):  # every other original gets a near-duplicate
        docs[f"doc-{i:02d}-copy"] = edit(originals[i], rng, num_edits=4)
        pairs.append((f"doc-{i:02d}", f"doc-{i:02d}-copy"))
    return docs, pairs


def test_signature_estimates_jaccard():
    rng = random.Random(1)
    a = document(rng, 400)
    b = edit(a, rng, 8)
    hasher = MinHasher(DedupConfig(num_buckets=32, hashes_per_bucket=8))
    estimate = np.mean(hasher.signature(a) == hasher.signature(b))
    assert abs(estimate - jaccard(shingles(a, 5), shingles(b, 5))) < 0.08
    assert hasher.signature(a).shape == (256,)
    assert (hasher.signature(a) == hasher.signature(a.upper())).all()  # case-insensitive shingles


def test_minhash_finds_planted_near_duplicates(ray_session, monkeypatch):
    """Both paths, one Ray task for a small corpus and the Ray Data shuffles past LOCAL_BYTES, give the
    planted clusters, also where a cluster is a chain of copies and a bucket is too big for all its pairs."""
    import ray.data

    from raylm.data import dedup

    docs, pairs = planted_corpus()
    rng = random.Random(3)
    chain = [docs["doc-01"]]
    for _ in range(3):  # doc-01 <- c1 <- c2 <- c3: c3 is no near-duplicate of doc-01 itself
        chain.append(edit(chain[-1], rng, num_edits=4))
    docs.update({f"doc-01-chain{i}": text for i, text in enumerate(chain[1:], 1)})
    assert jaccard(shingles(docs["doc-01"], 5), shingles(docs["doc-01-chain3"], 5)) < 0.8
    template = document(rng)
    docs.update({f"tpl-{i:02d}": edit(template, rng, num_edits=1) for i in range(40)})  # one bucket of 40
    for a, b in pairs:
        assert jaccard(shingles(docs[a], 5), shingles(docs[b], 5)) >= 0.8
    ds = ray.data.from_items([{"id": k, "text": v} for k, v in docs.items()], override_num_blocks=3).materialize()
    results = []
    for local_bytes in (dedup.LOCAL_BYTES, 0):
        monkeypatch.setattr(dedup, "LOCAL_BYTES", local_bytes)
        table = minhash_clusters(ds, DedupConfig(), num_partitions=2).to_pandas()
        results.append(dict(zip(table["id"], table["cluster_id"])))
    assert results[0] == results[1]
    clusters = results[0]
    for a, b in pairs:  # every planted pair is one cluster, represented by the original
        assert clusters.get(a) == a and clusters.get(b) == a
    assert all(clusters[f"doc-01-chain{i}"] == "doc-01" for i in (1, 2, 3))
    assert all(clusters[f"tpl-{i:02d}"] == "tpl-00" for i in range(40))
    planted = {doc for pair in pairs for doc in pair} | {"doc-01", *(f"doc-01-chain{i}" for i in (1, 2, 3))}
    assert set(clusters) == planted | {f"tpl-{i:02d}" for i in range(40)}  # distinct documents are untouched


def test_exact_duplicates_local_path_matches_groupby(ray_session, monkeypatch):
    """The driver-side grouping (small inputs) drops the same documents as the distributed groupby."""
    import ray.data

    from raylm.data import dedup

    rng = random.Random(2)
    rows = [{"id": f"d{i:04d}", "url": f"https://a.example/{i}", "num_chars": i, "content_hash": f"h{rng.randint(0, 60)}"}
            for i in range(300)]
    rng.shuffle(rows)
    docs = ray.data.from_items(rows, override_num_blocks=3).materialize()
    local = sorted(r["id"] for r in dedup.exact_duplicates(docs, 2).take_all())
    monkeypatch.setattr(dedup, "EXACT_LOCAL_ROWS", 0)
    shuffled = sorted(r["id"] for r in dedup.exact_duplicates(docs, 2).take_all())
    assert local == shuffled and len(local) == 300 - len({r["content_hash"] for r in rows})
    assert not dedup.exact_duplicates(docs.limit(0).materialize(), 2).take_all()
