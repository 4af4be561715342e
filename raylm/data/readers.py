"""Readers: WARC/WARC.gz, JSONL and parquet inputs into one Ray Dataset of documents.

Every row has the same columns, whatever the input format:

    id, url, html (None for text inputs), text (None for WARC), reason

`reason` is None for a readable document and a snake_case reason for a record that
could not be used (non_html, empty_body, http_<status>, undecodable, truncated_archive),
so that skipped records land in the removal log like any other drop.

WARC records stream through fastwarc (the fastest WARC parser in Python). The gzip
layer is Python's own, because it raises on a truncated or corrupt member where
fastwarc's silently stops: a broken download keeps every record before the damage
and reports the damage as one `truncated_archive` row.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import ray.data
from charset_normalizer import from_bytes
from fastwarc.warc import ArchiveIterator, WarcRecordType
from ray.data.datasource import FileBasedDatasource

WARC_SUFFIXES = (".warc", ".warc.gz")
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
COLUMNS = ["id", "url", "html", "text", "reason"]
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
HTML_TYPES = ("text/html", "application/xhtml+xml")
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)


class InputError(ValueError):
    """An input path that cannot be used; the message is one line for the user."""


def decode_html(body: bytes, declared: str | None) -> str | None:
    """Decode with the charset declared in the HTTP header, else a <meta> tag, else a detected one.

    A declared charset that does not decode the bytes (a wrong declaration) falls
    through to the next source. Returns None when nothing decodes the body.
    """
    meta = META_CHARSET.search(body[:4096])
    for charset in (declared, meta.group(1).decode("ascii", "ignore") if meta else None):
        if not charset:
            continue
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    best = from_bytes(body).best()
    return str(best) if best is not None else None


def _record_row(record, path: str) -> dict:
    url = record.headers.get("WARC-Target-URI", "")
    row = {"id": record.record_id or f"{path}#{record.stream_pos}", "url": url,
           "html": None, "text": None, "reason": None}
    status = record.http_headers.status_code if record.http_headers else None
    body = record.reader.read()
    content_type = (record.http_content_type or "").lower()
    if status != 200:
        row["reason"] = f"http_{status}"
    elif not body.strip():
        row["reason"] = "empty_body"
    elif content_type and not content_type.startswith(HTML_TYPES):
        row["reason"] = "non_html"
    else:
        row["html"] = decode_html(body, record.http_charset)
        if row["html"] is None:
            row["reason"] = "undecodable"
    return row


def iter_warc(stream, path: str) -> Iterator[dict]:
    """Rows for the HTTP response records of one WARC stream (already decompressed)."""
    try:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
            yield _record_row(record, path)
    except (EOFError, OSError, zlib.error) as err:
        yield {"id": f"{path}#damaged", "url": path, "html": None, "text": None,
               "reason": "truncated_archive", "error": str(err)[:200]}


class WarcDatasource(FileBasedDatasource):
    """Ray Data source: each WARC file is read as a stream, in blocks of `rows_per_block` rows."""

    _FILE_EXTENSIONS = ["warc", "gz"]

    def __init__(self, paths, rows_per_block: int = 256, **kwargs):
        super().__init__(paths, **kwargs)
        self.rows_per_block = rows_per_block

    def resolve_compression(self, path, open_args):
        return None  # decompressed in _read_stream, where truncation is caught

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        stream = gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f
        rows = []
        for row in iter_warc(stream, path):
            row.pop("error", None)
            rows.append(row)
            if len(rows) >= self.rows_per_block:
                yield pa.Table.from_pylist(rows, schema=SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)


def _to_documents(batch: pa.Table) -> pa.Table:
    """Text inputs (JSONL/parquet with url + text) in the common schema."""
    names = batch.column_names
    missing = {"url", "text"} - set(names)
    if missing:
        raise InputError(f"text input lacks column(s) {sorted(missing)}; need url and text")
    urls = batch.column("url").cast(pa.string())
    texts = batch.column("text").cast(pa.string())
    if "id" in names:
        ids = batch.column("id").cast(pa.string())
    else:
        ids = pa.array([f"doc-{zlib.crc32((u or '').encode()):08x}-{zlib.adler32((t or '').encode()):08x}"
                        for u, t in zip(urls.to_pylist(), texts.to_pylist())])
    reasons = pa.array([None if t and t.strip() else "empty_body" for t in texts.to_pylist()], pa.string())
    nulls = pa.nulls(len(batch), pa.string())
    return pa.Table.from_arrays([ids, urls, nulls, texts, reasons], schema=SCHEMA)


def find_inputs(paths: list[str]) -> dict[str, list[str]]:
    """Local paths or folders -> {"warc": [...], "json": [...], "parquet": [...]}; remote URIs pass through."""
    found: dict[str, list[str]] = {"warc": [], "json": [], "parquet": []}
    kinds = {"warc": WARC_SUFFIXES, "json": JSON_SUFFIXES, "parquet": PARQUET_SUFFIXES}
    for raw in paths:
        if "://" in raw:  # object storage: let Ray Data list it
            kind = next((k for k, s in kinds.items() if raw.rstrip("/").endswith(s)), "warc")
            found[kind].append(raw)
            continue
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input path not found: {raw}")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            kind = next((k for k, s in kinds.items() if file.name.endswith(s)), None)
            if kind:
                found[kind].append(str(file))
    if not any(found.values()):
        raise InputError(f"no WARC, JSONL or parquet files under: {', '.join(paths)}")
    return found


READ_CPUS = 0.25  # reading is a small share of the work next to extraction and filtering
CPUS_PER_READER = 32  # one WARC read task (about 2,000 pages/s) feeds this many cleaning cores
BLOCK_BYTES = 1 << 20  # of decoded HTML per read block
GZIP_RATIO = 5  # decoded / compressed size of a WARC.gz of HTML pages (4.9 for the large-page benchmark crawl)


def warc_blocks(paths: list[str]) -> int:
    """Read blocks for local WARC files: one per BLOCK_BYTES of HTML (-1, Ray's choice, for remote ones).

    Ray sizes blocks from the compressed file size and the cleaning actors take
    whole blocks, so a file would reach them as a few blocks of a hundred pages or
    more, and at the end of a run one actor works through its last block while the
    other waits.
    """
    if any("://" in path for path in paths):
        return -1
    decoded = sum(Path(p).stat().st_size * (GZIP_RATIO if p.endswith(".gz") else 1) for p in paths)
    return max(len(paths), -(-decoded // BLOCK_BYTES))


def read_documents(paths: list[str], rows_per_block: int = 256) -> ray.data.Dataset:
    """One dataset of documents in the common schema from every input under `paths`."""
    found = find_inputs(paths)
    parts = []
    if found["warc"]:
        # few read tasks at once: each runs in a worker process of its own, and on a small
        # machine starting those costs more CPU than the reading
        readers = max(1, int(ray.cluster_resources().get("CPU", 1)) // CPUS_PER_READER)
        parts.append(ray.data.read_datasource(WarcDatasource(found["warc"], rows_per_block=rows_per_block),
                                              num_cpus=READ_CPUS, concurrency=readers,
                                              override_num_blocks=warc_blocks(found["warc"])))
    if found["json"]:
        parts.append(ray.data.read_json(found["json"], lines=True, num_cpus=READ_CPUS).map_batches(
            _to_documents, batch_format="pyarrow", num_cpus=READ_CPUS))
    if found["parquet"]:
        parts.append(ray.data.read_parquet(found["parquet"], num_cpus=READ_CPUS).map_batches(
            _to_documents, batch_format="pyarrow", num_cpus=READ_CPUS))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
