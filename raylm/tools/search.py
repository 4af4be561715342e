"""The search tool: a SQLite FTS5 full-text index over the cleaned corpus (BM25 ranking).

    build_index(storage, "tiny/data/kept", Path("search.db"))           # the `search` step of a run
    SearchIndex("runs/tiny/search/search.db").search("package manager", k=3)   # -> text for the model

SQLite ships with Python and FTS5 is a real search engine (tokenizer, inverted
index, bm25), so the assistant's search needs no service. Documents are split
into passages of ~PASSAGE_WORDS words: a small model's context holds a passage,
not a page, so results are the best passages, cut to `max_chars` in total.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

PASSAGE_WORDS = 60


def _passages(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)]


def build_index(storage, kept_rel: str, db_path: Path) -> dict:
    """Index every passage of the kept parquet files (read from the run's storage) into a new local
    SQLite file; returns counts. The search step uploads it, and the step's swap puts it in place."""
    import pyarrow.dataset as pads

    db_path = Path(db_path)
    db_path.unlink(missing_ok=True)
    files = [storage.path(f"{kept_rel}/{n}") for n in sorted(storage.files(kept_rel)) if n.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"no parquet files in {storage.uri(kept_rel)}")
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE VIRTUAL TABLE passages USING fts5(url UNINDEXED, text, tokenize='porter unicode61')")
        documents = passages = 0
        for batch in pads.dataset(files, format="parquet", filesystem=storage.fs).to_batches(columns=["url", "text"]):
            for url, text in zip(batch.column("url").to_pylist(), batch.column("text").to_pylist()):
                rows = [(url, p) for p in _passages(text or "")]
                db.executemany("INSERT INTO passages (url, text) VALUES (?, ?)", rows)
                documents += 1
                passages += len(rows)
    return {"documents": documents, "passages": passages}


class SearchIndex:
    def __init__(self, db_path: str | Path):
        if not Path(db_path).is_file():
            raise FileNotFoundError(f"no search index at {db_path} (built by `raylm serve` from the data step)")
        # read-only and shareable between threads: a Serve replica answers requests concurrently; as_uri()
        # percent-encodes the path, so a folder named with '#', '?' or '%' opens too
        self.db = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)

    def search(self, query: str, k: int = 2, max_chars: int = 400) -> str:
        terms = re.findall(r"\w+", query.lower())[:12]
        if not terms:
            return "No results."
        match = " OR ".join(f'"{t}"' for t in terms)  # quoted: user text is never FTS5 syntax
        rows = self.db.execute("SELECT url, text FROM passages WHERE passages MATCH ? ORDER BY bm25(passages) "
                               "LIMIT ?", (match, k)).fetchall()
        if not rows:
            return "No results."
        return "\n".join(f"{text} ({url})" for url, text in rows)[:max_chars]
