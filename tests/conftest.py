"""Shared fixtures: one local Ray for the whole session, a tokenizer on the sample crawl, WARC helpers."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from raylm.config import SAMPLE_CRAWL


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raylm.cli import apply_local_ray_env

    apply_local_ray_env()  # Serve runs as on raylm's own local Ray (cli.init_ray)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    return sorted(SAMPLE_CRAWL.glob("*.warc.gz"))


@pytest.fixture(scope="session")
def sample_tokenizer(ray_session, sample_files, tmp_path_factory) -> Path:
    """A tokenizer (vocab 1024) and shards from the sample crawl's English pages (extraction only, to stay quick)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylm.config import TokenizerConfig
    from raylm.data.clean import extract_text
    from raylm.data.readers import iter_warc
    from raylm.runs import run_step
    from raylm.tokenizer.step import run_tokenizer

    root = tmp_path_factory.mktemp("sample_tokenizer")
    rows = []
    for path in sample_files:
        with gzip.open(path) as stream:
            for row in iter_warc(stream, str(path)):
                text = extract_text(row["html"], "resiliparse") if row["html"] else ""
                if len(text) > 500 and "debian-handbook.info/browse/stable" in row["url"]:
                    rows.append({"id": row["id"], "url": row["url"], "text": text})
    (root / "kept").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "kept" / "part-0.parquet")
    cfg = TokenizerConfig(vocab_size=1024, shard_tokens=100_000, val_fraction=0.1)
    run_step("tokenizer", root / "tokenizer", {}, lambda work: run_tokenizer(cfg, root / "kept", work))
    return root / "tokenizer"


def write_warc(path: Path, pages: list[tuple[str, bytes, str | None]], status: str = "200 OK") -> Path:
    """A gzipped WARC of (url, body, content_type) responses."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, body, content_type in pages:
            headers = [("Content-Length", str(len(body)))]
            if content_type:
                headers.insert(0, ("Content-Type", content_type))
            writer.write_record(writer.create_warc_record(
                url, "response", payload=io.BytesIO(body),
                http_headers=StatusAndHeaders(status, headers, protocol="HTTP/1.1")))
    return path
