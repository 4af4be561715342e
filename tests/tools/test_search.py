"""The search tool: an FTS5 index over kept documents finds the passage that answers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from raylm.config import StorageConfig
from raylm.storage import Storage
from raylm.tools.search import SearchIndex, build_index


def test_index_finds_the_relevant_passage_and_ignores_query_syntax(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    rows = [{"url": "https://a.example/apt", "text": "APT is the package manager of Debian. " * 3},
            {"url": "https://b.example/cats", "text": "Cats sleep for most of the day. " * 3}]
    pq.write_table(pa.Table.from_pylist(rows), kept / "part-0.parquet")
    folder = tmp_path / "odd #?% name"  # characters that a file: URI must escape
    folder.mkdir()
    counts = build_index(Storage(StorageConfig(uri=str(tmp_path))), "kept", folder / "search.db")
    assert counts["documents"] == 2
    index = SearchIndex(folder / "search.db")
    assert "a.example/apt" in index.search("which package manager does Debian use", k=1)
    assert "cats" in index.search("how long do cats sleep", k=1)
    assert index.search("zzzqqq") == "No results."
    assert index.search('" OR NEAR( * ') == "No results."  # FTS5 operators in user text are just words
