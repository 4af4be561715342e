"""Each FineWeb filter drops what it should, with a stable snake_case reason (no Ray needed)."""

from __future__ import annotations

import pytest

from raylm.config import DataConfig, FilterConfig
from raylm.data.clean import Cleaner, content_hash
from raylm.data.filters import snake_case

PROSE = """The history of the printing press is a story about how ideas travel. Before movable type, books were copied by hand, which made them rare and expensive. A single monastery might spend years producing one volume, and most people never owned a book at all.

When Johannes Gutenberg built his press in the middle of the fifteenth century, the cost of making a book fell sharply. Printers in many cities copied his design within a few decades. They printed bibles, grammars, almanacs and pamphlets, and they sold them to a growing class of readers.

The effects reached far beyond the workshop. Scholars could compare identical copies of a text, which made it easier to correct errors and to build on the work of others. Merchants used printed forms and tables. Governments printed laws so that everyone could read the same words.

Historians still argue about how quickly these changes happened and which of them mattered most. Some point to the spread of literacy, while others stress the new speed at which arguments could move from one country to another. Either way, the press changed the way people learned."""

GERMAN = ("Die Geschichte des Buchdrucks ist eine Geschichte darüber, wie sich Ideen verbreiten. Vor der "
          "Erfindung der beweglichen Lettern wurden Bücher von Hand abgeschrieben, was sie selten und teuer "
          "machte. Ein Kloster brauchte oft Jahre für einen einzigen Band. ") * 4


@pytest.fixture(scope="module")
def cleaner() -> Cleaner:
    return Cleaner(DataConfig())


def clean(cleaner, text=None, url="https://example.org/page", html=None, reason=None):
    return cleaner.clean_one({"id": "doc-1", "url": url, "html": html, "text": text, "reason": reason})


def no_punctuation_lines(text: str) -> str:
    sentences = [s.strip().rstrip(".") for s in text.replace("\n\n", " ").split(". ") if s.strip()]
    return "\n".join(sentences)


def test_good_prose_passes_every_filter(cleaner):
    out = clean(cleaner, PROSE)
    assert (out["step"], out["reason"]) == (None, None)
    assert out["language_score"] > 0.65
    # C4QualityFilter rewrites the text line by line (blank lines go), as in FineWeb
    assert out["text"] == PROSE.replace("\n\n", "\n") and out["num_chars"] == len(out["text"])
    assert out["content_hash"] == content_hash(out["text"].upper().replace(" ", "  "))


@pytest.mark.parametrize("case, text, url, step, reason", [
    ("blocklisted domain", PROSE, "https://www.0-porno.com/history", "url_filter", "domain"),
    ("not English", GERMAN, None, "language", "not_en"),
    ("repeated lines", "\n".join(["Buy cheap watches online today at the best price."] * 30), None,
     "gopher_repetition", "dup_line_frac"),
    ("bullet list", "\n".join("- " + line for line in PROSE.replace(". ", ".\n").splitlines() if line), None,
     "gopher_quality", "gopher_too_many_bullets"),
    ("mostly numbers", " ".join(w + " 1234" if i % 2 == 0 else w for i, w in enumerate(PROSE.split(" "))), None,
     "gopher_quality", "gopher_below_alpha_threshold"),
    ("javascript-ish curly bracket", PROSE.replace("almanacs and", "almanacs {and}"), None, "c4", "curly_bracket"),
    ("too few sentences", " ".join(PROSE.split()[:120]).replace(".", ","), None, "c4", "too_few_sentences"),
    ("lines without punctuation", no_punctuation_lines(PROSE), None, "fineweb_quality", "line_punct_ratio"),
])
def test_filter_drops_with_reason(cleaner, case, text, url, step, reason):
    out = clean(cleaner, text, url=url or "https://example.org/page")
    assert (out["step"], out["reason"]) == (step, reason), case
    assert out["text"] is None  # dropped documents carry no text forward


def test_read_failures_are_logged_not_filtered(cleaner):
    out = clean(cleaner, reason="non_html")
    assert (out["step"], out["reason"]) == ("read", "non_html")


