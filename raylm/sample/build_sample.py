"""Build the bundled sample crawl (raylm/sample/crawl/*.warc.gz) from offline documents.

The pages are real documents that Debian ships (see LICENSES.md beside this file):
the Debian Administrator's Handbook (English, plus a few pages in six other
languages), the Debian FAQ, the Debian Developer's Reference and a sample of the
CPython 3.11 HTML documentation (code-heavy pages that the quality filters trim). On top of them the builder plants the noise a real crawl has,
so that every filter and the dedup stage have something to do:

- non-English pages, link-list pages (genindex), a JavaScript-only page (search.html)
- exact duplicates (the same page on a mirror URL) and near duplicates (edited copies)
- pages on blocklisted domains (from datatrove's shipped URL blocklist)
- non-HTML bodies, empty bodies, HTTP errors, request and warcinfo records
- latin-1 / cp1252 bodies: declared in the header, only in a meta tag, undeclared,
  and declared wrongly
- e-mail and public IP addresses for the PII stage

Run (needs the Debian packages unpacked, which this does with apt-get download):
    python -m raylm.sample.build_sample --debs /tmp/debs --out raylm/sample/crawl
The output is deterministic for a given seed and input packages.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import subprocess
import tempfile
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

PACKAGES = ["python3.11-doc", "debian-handbook", "debian-faq", "developers-reference"]
PYDOC_ROOT = "usr/share/doc/python3.11/html"
HANDBOOK_ROOT = "usr/share/doc/debian-handbook/html"
# English prose: (folder in the packages, URL it is served under)
PROSE = [
    (HANDBOOK_ROOT + "/en-US", "https://debian-handbook.info/browse/stable/"),
    ("usr/share/doc/debian/FAQ", "https://www.debian.org/doc/manuals/debian-faq/"),
    ("usr/share/developers-reference", "https://www.debian.org/doc/manuals/developers-reference/"),
]
OTHER_LANGUAGES = ["de-DE", "fr-FR", "es-ES", "ja-JP", "ru-RU", "pt-BR"]
# Domains taken from datatrove's shipped blocklist (url_filterblacklistsv0_3_0).
BLOCKED_DOMAINS = ["0-porno.com", "0001casino.com", "1000casinos.com", "0-livechatlady.com"]
MIRROR = "https://docs-mirror.net/"
DATE = "2026-10-01T00:00:00Z"


def unpack(debs: Path, dest: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("*.deb")):
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def near_duplicate(html: str, rng: random.Random) -> str:
    """An edited copy: a different banner, one paragraph dropped, a few words changed."""
    paragraphs = re.findall(r"<p>.*?</p>", html, flags=re.S)
    if len(paragraphs) > 6:
        html = html.replace(rng.choice(paragraphs[2:-2]), "", 1)
    html = html.replace("<body>", '<body><div class="banner">Mirrored documentation, updated weekly</div>', 1)
    words = ["Note", "example", "returns", "value", "function"]
    for word in rng.sample(words, 2):
        html = html.replace(f" {word} ", f" {word.upper()} ", 1)
    return html


def add_pii(html: str, rng: random.Random) -> str:
    person = rng.choice(["maintainer", "docs-team", "webmaster"])
    ip = f"{rng.randint(60, 90)}.{rng.randint(1, 250)}.{rng.randint(1, 250)}.{rng.randint(1, 250)}"
    note = (f"<p>Questions about this page can be sent to {person}@docs-mirror.net, "
            f"and the mirror itself is served from {ip} in case the name does not resolve.</p>")
    return html.replace("</body>", note + "</body>", 1)


class Crawl:
    """Writes records round-robin into a few WARC.gz files."""

    def __init__(self, out: Path, num_files: int):
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.warc.gz"):
            old.unlink()
        self.files = [open(out / f"sample-{i:05d}.warc.gz", "wb") for i in range(num_files)]
        self.writers = [WARCWriter(f, gzip=True) for f in self.files]
        self.count = 0
        for i, writer in enumerate(self.writers):
            info = {"software": "raylm build_sample", "description": f"raylm sample crawl part {i}"}
            writer.write_record(writer.create_warcinfo_record(f"sample-{i:05d}.warc.gz", info))

    def add(self, url: str, body: bytes, content_type: str | None = "text/html; charset=utf-8",
            status: str = "200 OK") -> None:
        writer = self.writers[self.count % len(self.writers)]
        self.count += 1
        headers = [("Content-Length", str(len(body)))]
        if content_type:
            headers.insert(0, ("Content-Type", content_type))
        warc_headers = {"WARC-Date": DATE}
        request = writer.create_warc_record(
            url, "request", payload=io.BytesIO(f"GET {url} HTTP/1.1\r\n\r\n".encode()),
            warc_headers_dict=warc_headers)
        response = writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), warc_headers_dict=warc_headers,
            http_headers=StatusAndHeaders(status, headers, protocol="HTTP/1.1"))
        writer.write_request_response_pair(request, response)

    def close(self) -> None:
        for f in self.files:
            f.close()


def _pages(folder: Path, lo: int = 2_000, hi: int = 150_000) -> list[Path]:
    return sorted(p for p in folder.rglob("*.html") if lo < p.stat().st_size < hi)


def build(root: Path, out: Path, seed: int, num_files: int) -> int:
    rng = random.Random(seed)
    crawl = Crawl(out, num_files)
    prose: dict[str, str] = {}  # url -> html of the English prose pages
    for folder, base in PROSE:
        for page in _pages(root / folder):
            prose[base + page.relative_to(root / folder).as_posix()] = page.read_text(encoding="utf-8")
    for i, (url, html) in enumerate(prose.items()):
        if i % 20 == 0:
            html = add_pii(html, rng)
        if i % 40 == 1:  # charset declared in the HTTP header, latin-1 body
            crawl.add(url, html.encode("latin-1", "replace"), "text/html; charset=iso-8859-1")
        elif i % 40 == 2:  # undeclared cp1252 body: only detection can decode it
            body = re.sub(r'<meta[^>]*charset[^>]*>', "", html).encode("cp1252", "replace")
            crawl.add(url, body, "text/html")
        elif i % 40 == 3:  # declared as utf-8 in the header, but the bytes are latin-1
            crawl.add(url, html.encode("latin-1", "replace"), "text/html; charset=utf-8")
        else:
            crawl.add(url, html.encode("utf-8"))

    pydoc = root / PYDOC_ROOT
    for page in rng.sample(_pages(pydoc, hi=90_000), 120) + [pydoc / "genindex-A.html", pydoc / "genindex-B.html",
                                                         pydoc / "py-modindex.html", pydoc / "search.html"]:
        crawl.add(f"https://docs.python.org/3.11/{page.relative_to(pydoc).as_posix()}", page.read_bytes())

    urls = sorted(prose)
    for url in rng.sample(urls, 20):  # exact duplicates on a mirror
        crawl.add(url.replace("https://", MIRROR), prose[url].encode("utf-8"))
    for url in rng.sample(urls, 20):  # near duplicates on a mirror
        crawl.add(url.replace("https://", MIRROR + "v2/"), near_duplicate(prose[url], rng).encode("utf-8"))
    for i, url in enumerate(rng.sample(urls, 8)):  # blocklisted domains
        crawl.add(f"https://www.{BLOCKED_DOMAINS[i % len(BLOCKED_DOMAINS)]}/{url.rsplit('/', 1)[1]}",
                  prose[url].encode("utf-8"))

    for lang in OTHER_LANGUAGES:
        for page in rng.sample(_pages(root / HANDBOOK_ROOT / lang), 5):
            crawl.add(f"https://debian-handbook.info/browse/{lang}/stable/{page.name}", page.read_bytes())

    crawl.add("https://docs.python.org/3.11/archives/python-3.11-docs.pdf", b"%PDF-1.4 binary", "application/pdf")
    crawl.add("https://docs.python.org/3.11/_static/py.png", b"\x89PNG\r\n\x1a\n\x00", "image/png")
    crawl.add("https://docs.python.org/3.11/objects.json", b'{"objects": []}', "application/json")
    for i in range(3):
        crawl.add(f"https://docs.python.org/3.11/empty-{i}.html", b"")
        crawl.add(f"https://docs.python.org/3.11/missing-{i}.html", b"<html>Not Found</html>",
                  status="404 Not Found")
    crawl.close()
    return crawl.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debs", type=Path, default=Path("/tmp/raylm-debs"), help="where the .deb files are (downloaded if empty)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "crawl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        unpack(args.debs, Path(tmp))
        count = build(Path(tmp), args.out, args.seed, args.num_files)
    size = sum(p.stat().st_size for p in args.out.glob("*.warc.gz"))
    print(f"wrote {count} responses to {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
