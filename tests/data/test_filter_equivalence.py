"""raylm's faster filter pieces decide exactly as datatrove's own classes, on real pages.

Texts: every third page of the bundled sample crawl (prose, code-heavy Python docs,
other languages, duplicates, link lists), and large pages: every fifteenth page of the
large-page crawl when benchmarks/large_pages.py has built it, else the sample's pages
joined six at a time (10-20 K characters each, the size where the n-gram statistics
differ most). They are extracted with resiliparse to stay quick: which extractor made a
text does not matter to the filters.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import get_filter_result
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.utils.word_tokenizers import load_word_tokenizer

from raylm.config import SAMPLE_CRAWL, FilterConfig
from raylm.data.clean import extract_text
from raylm.data.filters import TEXT_STEPS, CachedSpacyTokenizer, WordNgrams, build_filters
from raylm.data.url_filter import offline_url_filter
from raylm.data.readers import iter_warc

LARGE_CRAWL = Path(__file__).parents[2] / "benchmarks" / "out" / "large-crawl"


def crawl_rows(folder: Path, every: int = 1) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.warc.gz")):
        with gzip.open(path) as stream:
            rows += list(iter_warc(stream, str(path)))
    return rows[::every]


def extracted(rows: list[dict]) -> list[str]:
    return [t for t in (extract_text(r["html"], "resiliparse") for r in rows if r["html"]) if t]


@pytest.fixture(scope="module", params=["sample", "large"])
def texts(request) -> list[str]:
    if request.param == "sample":
        return extracted(crawl_rows(SAMPLE_CRAWL, every=3))
    if LARGE_CRAWL.is_dir():
        return extracted(crawl_rows(LARGE_CRAWL, every=15))
    pages = extracted(crawl_rows(SAMPLE_CRAWL, every=5))
    return ["\n\n".join(pages[i:i + 6]) for i in range(0, len(pages), 6)]


def decide(filter_, text: str) -> tuple:
    doc = Document(text=text, id="x")
    keep, reason = get_filter_result(filter_.filter(doc))
    return keep, reason, doc.text  # C4 rewrites the text of a kept document


_PROSE = "The river runs to the sea and the hills have seen it with patience. " * 8
# texts made to fail each of Gopher's quality rules (real pages seldom reach most of them)
RULE_TEXTS = [
    "Hello world, this is short.",
    _PROSE + " #tag" * 60,
    _PROSE + " ..." * 30 + " \u2026" * 30,
    "\n".join(f"- item {i} of the list and the rest" for i in range(60)),
    "\n".join(f"{_PROSE[:60]} ..." for _ in range(20)),
    " ".join(["12", "34.5", "%", "-", "(7)"] * 40) + " the and of",
    " ".join(["apple", "banana", "cherry", "quince", "melon"] * 20),
    " ".join(["internationalization", "characterization"] * 40) + " the and",
    " ".join(["a", "b", "to", "of"] * 40),
    "!!! ... ,,, ;;; --- " * 30 + _PROSE,
]


def test_text_filters_decide_as_datatrove(texts):
    """Each text filter on every page, not only those reaching it in the chain: same decision, reason, text."""
    fast, stock = build_filters(FilterConfig()), build_filters(FilterConfig(), fast=False)
    reasons = {decide(stock["gopher_quality"], text)[1] for text in RULE_TEXTS}
    assert len(reasons) >= 8, reasons  # the rule texts do reach the rules
    for text in texts + RULE_TEXTS:
        for step in TEXT_STEPS[1:]:  # the language filter is the same class on both sides
            assert decide(fast[step], text) == decide(stock[step], text), (step, text[:200])


# whitespace of every kind (str.split's and spaCy's alike), spaCy's special cases and affixes. Not "IS_ALPHA":
# whether spaCy fails on it (and datatrove retries without it) depends on the state of spaCy's string store
ODD_TEXTS = ["", " \n\t ", "Hello,world! e.g. U.S.A. don't  can't\xa0ok", "a\u2003b\u3000c\x1cd\x85e\x0bf",
             ":) (-: http://example.org/a?b=c, 3.5kg $10.00... \"quoted\" (x)"]


def test_tokenizer_gives_datatrove_tokens(texts):
    stock = load_word_tokenizer("en")
    small = CachedSpacyTokenizer("en", max_vocab=2_000)  # pipeline and span cache rebuilt many times on the way
    for text in texts + ODD_TEXTS:
        assert small.word_tokenize(text) == stock.word_tokenize(text), text[:200]
    for text in texts[:20]:
        assert small.span_tokenize(text) == stock.span_tokenize(text)


def test_word_ngrams_match_datatrove():
    """Word lists built to collide: "".join makes ("ab", "c") and ("a", "bc") one n-gram in datatrove."""
    rng = random.Random(0)
    cases = [[], ["a"], ["ab", "c", "a", "bc"] * 5, ["x"] * 40, ["é", "\U0001f600", "ab"] * 9]
    for _ in range(500):
        vocab = ["a", "b", "ab", "ba", "aa", "bab", "x", "é"][: rng.randint(2, 8)]
        cases.append([rng.choice(vocab) for _ in range(rng.randint(0, 80))])
    for words in cases:
        ngrams = WordNgrams(words)
        for n in (2, 3, 4):
            if len(words) >= n:
                assert ngrams.top_duplicate_chars(n) == find_top_duplicate(get_n_grams(words, n)), (words, n)
        for n in range(5, 11):
            assert ngrams.all_duplicate_chars(n) == find_all_duplicate(words, n), (words, n)


def test_url_filter_decides_as_datatrove():
    fast, stock = offline_url_filter(), offline_url_filter(fast=False)
    domains = fast.block_listed_domains  # sorted: take about 90, spread over the list
    blocked = [domains[i] for i in range(0, len(domains), 50_000)]
    urls = [r["url"] for r in crawl_rows(SAMPLE_CRAWL) if r["url"]]
    urls += [f"https://{d}/page" for d in blocked] + [f"http://www.{d}/a?b=1" for d in blocked]
    urls += ["http://127.0.0.1/x", "https://localhost/", "https://a.b.example.co.uk/p", "https://xn--bcher-kva.example/"]
    decisions = [(fast.filter(Document("", "x", metadata={"url": u})),
                  stock.filter(Document("", "x", metadata={"url": u}))) for u in urls]
    assert all(a == b for a, b in decisions)
    assert sum(b is not True for _, b in decisions) >= len(blocked)  # the blocklist is in play