def test_html_is_extracted_before_filters(cleaner):
    paragraphs = "".join(f"<p>{p}</p>" for p in PROSE.split("\n\n"))
    html = f"<html><body><nav><a href='/'>Home</a> | <a href='/about'>About</a></nav><article>{paragraphs}" \
           f"</article><footer>Copyright 2024</footer></body></html>"
    out = clean(cleaner, html=html)
    assert out["step"] is None
    assert "Gutenberg" in out["text"] and "Copyright 2024" not in out["text"]
    empty = clean(cleaner, html="<html><body><script>var x = 1;</script></body></html>")
    assert (empty["step"], empty["reason"]) == ("extract", "no_text_extracted")


def test_thresholds_come_from_config():
    strict = Cleaner(DataConfig(filters=FilterConfig(gopher_min_doc_words=1000), extractor="resiliparse"))
    out = clean(strict, PROSE)
    assert (out["step"], out["reason"]) == ("gopher_quality", "gopher_short_doc")


def test_reasons_are_snake_case():
    assert snake_case("< 3 paragraphs", "x") == "3_paragraphs"
    assert snake_case("dup_line_frac", "x") == "dup_line_frac"
    assert snake_case(None, "c4_failed") == "c4_failed"


def test_pii_scrub_of_a_document_does_not_depend_on_the_documents_before_it():
    import pyarrow as pa

    from raylm.config import PiiConfig
    from raylm.data.pipeline import scrub_pii

    doc = "Mail admin@corp.io or ping 8.8.8.8 and 1.1.1.1; section 10.0.0.1 is private."
    alone = scrub_pii(pa.table({"text": [doc]}), PiiConfig()).column("text").to_pylist()
    after = scrub_pii(pa.table({"text": ["x@y.org at 9.9.9.9", doc]}), PiiConfig()).column("text").to_pylist()
    assert alone[0] == after[1]
    assert "admin@corp.io" not in alone[0] and "8.8.8.8" not in alone[0] and "1.1.1.1" not in alone[0]
    assert "10.0.0.1" in alone[0]  # not a public address: kept


def test_word_splitting_does_not_import_torch():
    """A cleaning actor imports spaCy for word splitting; thinc would import torch with it (1.4-1.7 s of CPU
    per actor). Checked in a fresh interpreter: this test session has torch imported already."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from raylm.data.filters import CachedSpacyTokenizer\n"
              "words = CachedSpacyTokenizer('en').word_tokenize(\"It's a test-case (really).\")\n"
              "assert words == ['It', \"'s\", 'a', 'test', '-', 'case', '(', 'really', ')', '.'], words\n"
              "assert 'spacy' in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
              "import torch\n"
              "print(torch.tensor([1, 2]).sum().item())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "3"


def test_extraction_equals_trafilatura_with_its_own_element_classes():
    """extract_text's parser takes element classes from lxml's C lookup: the same text as lxml.html's own
    lookup on every page of the sample crawl (trafilatura's dedup cache emptied before each pass)."""
    import gzip

    import trafilatura.deduplication
    from lxml.html import HtmlElementClassLookup
    from trafilatura.utils import HTML_PARSER

    from raylm.config import SAMPLE_CRAWL
    from raylm.data.clean import _trafilatura_extract, extract_text
    from raylm.data.readers import iter_warc

    pages = []
    for path in sorted(SAMPLE_CRAWL.glob("*.warc.gz")):
        with gzip.open(path) as stream:
            pages += [row["html"] for row in iter_warc(stream, str(path)) if row["html"]]
    _trafilatura_extract()  # raylm's lookup in place
    trafilatura.deduplication.LRU_TEST.clear()
    ours = [extract_text(html) for html in pages]
    HTML_PARSER.set_element_class_lookup(HtmlElementClassLookup())
    try:
        trafilatura.deduplication.LRU_TEST.clear()
        stock = [extract_text(html) for html in pages]
    finally:
        _trafilatura_extract.cache_clear()
        _trafilatura_extract()
    assert len(pages) > 300 and sum(bool(text) for text in ours) > 300
    assert ours == stock
