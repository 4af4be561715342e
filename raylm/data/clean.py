"""The per-document cleaning pass: URL blocklist, main-text extraction, FineWeb filters.

`Cleaner` is a plain callable over a pyarrow batch in the reader's schema; the
pipeline runs it on a Ray Data actor pool (its set-up loads the URL blocklists and
the language model once per actor). Without Ray:

    cleaner = Cleaner(DataConfig())
    out = cleaner(pa.table({"id": [...], "url": [...], "html": [...], "text": [None], "reason": [None]}))

Output columns: id, url, text, step, reason, language_score, num_chars, content_hash.
`step`/`reason` are None for a kept document; otherwise the step that dropped it
("read", "url_filter", "extract", "language", ...) and its snake_case reason.

Extraction: trafilatura with FineWeb's settings (favor_precision, no comments,
deduplicate), or resiliparse (main_content) which is several times faster; the
choice is `data.extractor`, benchmarks/data_pipeline.py measures both.
"""

from __future__ import annotations

import functools
import hashlib
import re

import pyarrow as pa
from datatrove.data import Document

from raylm.config import DataConfig
from raylm.data.filters import URL_STEP, build_filters, check, run_filters
from raylm.data.url_filter import offline_url_filter

OUT_SCHEMA = pa.schema([
    ("id", pa.string()), ("url", pa.string()), ("text", pa.string()),
    ("step", pa.string()), ("reason", pa.string()), ("language_score", pa.float32()),
    ("num_chars", pa.int64()), ("content_hash", pa.string()),
])
_SPACES = re.compile(r"\s+")


def extract_text(html: str, extractor: str = "trafilatura") -> str:
    """Main text of an HTML page ('' when there is none)."""
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(html, main_content=True, alt_texts=False).strip()
    extract = _trafilatura_extract()
    return (extract(html, favor_precision=True, include_comments=False, deduplicate=True) or "").strip()


@functools.cache
def _trafilatura_extract():
    """trafilatura.extract, its HTML parser's element classes chosen by lxml's C lookup.

    lxml makes a Python proxy for each element a caller touches, and the parser of lxml.html (which
    trafilatura uses) asks a Python method which class each proxy gets: thousands of calls per page
    while trafilatura's XPath rules run. lxml's ElementDefaultClassLookup hands out the same classes
    (HtmlElement, HtmlComment, ...) from C; only the form-control subclasses (FormElement, InputElement,
    ...) are not made, and trafilatura never calls their extra methods. The extracted text is the same
    (tests/data/test_filters.py compares it on every page of the sample crawl), at about 5% less CPU.
    """
    import trafilatura
    from lxml import etree
    from lxml.html import HtmlComment, HtmlElement, HtmlEntity, HtmlProcessingInstruction
    from trafilatura.utils import HTML_PARSER

    HTML_PARSER.set_element_class_lookup(etree.ElementDefaultClassLookup(
        element=HtmlElement, comment=HtmlComment, pi=HtmlProcessingInstruction, entity=HtmlEntity))
    return trafilatura.extract


def content_hash(text: str) -> str:
    """Exact-dedup key: case and whitespace do not make two documents different."""
    return hashlib.sha1(_SPACES.sub(" ", text.lower()).strip().encode()).hexdigest()


class Cleaner:
    """URL blocklist -> extraction -> FineWeb filters for one batch of documents."""

    def __init__(self, cfg: DataConfig):
        self.extractor = cfg.extractor
        self.url_filter = offline_url_filter() if cfg.filters.url_blocklist else None
        self.filters = build_filters(cfg.filters)

    def clean_one(self, row: dict) -> dict:
        out = {"id": row["id"], "url": row["url"], "text": None, "step": None, "reason": None,
               "language_score": None, "num_chars": 0, "content_hash": None}
        if row["reason"]:
            out.update(step="read", reason=row["reason"])
            return out
        doc = Document(text=row["text"] or "", id=row["id"], metadata={"url": row["url"]})
        if self.url_filter is not None and row["url"]:
            reason = check(self.url_filter, doc, URL_STEP)
            if reason:
                out.update(step=URL_STEP, reason=reason)
                return out
        if row["html"] is not None:
            try:
                doc.text = extract_text(row["html"], self.extractor)
            except Exception as err:  # a parser crash on one page must not kill the batch
                out.update(step="extract", reason=f"extractor_error_{type(err).__name__.lower()}")
                return out
            if not doc.text:
                out.update(step="extract", reason="no_text_extracted")
                return out
        out["num_chars"] = len(doc.text)
        step, reason = run_filters(self.filters, doc)
        out.update(step=step, reason=reason, language_score=doc.metadata.get("language_score"))
        if step is None:
            out.update(text=doc.text, num_chars=len(doc.text), content_hash=content_hash(doc.text))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.clean_one(row) for row in batch.to_pylist()], schema=OUT_SCHEMA)
