"""Shared fixtures: one local Ray for the whole session, a tokenizer on the sample crawl, WARC helpers, and a
headless chromium for the page tests."""

from __future__ import annotations

import gzip
import io
import os
import shutil
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from raylm.config import SAMPLE_CRAWL


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raylm.ray_setup import apply_local_ray_env

    apply_local_ray_env()  # Serve runs as on raylm's own local Ray (ray_setup.init_ray)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


# Flags for a closed network: no background connections, no first-run work.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium driven by Playwright (`make setup` installs it), one per test module: a test opens its
    own contexts (`chromium.new_context()`), each with a fresh profile (its own localStorage)."""
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: run `make setup` (installs Debian's chromium) "
                    "or `apt-get install chromium`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 server on loopback (host:port), for the whole session; dummy credentials in the env
    (pyarrow would otherwise ask a cloud metadata service for them)."""
    from moto.server import ThreadedMotoServer

    from raylm.ray_setup import free_ports

    for key, value in {"AWS_ACCESS_KEY_ID": "raylm-test", "AWS_SECRET_ACCESS_KEY": "raylm-test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(key, value)
    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_storage(s3_endpoint):
    """A Storage on a fresh bucket of the moto server."""
    import uuid

    import pyarrow.fs as pafs

    from raylm.config import StorageConfig
    from raylm.storage import Storage

    bucket = f"raylm-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(bucket)
    return Storage(StorageConfig(uri=f"s3://{bucket}/runs", endpoint_override=s3_endpoint, scheme="http",
                                 region="us-east-1"))


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    return sorted(SAMPLE_CRAWL.glob("*.warc.gz"))


@pytest.fixture(scope="session")
def single_node_kept(ray_session, sample_files, tmp_path_factory) -> set[str]:
    """The kept ids of `raylm data` on one sample file (sample_files[3]) on the test session's one-node Ray:
    what the cluster drills (two nodes, autoscaling) must keep too."""
    import pyarrow.dataset as pads

    from raylm.cli import main

    out = tmp_path_factory.mktemp("single") / "clean"
    assert main(["data", "--input", str(sample_files[3]), "--output", str(out)]) == 0
    return set(pads.dataset(str(out / "kept"), format="parquet").to_table(columns=["id"]).column("id").to_pylist())


@pytest.fixture(scope="session")
def sample_tokenizer(ray_session, sample_files, tmp_path_factory):
    """A tokenizer step (vocab 1024, shards) on the sample crawl's English pages (extraction only, to stay
    quick), as the StepResult that pretraining takes; its folder is `result.storage.path(result.rel)`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylm.config import StorageConfig, TokenizerConfig
    from raylm.data.clean import extract_text
    from raylm.data.readers import iter_warc
    from raylm.runs import run_step
    from raylm.storage import Storage
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
    storage = Storage(StorageConfig(uri=str(root)))
    data = {"kept_documents": len(rows), "kept_characters": sum(len(r["text"]) for r in rows)}
    return run_step("tokenizer", storage, "tokenizer", "sample",
                    lambda work: run_tokenizer(cfg, storage, "kept", data, work))


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
