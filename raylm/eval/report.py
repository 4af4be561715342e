"""The eval table: several checkpoints side by side, as Markdown, JSON and a PNG chart.

    write_report(results, Path("runs/tiny/eval"))   # report.md, results.json, chart.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LOWER_IS_BETTER = {"false_refusal_rate", "val_bpb", "mean_reply_tokens"}


def label_of(checkpoint: str) -> str:
    """runs/tiny/sft/hf -> sft; any other folder -> its name."""
    path = Path(checkpoint)
    return path.parent.name if path.name == "hf" else path.name


def markdown_table(results: list[dict]) -> str:
    labels = [r.get("label") or label_of(r["checkpoint"]) for r in results]
    names = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    lines = ["| metric | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for name in names:
        cells = []
        for r in results:
            value = r["metrics"].get(name, math.nan)
            cells.append("n/a" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f"{value:.1f}" if name == "mean_reply_tokens"
                         else f"{value:.3f}" if name == "val_bpb" else f"{100 * value:.0f}%")
        arrow = " (lower is better)" if name in LOWER_IS_BETTER else ""
        lines.append(f"| {name}{arrow} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in results})
    lines.append("")
    lines.append(f"{results[0]['num_tasks']} held-out tasks per checkpoint (seed {', '.join(map(str, seeds))}); "
                 "greedy decoding; tools run by the eval harness.")
    return "\n".join(lines)


def rlhf_section(metrics: dict) -> str:
    """The rlhf step's own measures (its manifest's metrics), under the table."""
    win = metrics["final_gold_win_rate"]
    kept, alarm = metrics["kept"], metrics.get("alarm")
    lines = ["", "", "## RLHF", "",
             f"- reward model (proxy) held-out pair accuracy: {metrics['reward_accuracy']:.1%} against the labels, "
             f"{metrics['reward_gold_accuracy']:.1%} against the gold judge's order",
             f"- gold-judge win rate of the kept RLHF checkpoint (step {metrics['kept_step']}) over SFT: "
             f"{win['win_rate']:.1%} (95% CI {win['ci95'][0]:.1%}-{win['ci95'][1]:.1%}, {win['prompts']} held-out "
             f"prompts)",
             f"- KL to SFT per answer at the kept step: {kept.get('kl_seq', 0.0):.2f} nats; answer length "
             f"{kept['val/length']:.1f} tokens (kl_coef {metrics['kl_coef']})",
             f"- hacking alarm: " + (f"fired at step {alarm['step']}: {alarm['reason']}" if alarm else "did not fire")]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in results[0]["metrics"] if k not in ("val_bpb", "mean_reply_tokens")]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) * len(results) + 1.5))
    height = 0.8 / len(results)
    for j, r in enumerate(results):
        values = [100 * (r["metrics"].get(n) or 0) for n in names]
        ax.barh([i + j * height for i in range(len(names))], values, height,
                label=r.get("label") or label_of(r["checkpoint"]))
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("%")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: list[dict], out_dir: Path, json_path: Path | None = None, rlhf: dict | None = None) -> str:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results) + (rlhf_section(rlhf) if rlhf else "")
    (out_dir / "report.md").write_text("# Capability eval\n\n" + table + "\n")
    payload = json.dumps(results, indent=2, default=str)
    (out_dir / "results.json").write_text(payload)
    if json_path:
        Path(json_path).write_text(payload)
    plot(results, out_dir / "chart.png")
    return table
