"""The tokenizer step: train byte-level BPE on the data step's corpus, then shard the corpus.

    raylm tokenizer                     # <run>/data/kept -> <run>/tokenizer/

Writes tokenizer.json (+ the transformers config files), shards/{train,val}_*.bin
and, in the manifest, bytes per token on held-out text, the shard listing and the
unigram baseline. The BPE trains on the train split only (up to
`tokenizer.max_train_chars` characters of it, as nanochat does), so the val split is
truly held out; the shards are written by Ray tasks, and the baseline comes from
the token counts they return, so the driver never holds the corpus.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.dataset as pads

from raylm.config import TokenizerConfig
from raylm.runs import Work
from raylm.storage import Storage
from raylm.tokenizer.bpe import bytes_per_token, encode_batch, fast_encoder, save, train_bpe
from raylm.tokenizer.shards import is_val, write_token_shards

HELD_OUT_CHARS = 2_000_000  # enough text for bytes/token and the encoder check


def _texts(storage: Storage, kept_rel: str, val_fraction: float, want_val: bool, max_chars: int):
    """Texts of one split, streamed from storage, until `max_chars` characters."""
    files = [storage.path(f"{kept_rel}/{n}") for n in sorted(storage.files(kept_rel)) if n.endswith(".parquet")]
    total = 0
    for batch in pads.dataset(files, format="parquet", filesystem=storage.fs).to_batches(columns=["id", "text"]):
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if is_val(doc_id, val_fraction) == want_val:
                yield text
                total += len(text)
                if total >= max_chars:
                    return


def unigram_bits_per_byte(train_counts: np.ndarray, val_counts: np.ndarray, val_bytes: int) -> float:
    """Cross-entropy of the val tokens under the train unigram distribution (add-one), in bits per byte.

    The baseline a trained model must beat by a wide margin.
    """
    counts = train_counts.astype(np.float64) + 1.0
    log_probs = np.log2(counts / counts.sum())
    return float(-(val_counts * log_probs).sum() / max(1, val_bytes))


def run_tokenizer(cfg: TokenizerConfig, storage: Storage, kept_rel: str, data_metrics: dict, work: Work) -> dict:
    print(f"[tokenizer] training byte-level BPE, vocab {cfg.vocab_size}, on {storage.uri(kept_rel)}", flush=True)
    tok = train_bpe(_texts(storage, kept_rel, cfg.val_fraction, False, cfg.max_train_chars),
                    cfg.vocab_size, cfg.min_frequency)
    save(tok, work.local)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        work.publish(name)  # the shard tasks read it from storage
    held_out = list(_texts(storage, kept_rel, cfg.val_fraction, True, HELD_OUT_CHARS))
    bpt = bytes_per_token(tok, held_out) if held_out else math.nan
    if fast_encoder(tok).encode_ordinary_batch(held_out) != encode_batch(tok, held_out):
        raise RuntimeError("the tiktoken encoder disagrees with the trained tokenizer on held-out text")
    print(f"[tokenizer] {tok.get_vocab_size()} tokens; {bpt:.2f} bytes/token on {len(held_out)} held-out documents",
          flush=True)
    tokens = data_metrics["kept_characters"] / (bpt if bpt == bpt else 4.0)
    num_shards = max(1, math.ceil(tokens / cfg.shard_tokens))
    print(f"[tokenizer] tokenizing the corpus into {num_shards} shards on Ray Data (documents grouped by a hash "
          f"of their id)", flush=True)
    shards, counts = write_token_shards(storage, kept_rel, f"{work.rel}/tokenizer.json", f"{work.rel}/shards",
                                        num_shards, cfg.val_fraction)
    if not shards["val"]["tokens"]:
        raise ValueError("the val split is empty: raise tokenizer.val_fraction or add documents")
    train_counts = counts["train"]
    unigram = unigram_bits_per_byte(train_counts, counts["val"], shards["val"]["bytes"])
    top = [(int(i), int(train_counts[i])) for i in np.argsort(train_counts)[::-1][:5]]
    print(f"[tokenizer] train {shards['train']['tokens']:,} tokens in {len(shards['train']['shards'])} shards, "
          f"val {shards['val']['tokens']:,}; unigram baseline {unigram:.3f} bits/byte on val", flush=True)
    return {"vocab_size": tok.get_vocab_size(), "held_out_bytes_per_token": bpt,
            "unigram_val_bits_per_byte": unigram, "shards": shards,
            "most_common_tokens": [[tok.id_to_token(i), n] for i, n in top]}
