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
import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import ray.data
from charset_normalizer import from_bytes
from fastwarc.warc import ArchiveIterator, WarcRecordType
from ray.data.datasource import FileBasedDatasource

from raylm.config import StorageConfig
from raylm.errors import InputError
from raylm.storage import Storage

WARC_SUFFIXES = (".warc", ".warc.gz")
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
COLUMNS = ["id", "url", "html", "text", "reason"]
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
HTML_TYPES = ("text/html", "application/xhtml+xml")
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)


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
        except (LookupError, UnicodeError):  # unknown name, wrong bytes, or Python's "undefined" codec
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
            try:
                yield _record_row(record, path)
            except Exception as err:  # one odd record is a skipped record, never the end of the step
                yield {"id": record.record_id or f"{path}#{record.stream_pos}",
                       "url": record.headers.get("WARC-Target-URI", ""), "html": None, "text": None,
                       "reason": "unreadable_record", "error": f"{type(err).__name__}: {err}"[:200]}
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


@dataclass
class InputFiles:
    """The input files found under one user-given path, and the filesystem to read them with."""

    storage: Storage
    files: dict[str, list[str]]             # kind (warc, json, parquet) -> filesystem paths
    listing: list[tuple[str, int, str]]     # (path, size, mtime) of every file: part of the data step's digest


# Common Crawl puts these beside the WARC files of a crawl: never read them as web pages
CRAWL_SIDE_FOLDERS = ("/robotstxt/", "/crawldiagnostics/")
KINDS = {"warc": WARC_SUFFIXES, "json": JSON_SUFFIXES, "parquet": PARQUET_SUFFIXES}
LISTING_SUFFIXES = ("warc.paths", "warc.paths.gz")


def _kind(path: str) -> str | None:
    if any(side in path for side in CRAWL_SIDE_FOLDERS):
        return None
    return next((k for k, suffixes in KINDS.items() if path.endswith(suffixes)), None)


def _from_listing(storage: Storage, listing_base: str) -> InputFiles:
    """A Common Crawl `warc.paths(.gz)` file: one WARC path per line, relative to `listing_base`."""
    data = storage.read_bytes("")
    text = (gzip.decompress(data) if storage.path().endswith(".gz") else data).decode()
    base = Storage(storage.cfg.model_copy(update={"uri": listing_base}))
    paths = [base.path(line.strip()) for line in text.splitlines() if line.strip().endswith(WARC_SUFFIXES)]
    digest = hashlib.sha256(data).hexdigest()
    return InputFiles(base, {"warc": paths, "json": [], "parquet": []}, [(storage.uri(), len(data), digest)])


def find_inputs(paths: list[str], storage_cfg: StorageConfig | None = None,
                listing_base: str = "s3://commoncrawl/") -> list[InputFiles]:
    """Files or folders (local, mounted, s3://, ...) -> the WARC, JSONL and parquet files under them.

    A Common Crawl listing (warc.paths or warc.paths.gz) names the WARC files to read, so WAT, WET and
    robots.txt files are never listed; a folder or prefix is searched recursively for the three kinds.
    """
    found = []
    for raw in paths:
        storage = Storage((storage_cfg or StorageConfig()).model_copy(update={"uri": raw}))
        info = storage.info("")
        if info.type.name == "NotFound":
            raise InputError(f"input path not found: {raw}")
        if raw.endswith(LISTING_SUFFIXES):
            found.append(_from_listing(storage, listing_base))
            continue
        infos = [info] if info.type.name == "File" else sorted(storage.list("", recursive=True), key=lambda i: i.path)
        files: dict[str, list[str]] = {kind: [] for kind in KINDS}
        listing = []
        for item in infos:
            kind = _kind(item.path) if item.type.name == "File" else None
            if kind:
                files[kind].append(item.path)
                listing.append((item.path, item.size, str(item.mtime)))
        found.append(InputFiles(storage, files, listing))
    if not any(group.files[kind] for group in found for kind in KINDS):
        raise InputError(f"no WARC, JSONL or parquet files under: {', '.join(paths)}")
    return found


READ_CPUS = 0.25  # reading is a small share of the work next to extraction and filtering
CPUS_PER_READER = 32  # one WARC read task (about 2,000 pages/s) feeds this many cleaning cores
BLOCK_BYTES = 1 << 20  # of decoded HTML per read block
GZIP_RATIO = 5  # decoded / compressed size of a WARC.gz of HTML pages (4.9 for the large-page benchmark crawl)


def warc_blocks(group: InputFiles) -> int:
    """Read blocks for the WARC files: one per BLOCK_BYTES of HTML (-1, Ray's choice, for the files of a
    Common Crawl listing, whose sizes would cost a request each).

    Ray sizes blocks from the compressed file size and the cleaning actors take
    whole blocks, so a file would reach them as a few blocks of a hundred pages or
    more, and at the end of a run one actor works through its last block while the
    other waits.
    """
    sizes = {path: size for path, size, _ in group.listing}
    paths = group.files["warc"]
    if not all(p in sizes for p in paths):
        return -1
    decoded = sum(sizes[p] * (GZIP_RATIO if p.endswith(".gz") else 1) for p in paths)
    return max(len(paths), -(-decoded // BLOCK_BYTES))


def read_documents(inputs: list[InputFiles], rows_per_block: int = 256) -> ray.data.Dataset:
    """One dataset of documents in the common schema from every input file."""
    parts = []
    for group in inputs:
        fs, files = group.storage.fs, group.files
        if files["warc"]:
            # few read tasks at once: each runs in a worker process of its own, and on a small
            # machine starting those costs more CPU than the reading
            readers = max(1, int(ray.cluster_resources().get("CPU", 1)) // CPUS_PER_READER)
            parts.append(ray.data.read_datasource(
                WarcDatasource(files["warc"], rows_per_block=rows_per_block, filesystem=fs), num_cpus=READ_CPUS,
                concurrency=readers, override_num_blocks=warc_blocks(group)))
        if files["json"]:
            # Arrow's JSON reader reads newline-delimited JSON (Ray's lines=True reader refuses a filesystem)
            parts.append(ray.data.read_json(files["json"], filesystem=fs, num_cpus=READ_CPUS)
                         .map_batches(_to_documents, batch_format="pyarrow", num_cpus=READ_CPUS))
        if files["parquet"]:
            parts.append(ray.data.read_parquet(files["parquet"], filesystem=fs, num_cpus=READ_CPUS)
                         .map_batches(_to_documents, batch_format="pyarrow", num_cpus=READ_CPUS))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
