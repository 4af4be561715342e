"""WARC reading: charsets, non-HTML and empty bodies, truncated archives (no Ray needed)."""

from __future__ import annotations

import gzip

import pytest

from raylm.data.readers import InputError, decode_html, find_inputs, iter_warc
from tests.conftest import write_warc

CAFE = "<html><head><title>Caf\u00e9</title></head><body><p>Un caf\u00e9 cr\u00e8me, s'il vous pla\u00eet.</p></body></html>"


def read(path):
    with gzip.open(path) as stream:
        return list(iter_warc(stream, str(path)))


def test_decode_declared_meta_detected_and_wrong_charsets():
    latin1 = CAFE.encode("latin-1")
    assert decode_html(latin1, "iso-8859-1") == CAFE  # declared in the HTTP header
    with_meta = CAFE.replace("<head>", '<head><meta charset="iso-8859-1">').encode("latin-1")
    assert "caf\u00e9" in decode_html(with_meta, None)  # only a <meta> tag
    assert "caf\u00e9" in decode_html(latin1, "utf-8")  # declared wrongly: falls back to detection
    assert "caf\u00e9" in decode_html(latin1, None)  # undeclared
    assert decode_html(CAFE.encode("utf-8"), "no-such-charset") == CAFE


def test_non_html_empty_and_error_responses_are_skipped_with_reasons(tmp_path):
    path = write_warc(tmp_path / "mixed.warc.gz", [
        ("https://a.example/page", CAFE.encode(), "text/html; charset=utf-8"),
        ("https://a.example/doc.pdf", b"%PDF-1.4", "application/pdf"),
        ("https://a.example/empty", b"", "text/html"),
        ("https://a.example/untyped", CAFE.encode("cp1252"), None),
    ])
    rows = read(path)
    assert [r["reason"] for r in rows] == [None, "non_html", "empty_body", None]
    assert rows[0]["html"] == CAFE and rows[0]["url"] == "https://a.example/page"
    assert "caf\u00e9" in rows[3]["html"]
    errors = read(write_warc(tmp_path / "404.warc.gz", [("https://a.example/x", b"gone", "text/html")],
                             status="404 Not Found"))
    assert errors[0]["reason"] == "http_404"


def test_truncated_archive_keeps_records_before_the_damage(tmp_path, sample_files):
    whole = read(sample_files[0])
    data = sample_files[0].read_bytes()
    broken = tmp_path / "broken.warc.gz"
    broken.write_bytes(data[: len(data) // 2])
    rows = read(broken)
    assert rows[-1]["reason"] == "truncated_archive"
    good = rows[:-1]
    assert 0.3 * len(whole) < len(good) < len(whole)
    assert [r["id"] for r in good] == [r["id"] for r in whole[: len(good)]]

    corrupt = tmp_path / "corrupt.warc.gz"
    corrupt.write_bytes(data[:200_000] + b"\x00garbage" * 1000 + data[200_000:])
    rows = read(corrupt)
    assert rows[-1]["reason"] == "truncated_archive" and len(rows) > 1


def test_find_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_inputs([str(tmp_path / "missing")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no WARC, JSONL or parquet"):
        find_inputs([str(tmp_path)])
