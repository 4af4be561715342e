"""Byte-level BPE: trained on the cleaned corpus with Hugging Face `tokenizers`.

GPT-4-style pre-tokenization (the cl100k split regex, digits in groups of up to
three), a byte-level alphabet so that any UTF-8 string round-trips, and special
tokens reserved for the conversation protocol and tools. Plain text never yields a
special-token id: `encode_special_tokens` makes "<|im_start|>" in a document just
characters; only the chat renderer (raylm/tokenizer/chat.py, next issue) inserts
special ids, by id.

    tok = train_bpe(texts, vocab_size=4096)
    save(tok, "runs/tiny/tokenizer")          # tokenizer.json + tokenizer_config.json
    ids = encode(tok, "Hello world")
    transformers.PreTrainedTokenizerFast.from_pretrained("runs/tiny/tokenizer")  # the same tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

GPT4_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>", "<|tool_call|>", "<|/tool_call|>",
                  "<|tool_result|>", "<|/tool_result|>", "<|pad|>"]


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Special tokens take the first ids, the 256 byte symbols the next, then the merges in order."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.encode_special_tokens = True
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def save(tok: Tokenizer, folder: Path) -> None:
    """tokenizer.json plus the config files transformers reads (PreTrainedTokenizerFast)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                       "normalized": False, "single_word": False} for t in SPECIAL_TOKENS}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
              "unk_token": None, "pad_token": "<|pad|>", "model_max_length": 1_000_000,
              "clean_up_tokenization_spaces": False, "added_tokens_decoder": added,
              "split_special_tokens": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOS, "eos_token": EOS, "pad_token": "<|pad|>"}, indent=2))


def load(path: Path) -> Tokenizer:
    """From a folder holding tokenizer.json, or from the file itself."""
    path = Path(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    tok.encode_special_tokens = True
    return tok


def byte_ranks(tok: Tokenizer) -> dict[bytes, int]:
    """The vocabulary as tiktoken's mergeable ranks (bytes -> rank), special tokens left out.

    Ranks are token ids: the trainer numbers merged tokens in the order it learned
    them, which is the priority tiktoken merges by.
    """
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    specials = set(SPECIAL_TOKENS)
    return {bytes(byte_of[ch] for ch in token): rank
            for token, rank in tok.get_vocab().items() if token not in specials}


def fast_encoder(tok: Tokenizer):
    """A tiktoken Encoding with exactly this tokenizer's merges: the same ids, ~3x faster to encode.

    The corpus is sharded with it (benchmarks/tokenizer.py measures both, and the
    tokenizer step checks that they agree on held-out text); special tokens are not
    registered, so plain text can never produce them.
    """
    import tiktoken

    return tiktoken.Encoding("raylm", pat_str=GPT4_SPLIT, mergeable_ranks=byte_ranks(tok), special_tokens={})


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> float:
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    num_tokens = sum(len(ids) for ids in encode_batch(tok, texts))
    return num_bytes / max(1, num_tokens)
