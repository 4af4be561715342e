"""Byte-level BPE: round trips, no special ids from plain text, parity with transformers and tiktoken."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylm.tokenizer.bpe import (GPT4_SPLIT, SPECIAL_TOKENS, byte_ranks, bytes_per_token, decode, encode, load,
                                 save, special_ids, train_bpe)
from tests.data.test_filters import GERMAN, PROSE

CORPUS = [PROSE, GERMAN, "def f(x):\n    return {'a': 1, 'b': [2, 3]}\n", "Prices: 12,345.67 EUR; 99% off!"] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    save(train_bpe(CORPUS, vocab_size=600, min_frequency=1), folder)
    return load(folder), folder


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_round_trips_and_never_yields_special_ids(tok, text):
    tokenizer, _ = tok
    ids = encode(tokenizer, text)
    assert decode(tokenizer, ids) == text
    assert not set(ids) & set(special_ids(tokenizer).values())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(SPECIAL_TOKENS + ["hello", " ", "\n", "<|", "|>"]), max_size=12))
def test_special_token_text_is_plain_text(tok, parts):
    tokenizer, _ = tok
    text = "".join(parts)
    ids = encode(tokenizer, text)
    assert decode(tokenizer, ids) == text and not set(ids) & set(special_ids(tokenizer).values())


def test_specials_reserved_and_compression(tok):
    tokenizer, _ = tok
    assert list(special_ids(tokenizer).values()) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.get_vocab_size() == 600
    assert bytes_per_token(tokenizer, [PROSE]) > 2.5  # merges learned: far better than 1 byte per token


def test_transformers_and_tiktoken_give_the_same_ids(tok):
    import tiktoken
    from transformers import PreTrainedTokenizerFast

    tokenizer, folder = tok
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    enc = tiktoken.Encoding("raylm", pat_str=GPT4_SPLIT, mergeable_ranks=byte_ranks(tokenizer), special_tokens={})
    for text in [*CORPUS[:4], "Mixed: <|im_start|> caf\u00e9 \u65e5\u672c 123456 \U0001f389"]:
        ids = encode(tokenizer, text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert enc.encode_ordinary(text) == ids
    assert hf.eos_token == "<|endoftext|>"
