"""The URL blocklist filter of the FineWeb chain, offline and shared across processes.

datatrove's URLFilter would have tldextract fetch the public suffix list: `OfflineURLFilter`
gives it the snapshot tldextract ships (suffix_list_urls=()). Its 4.6 M blocked domains live in
a `SortedStrings` file, sorted once per machine and mapped by every worker, instead of a Python
set built in every worker (2.3 s and about 400 MB each); the decisions are datatrove's
(tests/data/test_filter_equivalence.py).

    url_filter = offline_url_filter()      # lists loaded once, at actor start-up
    url_filter.filter(Document("", "id", metadata={"url": "https://example.org/"}))
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
from datatrove.io import safely_create_file
from datatrove.pipeline.filters import URLFilter
from datatrove.pipeline.filters.url_filter import get_list
from datatrove.utils._import_utils import ASSETS_PATH
from huggingface_hub import cached_assets_path
from tldextract import TLDExtract


class SortedStrings:
    """A set of strings for `in` only: sorted UTF-8 strings in one file, binary-searched in place.

    Built once from a set (a file written under a lock, then reused by every
    process on the machine, which share its pages), opened in no time.
    """

    def __init__(self, path: Path):
        self.blob = np.load(path.with_suffix(".blob.npy"), mmap_mode="r")
        self.offsets = np.load(path.with_suffix(".offsets.npy"), mmap_mode="r")  # string i: blob[offsets[i]:offsets[i + 1]]
        self.size = len(self.offsets) - 1

    @staticmethod
    def write(strings: set[str], path: Path) -> None:
        encoded = sorted(s.encode("utf-8", "surrogatepass") for s in strings)  # byte order = code point order
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        np.save(path.with_suffix(".blob.npy"), np.frombuffer(b"".join(encoded), dtype=np.uint8))
        np.save(path.with_suffix(".offsets.npy"), offsets)

    def _item(self, i: int) -> bytes:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> str:
        return self._item(i).decode("utf-8", "surrogatepass")

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        key = item.encode("utf-8", "surrogatepass")
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self._item(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo < self.size and self._item(lo) == key

    def __len__(self) -> int:
        return self.size


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter, offline, with its domain blocklist in a `SortedStrings` file.

    tldextract gets the public suffix list it ships (suffix_list_urls=()). The lists
    load at the first document (or `download_data()`), as in datatrove; the domains
    are exactly datatrove's set, sorted into a file beside datatrove's unpacked lists
    the first time on a machine. `download_data` is datatrove's (0.10.1) otherwise.
    """

    def __init__(self):
        super().__init__()
        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def download_data(self):
        if self._downloaded or not self.use_integrated_lists:
            return
        download_dir = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")
        file_to_lock = os.path.join(download_dir, "url_filterblacklistsv0_3_0.tar.gz")

        def do_extract():
            with tarfile.open(os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz"), "r:gz") as tar:
                tar.extractall(download_dir)

        safely_create_file(file_to_lock, do_extract)
        sorted_domains = Path(download_dir) / "domains-v0_3_0.sorted"  # the blocklists' version, as above

        def do_sort():
            SortedStrings.write(get_list(download_dir, "domains", set(), do_normalize=False), sorted_domains)

        if self.block_listed_domains:  # extra domains given: datatrove's set
            self.block_listed_domains = get_list(download_dir, "domains", self.block_listed_domains, do_normalize=False)
        else:
            safely_create_file(str(sorted_domains), do_sort)
            self.block_listed_domains = SortedStrings(sorted_domains)
        self.block_listed_url = get_list(download_dir, "urls", self.block_listed_url, do_normalize=False)
        self.banned_words = get_list(ASSETS_PATH, "banned_words.txt", self.banned_words)
        self.banned_subwords = get_list(ASSETS_PATH, "banned_subwords.txt", self.banned_subwords)
        self.soft_banned_words = get_list(ASSETS_PATH, "soft_banned_words.txt", self.soft_banned_words)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True


def offline_url_filter(fast: bool = True, load: bool = True) -> URLFilter:
    """The URL filter, offline: `OfflineURLFilter`, or (fast=False) datatrove's own on tldextract's shipped list.

    load=False leaves the blocklists to be read at the first document, as datatrove
    does: a filter handed to other processes (datatrove's executor pickles its
    pipeline for each task) then does not carry them along.
    """
    if fast:
        url_filter = OfflineURLFilter()
    else:
        url_filter = URLFilter()
        url_filter.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)
    if load:
        url_filter.download_data()  # once, at actor start-up
    return url_filter
