"""stats.json and the funnel chart of a finished data step.

Reads only small columns of DIR/kept and DIR/removed (pyarrow, streaming by batch, from the
run's storage), so it works on any corpus size the step itself handled:

    python -m raylm.data.report DIR      # a local data step folder: rewrites stats.json and funnel.png
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from raylm.config import StorageConfig
from raylm.data.filters import TEXT_STEPS, URL_STEP
from raylm.storage import Storage

FUNNEL_STEPS = ["read", URL_STEP, "extract", *TEXT_STEPS, "exact_dedup", "minhash_dedup"]
FIRST_CHAR_STEP = FUNNEL_STEPS.index("extract")  # characters exist once text is extracted


def _scan(storage: Storage, rel: str, columns: list[str]):
    files = [storage.path(f"{rel}/{name}") for name in storage.files(rel) if name.endswith(".parquet")]
    if files:
        yield from pads.dataset(files, format="parquet", filesystem=storage.fs).to_batches(columns=columns)


def collect(storage: Storage, rel: str) -> dict:
    removed_docs: Counter = Counter()
    removed_chars: Counter = Counter()
    reasons: Counter = Counter()
    for batch in _scan(storage, f"{rel}/removed", ["step", "reason", "num_chars"]):
        for step, reason, chars in zip(*(batch.column(c).to_pylist() for c in ("step", "reason", "num_chars"))):
            removed_docs[step] += 1
            removed_chars[step] += chars or 0
            reasons[f"{step}/{reason}"] += 1
    kept_docs = kept_chars = 0
    for batch in _scan(storage, f"{rel}/kept", ["text"]):
        kept_docs += len(batch)
        kept_chars += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0

    total = kept_docs + sum(removed_docs.values())
    funnel, docs_left = [], total
    for i, step in enumerate(FUNNEL_STEPS):
        docs_left -= removed_docs[step]
        chars_left = kept_chars + sum(removed_chars[s] for s in FUNNEL_STEPS[i + 1:]) if i >= FIRST_CHAR_STEP else None
        funnel.append({"step": step, "documents": docs_left, "characters": chars_left})
    skipped = {key.split("/", 1)[1]: n for key, n in reasons.items() if key.startswith("read/")}
    return {
        "input_records": total,
        "skipped_records": skipped,
        "kept_documents": kept_docs,
        "kept_characters": kept_chars,
        "removed_by_step": dict(removed_docs),
        "removed_by_reason": dict(sorted(reasons.items())),
        "funnel": funnel,
    }


def plot_funnel(funnel: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in funnel]
    fig, (docs_ax, chars_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    docs_ax.bar(steps, [row["documents"] for row in funnel], color="#4c72b0")
    docs_ax.set_title("documents left after each step")
    char_rows = [row for row in funnel if row["characters"] is not None]
    chars_ax.bar([r["step"] for r in char_rows], [r["characters"] / 1e6 for r in char_rows], color="#dd8452")
    chars_ax.set_title("characters left (millions), from extraction on")
    for ax in (docs_ax, chars_ax):
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(storage: Storage, rel: str, local: Path, timings: dict[str, float] | None = None) -> dict:
    """stats.json and funnel.png of the data step at `rel` in storage, written into the local folder `local`."""
    stats = collect(storage, rel)
    if timings:
        stats["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    (Path(local) / "stats.json").write_text(json.dumps(stats, indent=2))
    plot_funnel(stats["funnel"], Path(local) / "funnel.png")
    return stats


if __name__ == "__main__":
    folder = Path(sys.argv[1]).resolve()
    print(json.dumps(write_report(Storage(StorageConfig(uri=str(folder.parent))), folder.name, folder), indent=2))
