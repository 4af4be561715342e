"""Tokenizer encoding throughput: HF tokenizers vs tiktoken, both with raylm's trained merges.

Both encode the same documents (the kept corpus of a finished run, repeated to a
few MB) with the same vocabulary and merges: tiktoken's Encoding is built from the
trained tokenizer's byte ranks, and the two must give identical ids (checked).
Batch encoding on all cores for both (tokenizers' Rust thread pool; tiktoken's
encode_ordinary_batch thread pool), plus one document at a time.
raylm trains with HF tokenizers and shards the corpus with the tiktoken encoder
(raylm.tokenizer.bpe.fast_encoder), because this benchmark found it the faster.

    python benchmarks/tokenizer.py --run runs/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.dataset as pads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raylm.tokenizer.bpe import GPT4_SPLIT, byte_ranks, encode_batch, load  # noqa: E402


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--min-mb", type=float, default=8.0)
    args = parser.parse_args()

    import tiktoken

    tok = load(args.run / "tokenizer")
    texts = pads.dataset(str(args.run / "data" / "kept"), format="parquet").to_table(columns=["text"]).column(
        "text").to_pylist()
    size = sum(len(t.encode()) for t in texts)
    texts = texts * max(1, int(args.min_mb * 1e6 / size) + 1)
    num_bytes = sum(len(t.encode()) for t in texts)
    enc = tiktoken.Encoding("raylm", pat_str=GPT4_SPLIT, mergeable_ranks=byte_ranks(tok), special_tokens={})

    results = {}
    hf_s, hf_ids = timed(lambda: encode_batch(tok, texts))
    tt_s, tt_ids = timed(lambda: enc.encode_ordinary_batch(texts, num_threads=os.cpu_count()))
    assert hf_ids == tt_ids, "raylm and tiktoken disagree"
    num_tokens = sum(len(x) for x in hf_ids)
    results["all_cores"] = {"raylm_mb_per_s": num_bytes / hf_s / 1e6, "tiktoken_mb_per_s": num_bytes / tt_s / 1e6,
                            "ratio": tt_s / hf_s}
    # one document at a time: neither library parallelizes a single encode call
    one = texts[: max(1, len(texts) // 4)]
    one_bytes = sum(len(t.encode()) for t in one)
    hf1_s, _ = timed(lambda: [tok.encode(t, add_special_tokens=False).ids for t in one])
    tt1_s, _ = timed(lambda: [enc.encode_ordinary(t) for t in one])
    results["one_thread"] = {"raylm_mb_per_s": one_bytes / hf1_s / 1e6, "tiktoken_mb_per_s": one_bytes / tt1_s / 1e6,
                             "ratio": tt1_s / hf1_s}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs",
              "corpus_mb": num_bytes / 1e6, "tokens": num_tokens, "bytes_per_token": num_bytes / num_tokens,
              "vocab_size": tok.get_vocab_size(), "identical_ids": True, **results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
