"""Build the held-out English set (raylm/sample/heldout_en.txt) from a document outside the sample crawl.

The eval measures the base model's bits per byte on this text against the same
words shuffled within each paragraph (raylm/eval/english.py): a model that knows
word order, not just word frequencies, does much better on the real text. The
source is the Debian New Maintainers' Guide (package maint-guide, GPL-2.0+, see
LICENSES.md), which is not in the sample crawl: its prose is technical English
like the sample's, by other authors, about another task. Only prose paragraphs
are kept (at least 25 words, nearly all of them plain words), so that code and
command lines do not blur the word-order signal.

Run (downloads the package with apt-get when --debs holds no .deb yet):
    python -m raylm.sample.build_heldout --debs /tmp/debs --out raylm/sample/heldout_en.txt
The output is deterministic for a given package version.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from raylm.data.clean import extract_text

PACKAGE = "maint-guide"
HTML_ROOT = "usr/share/doc/maint-guide/html"
# Reading order of the guide's chapters (file names of its English HTML).
CHAPTERS = ["start", "first", "modify", "dreq", "dother", "build", "checkit", "upload", "update", "advanced"]
WORD = re.compile(r"[A-Za-z][a-z']*[,.;:]?$")


def prose_paragraphs(text: str, min_words: int = 25, min_word_share: float = 0.9) -> list[str]:
    """Paragraphs of running text: enough words, and nearly every one a plain word (no paths, flags, code)."""
    out = []
    for block in re.split(r"\n\s*\n|\n", text):
        words = block.split()
        if len(words) >= min_words and sum(bool(WORD.match(w)) for w in words) >= min_word_share * len(words):
            out.append(" ".join(words))
    return out


def build(debs: Path, out: Path, max_chars: int) -> int:
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{PACKAGE}_*.deb")):
        subprocess.run(["apt-get", "download", PACKAGE], cwd=debs, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        for deb in sorted(debs.glob(f"{PACKAGE}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        paragraphs: list[str] = []
        for chapter in CHAPTERS:
            html = (Path(tmp) / HTML_ROOT / f"{chapter}.en.html").read_text(encoding="utf-8")
            paragraphs += prose_paragraphs(extract_text(html, "resiliparse"))
    kept, size = [], 0
    for paragraph in dict.fromkeys(paragraphs):  # a repeated note counts once
        if size + len(paragraph) > max_chars:
            break
        kept.append(paragraph)
        size += len(paragraph) + 2
    out.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debs", type=Path, default=Path("/tmp/debs"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "heldout_en.txt")
    parser.add_argument("--max-chars", type=int, default=60_000)
    args = parser.parse_args()
    print(f"{build(args.debs, args.out, args.max_chars)} paragraphs -> {args.out}")


if __name__ == "__main__":
    main()
