"""The tokenizer step: train byte-level BPE on the data step's corpus, then shard the corpus.

    raylm tokenizer                     # runs/<name>/data/kept -> runs/<name>/tokenizer/

Writes tokenizer.json (+ the transformers config files), shards/{train,val}_NNNNN.bin
and, in the manifest, bytes per token on held-out text and the token counts.
The BPE trains on the train split only, so the val split is truly held out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from raylm.config import TokenizerConfig
from raylm.tokenizer.bpe import bytes_per_token, encode_batch, fast_encoder, save, train_bpe
from raylm.tokenizer.shards import is_val, read_shard, write_token_shards


def _texts(kept_dir: Path, val_fraction: float, want_val: bool):
    for batch in pads.dataset(str(kept_dir), format="parquet").to_batches(columns=["id", "text"]):
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if is_val(doc_id, val_fraction) == want_val:
                yield text


def unigram_bits_per_byte(train_counts: np.ndarray, val: np.ndarray, val_bytes: int) -> float:
    """Cross-entropy of the val tokens under the train unigram distribution (add-one), in bits per byte.

    The baseline a trained model must beat by a wide margin.
    """
    counts = train_counts.astype(np.float64) + 1.0
    log_probs = np.log2(counts / counts.sum())
    return float(-log_probs[val].sum() / max(1, val_bytes))


def run_tokenizer(cfg: TokenizerConfig, kept_dir: Path, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    print(f"[tokenizer] training byte-level BPE, vocab {cfg.vocab_size}, on {kept_dir}", flush=True)
    tok = train_bpe(_texts(kept_dir, cfg.val_fraction, want_val=False), cfg.vocab_size, cfg.min_frequency)
    save(tok, out_dir)
    held_out = list(_texts(kept_dir, cfg.val_fraction, want_val=True))
    bpt = bytes_per_token(tok, held_out) if held_out else math.nan
    if fast_encoder(tok).encode_ordinary_batch(held_out) != encode_batch(tok, held_out):
        raise RuntimeError("the tiktoken encoder disagrees with the trained tokenizer on held-out text")
    print(f"[tokenizer] {tok.get_vocab_size()} tokens; {bpt:.2f} bytes/token on {len(held_out)} held-out documents",
          flush=True)
    print("[tokenizer] tokenizing the corpus into shards on Ray Data", flush=True)
    shards = write_token_shards(kept_dir, out_dir, out_dir / "shards", cfg.shard_tokens, cfg.val_fraction)
    if not shards["val"]["tokens"]:
        raise ValueError("the val split is empty: raise tokenizer.val_fraction or add documents")
    train = np.concatenate([read_shard(out_dir / "shards" / s) for s in shards["train"]["shards"]])
    val = np.concatenate([read_shard(out_dir / "shards" / s) for s in shards["val"]["shards"]])
    train_counts = np.bincount(train, minlength=tok.get_vocab_size())
    unigram = unigram_bits_per_byte(train_counts, val, shards["val"]["bytes"])
    top = [(int(i), int(train_counts[i])) for i in np.argsort(train_counts)[::-1][:5]]
    print(f"[tokenizer] train {shards['train']['tokens']:,} tokens, val {shards['val']['tokens']:,}; "
          f"unigram baseline {unigram:.3f} bits/byte on val", flush=True)
    return {"vocab_size": tok.get_vocab_size(), "held_out_bytes_per_token": bpt,
            "unigram_val_bits_per_byte": unigram, "shards": shards,
            "most_common_tokens": [[tok.id_to_token(i), n] for i, n in top]}
