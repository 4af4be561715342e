"""Held-out English: does the model know word order, or only word frequencies?

    english = english_bpb(model, folder, seq_len=256)
    english["english_bpb"], english["english_shuffled_bpb"], english["english_word_order"]

The text is raylm/sample/heldout_en.txt (real documentation from outside the sample
crawl; raylm/sample/build_heldout.py builds it). The control is the same text with
the words of each paragraph shuffled (seeded), so both hold exactly the same words
and bytes and differ only in order. `english_word_order` is the ratio of the two
bits per byte: 1.0 for a model of word frequencies alone, lower the more the model
has learned of how English strings words together (lower is better).

Each paragraph is a document as in the token shards (<|endoftext|> first), the
stream is cut into non-overlapping windows of seq_len + 1 tokens, and bits per
byte count every predicted token against the bytes it stands for
(raylm/train/loop.py: evaluate, the same yardstick as val_bpb).
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

HELDOUT_EN = Path(__file__).resolve().parents[1] / "sample" / "heldout_en.txt"


def paragraphs(path: Path = HELDOUT_EN) -> list[str]:
    return [" ".join(p.split()) for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def shuffle_words(texts: list[str], seed: int = 0) -> list[str]:
    """The control: each paragraph's words in a seeded random order, joined by single spaces."""
    rng, out = random.Random(seed), []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


class Windows:
    """Non-overlapping windows of a token stream, in order: the `stream` interface of loop.evaluate."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.rows = tokens[: len(tokens) // (seq_len + 1) * (seq_len + 1)].reshape(-1, seq_len + 1)
        self.num_sequences = len(self.rows)

    def batch(self, first: int, size: int):
        return torch.from_numpy(self.rows[first:first + size].astype(np.int64)), None


def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int, token_bytes: torch.Tensor,
                  batch_size: int = 16) -> float:
    from raylm.tokenizer.bpe import EOS
    from raylm.train.loop import evaluate

    eos = tokenizer.token_to_id(EOS)
    stream = np.array([t for enc in tokenizer.encode_batch(texts, add_special_tokens=False)
                       for t in (eos, *enc.ids)], dtype=np.int64)
    windows = Windows(stream, seq_len)
    if windows.num_sequences == 0:
        raise ValueError(f"held-out English: {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    batches = -(-windows.num_sequences // batch_size)
    return evaluate(model, windows, token_bytes, batches, batch_size, torch.device("cpu"), nullcontext())["val_bpb"]


def english_bpb(model, folder: Path, seq_len: int, path: Path = HELDOUT_EN) -> dict[str, float]:
    """Bits per byte of the checkpoint in `folder` on the held-out text and on its shuffled-words control."""
    from raylm.tokenizer.bpe import load
    from raylm.train.pretrain import token_byte_lengths

    tokenizer = load(folder)
    token_bytes = torch.tensor(token_byte_lengths(folder), dtype=torch.int64)
    seq_len = min(seq_len, model.cfg.max_seq_len - 1)
    texts = paragraphs(path)
    real = bits_per_byte(model, tokenizer, texts, seq_len, token_bytes)
    shuffled = bits_per_byte(model, tokenizer, shuffle_words(texts), seq_len, token_bytes)
    return {"english_bpb": real, "english_shuffled_bpb": shuffled, "english_word_order": real / shuffled}
