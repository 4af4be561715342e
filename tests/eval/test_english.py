"""The held-out English measure: truly held out, an exact control, and a ratio that sees word order."""

from __future__ import annotations

import gzip
import re

import numpy as np
import torch

from raylm.eval.english import HELDOUT_EN, Windows, english_bpb, paragraphs, shuffle_words


def test_control_has_the_same_words_and_bytes_in_another_order():
    texts = paragraphs()
    assert len(texts) >= 150 and sum(map(len, texts)) >= 40_000
    control = shuffle_words(texts)
    assert control == shuffle_words(texts)  # seeded
    assert [len(t.encode()) for t in control] == [len(t.encode()) for t in texts]
    assert all(sorted(c.split()) == sorted(t.split()) for c, t in zip(control, texts))
    assert sum(c != t for c, t in zip(control, texts)) == len(texts)


def test_heldout_text_is_not_in_the_sample_crawl(sample_files):
    from raylm.data.clean import extract_text
    from raylm.data.readers import iter_warc

    crawl = []
    for path in sample_files:
        with gzip.open(path) as stream:
            crawl += [extract_text(r["html"], "resiliparse") for r in iter_warc(stream, str(path)) if r["html"]]
    crawl_text = " ".join(" ".join(page.split()) for page in crawl)
    # every 8-word run of the held-out text that the crawl also holds: only common phrases may repeat
    shared = set()
    for text in paragraphs():
        words = text.split()
        shared |= {" ".join(words[i:i + 8]) for i in range(0, len(words) - 7, 4)
                   if " ".join(words[i:i + 8]) in crawl_text}
    assert len(shared) < 10, sorted(shared)[:10]
    assert "Longum iter est per praecepta" in HELDOUT_EN.read_text() and "Longum iter" not in crawl_text


def test_word_order_ratio_falls_only_for_a_model_that_learned_the_order(sample_tokenizer):
    """An untrained model scores the text and its control alike; one trained on the text does far better on it."""
    from raylm.model.gpt import GPT, GPTConfig
    from raylm.tokenizer.bpe import load

    folder = sample_tokenizer.storage.local(sample_tokenizer.rel)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128))
    before = english_bpb(model, folder, seq_len=64)
    assert abs(before["english_word_order"] - 1) < 0.02
    assert before["english_bpb"] > 2.5  # about log2(1024) = 10 bits per token, over 3-4 bytes per token

    tok = load(folder)
    stream = np.array([t for e in tok.encode_batch(paragraphs(), add_special_tokens=False) for t in e.ids])
    rows = torch.from_numpy(Windows(stream, 64).rows.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        batch = rows[torch.randint(len(rows), (16,), generator=torch.Generator().manual_seed(step))]
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = english_bpb(model.eval(), folder, seq_len=64)
    assert after["english_bpb"] < 0.7 * before["english_bpb"]
    assert after["english_word_order"] < 0.9, after
    assert re.fullmatch(r"[\d.]+", f"{after['english_shuffled_bpb']:.3f}")
