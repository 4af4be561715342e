"""Shared fixtures: one local Ray for the whole session, and WARC helpers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from raylm.config import SAMPLE_CRAWL


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    return sorted(SAMPLE_CRAWL.glob("*.warc.gz"))


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
