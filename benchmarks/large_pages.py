"""A large-page crawl for the data benchmark: big documentation pages that Debian ships.

The bundled sample's pages are small (6.5 K extracted characters on average); web
documentation pages are often several times larger, and per-page costs (extraction,
word splitting, n-gram statistics) grow with them. This builds a crawl of real large
pages, offline and reproducibly: the HTML of English documentation packages from
Debian's main archive (`apt-get download`, no network beyond the Debian mirror), the
pages between `MIN_BYTES` and `MAX_BYTES` of HTML, written round-robin into a few
WARC.gz files of HTTP responses with WARC-Identified-Payload-Type as Common Crawl
has (datatrove's WarcReader trusts it).

    python benchmarks/large_pages.py [--out benchmarks/out/large-crawl] [--debs benchmarks/out/debs]

The output is deterministic for given package versions (they are listed in
OUT.json, beside OUT: a .json inside would be read as input); benchmarks/out/ is
git-ignored, nothing here is committed.
Licences (each package's debian/copyright): see PACKAGES.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import tempfile
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

# (package, folder of its HTML pages, URL the folder is served under, licence of the documentation)
PACKAGES = [
    ("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html", "https://www.postgresql.org/docs/15/", "PostgreSQL"),
    ("python-django-doc", "usr/share/doc/python-django-doc/html", "https://docs.djangoproject.com/en/3.2/",
     "BSD-3-Clause"),
    ("python-sqlalchemy-doc", "usr/share/doc/python-sqlalchemy-doc/html", "https://docs.sqlalchemy.org/en/14/",
     "Expat"),
    ("python-flask-doc", "usr/share/doc/python-flask-doc/html", "https://flask.palletsprojects.com/en/2.2.x/",
     "BSD-3-Clause"),
    ("python-werkzeug-doc", "usr/share/doc/python-werkzeug-doc/html", "https://werkzeug.palletsprojects.com/en/2.2.x/",
     "BSD-3-Clause"),
    ("sphinx-doc", "usr/share/doc/sphinx-doc/html", "https://www.sphinx-doc.org/en/5.x/", "BSD-2-Clause"),
    ("git-doc", "usr/share/doc/git-doc", "https://git-scm.com/docs/", "GPL-2"),
    ("nodejs-doc", "usr/share/doc/nodejs/api", "https://nodejs.org/docs/v18.20.4/api/", "Expat"),
    ("apache2-doc", "usr/share/doc/apache2-doc/manual/en", "https://httpd.apache.org/docs/2.4/", "Apache-2.0"),
    ("exim4-doc-html", "usr/share/doc/exim4-doc-html/spec_html", "https://www.exim.org/exim-html-4.96/doc/html/",
     "GPL-2+"),
    ("postfix-doc", "usr/share/doc/postfix/html", "https://www.postfix.org/", "EPL-2.0 or IPL-1.0"),
    ("bind9-doc", "usr/share/doc/bind9-doc/arm", "https://bind9.readthedocs.io/en/v9.18/", "MPL-2.0"),
    ("octave-doc", "usr/share/doc/octave/octave.html", "https://docs.octave.org/v7.3.0/", "GPL-3+"),
    ("debian-policy", "usr/share/doc/debian-policy", "https://www.debian.org/doc/debian-policy/", "GPL-2+"),
]
MIN_BYTES = 12_000  # of HTML: smaller pages carry a few K characters of text at most
MAX_BYTES = 300_000  # single-page manuals (a whole book in one page) are not typical web pages
SKIP_PARTS = {"_modules", "_sources", "_static", "_images"}  # highlighted source code, assets
DATE = "2026-10-01T00:00:00Z"


def download(debs: Path) -> dict[str, str]:
    """The packages' .deb files in `debs` (downloaded once); returns {package: version}."""
    debs.mkdir(parents=True, exist_ok=True)
    names = [name for name, *_ in PACKAGES]
    missing = [name for name in names if not list(debs.glob(f"{name}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    versions = {}
    for name in names:
        deb = sorted(debs.glob(f"{name}_*.deb"))[-1]
        versions[name] = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                        text=True).stdout.strip()
    return versions


def pages(root: Path) -> list[tuple[str, bytes]]:
    """(url, html bytes) of every selected page, in a fixed order."""
    found = []
    for _, folder, base, _ in PACKAGES:
        for path in sorted((root / folder).rglob("*.html")):
            rel = path.relative_to(root / folder)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and MIN_BYTES <= path.stat().st_size <= MAX_BYTES:
                found.append((base + rel.as_posix(), path.read_bytes()))
    return found


def write_warcs(found: list[tuple[str, bytes]], out: Path, num_files: int) -> int:
    """Responses round-robin into OUT/large-NNNNN.warc.gz; returns the number written."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.warc.gz"):
        old.unlink()
    files = [open(out / f"large-{i:05d}.warc.gz", "wb") for i in range(num_files)]
    writers = [WARCWriter(f, gzip=True) for f in files]
    for i, (url, body) in enumerate(found):
        try:
            body.decode("utf-8")
            content_type = "text/html; charset=utf-8"
        except UnicodeDecodeError:
            content_type = "text/html"  # let the reader find the charset, as for an undeclared page
        headers = StatusAndHeaders("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                                   protocol="HTTP/1.1")
        writer = writers[i % num_files]
        writer.write_record(writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=headers,
            warc_headers_dict={"WARC-Date": DATE, "WARC-Identified-Payload-Type": "text/html"}))
    for f in files:
        f.close()
    return len(found)


def build(out: Path, debs: Path, num_files: int = 4, max_pages: int = 2000, seed: int = 0) -> dict:
    """Download (once), unpack, select and write the crawl; returns what OUT.json holds."""
    versions = download(debs)
    with tempfile.TemporaryDirectory() as tmp:
        for name in versions:
            subprocess.run(["dpkg-deb", "-x", str(sorted(debs.glob(f"{name}_*.deb"))[-1]), tmp], check=True)
        found = pages(Path(tmp))
    if len(found) > max_pages:  # a fixed sample, in the original order
        keep = set(random.Random(seed).sample(range(len(found)), max_pages))
        found = [page for i, page in enumerate(found) if i in keep]
    random.Random(seed).shuffle(found)  # mix the packages across the files
    info = {"records": write_warcs(found, out, num_files), "files": num_files,
            "html_bytes": sum(len(body) for _, body in found),
            "packages": {name: {"version": versions[name], "licence": licence,
                                "pages": sum(url.startswith(base) for url, _ in found)}
                         for name, _, base, licence in PACKAGES}}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).parent / "out"
    parser.add_argument("--out", type=Path, default=here / "large-crawl")
    parser.add_argument("--debs", type=Path, default=here / "debs", help="where the .deb files are (downloaded if absent)")
    parser.add_argument("--num-files", type=int, default=4)
    parser.add_argument("--max-pages", type=int, default=2000)
    args = parser.parse_args()
    info = build(args.out, args.debs, args.num_files, args.max_pages)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
