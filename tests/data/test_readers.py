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
    assert decode_html(CAFE.encode("utf-8"), "undefined") == CAFE  # Python's "undefined" codec raises UnicodeError


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


def test_a_page_declaring_an_undefined_charset_is_read(tmp_path):
    path = write_warc(tmp_path / "undefined.warc.gz", [("https://a.example/u", CAFE.encode(), "text/html; charset=undefined"),
                                                       ("https://a.example/next", CAFE.encode(), "text/html")])
    assert [(r["reason"], r["html"]) for r in read(path)] == [(None, CAFE), (None, CAFE)]


def test_common_crawl_listing_and_prefix_read_only_warc_files(tmp_path):
    """A crawl folder holds WARC, WAT, WET and robots.txt/diagnostics WARCs: only the first are pages."""
    seg = tmp_path / "crawl-data" / "CC-MAIN-2024-10" / "segments" / "1"
    names = ["warc/a.warc.gz", "warc/b.warc.gz", "wat/a.warc.wat.gz", "wet/a.warc.wet.gz",
             "robotstxt/a.warc.gz", "crawldiagnostics/a.warc.gz"]
    for name in names:
        (seg / name).parent.mkdir(parents=True, exist_ok=True)
        (seg / name).write_bytes(b"x")
    [group] = find_inputs([str(tmp_path / "crawl-data")])
    assert [p.rsplit("segments/1/", 1)[1] for p in group.files["warc"]] == ["warc/a.warc.gz", "warc/b.warc.gz"]
    assert len(group.listing) == 2 and all(size == 1 for _, size, _ in group.listing)

    listing = tmp_path / "warc.paths.gz"
    lines = [f"crawl-data/CC-MAIN-2024-10/segments/1/{n}" for n in ("warc/a.warc.gz", "warc/b.warc.gz")]
    listing.write_bytes(gzip.compress("\n".join(lines).encode()))
    [group] = find_inputs([str(listing)], listing_base=str(tmp_path))
    assert group.files["warc"] == [str(tmp_path / line) for line in lines]
    assert group.listing[0][0] == str(listing)  # the digest covers the listing itself, not 90,000 HEAD requests


def test_find_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_inputs([str(tmp_path / "missing")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no WARC, JSONL or parquet"):
        find_inputs([str(tmp_path)])
