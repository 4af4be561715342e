"""The eval table: several checkpoints side by side, as Markdown, JSON and a PNG chart, with error bars.

    write_report(results, Path("runs/tiny/eval"))   # report.md, results.json, chart.png

Every cell shows the metric and its bootstrap 95% interval over the held-out tasks.
Below the table, each checkpoint is paired task by task with the baseline column
(the SFT model when there is one: RL and RLHF both start from it), and the
differences in points carry their own intervals (raylm/eval/stats.py); a
difference whose interval excludes zero is printed in bold. `rl_families`, when
given, adds one line for the RL step's own families: the gain it was run for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from raylm.eval.stats import paired_difference

LOWER_IS_BETTER = {"false_refusal_rate", "val_bpb", "mean_reply_tokens", "english_bpb", "english_word_order"}
# Not shares of tasks: printed as plain numbers, without an interval, and left out of the chart.
PLAIN = {"val_bpb", "english_bpb", "english_shuffled_bpb", "english_word_order"}


def _step_dir(checkpoint: str) -> Path:
    """runs/tiny/sft/hf -> runs/tiny/sft; any other folder -> itself."""
    path = Path(checkpoint)
    return path.parent if path.name == "hf" else path


def label_of(checkpoint: str) -> str:
    """runs/tiny/sft/hf -> sft; any other folder -> its name."""
    return _step_dir(checkpoint).name


def _labels(results: list[dict]) -> list[str]:
    """Column names; checkpoints of the same step from different runs (runs/a/sft/hf, runs/b/sft/hf) are
    told apart by their run (a/sft, b/sft), so each gets its own column of paired differences."""
    labels = [r.get("label") or label_of(r["checkpoint"]) for r in results]
    repeated = {label for label in labels if labels.count(label) > 1}
    labels = [f"{_step_dir(r['checkpoint']).parent.name}/{label}" if label in repeated and not r.get("label")
              else label for label, r in zip(labels, results)]
    return [label if labels.count(label) == 1 else f"{label} ({i + 1})" for i, label in enumerate(labels)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(name: str, value, interval=None) -> str:
    if _missing(value):
        return "n/a"
    if name in PLAIN:
        return f"{value:.3f}"
    if name == "mean_reply_tokens":
        return f"{value:.1f}" + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")
    return f"{_pct(value)}%" + (f" [{_pct(interval[0])}, {_pct(interval[1])}]" if interval else "")


def _pct(share: float) -> str:
    return str(round(100 * share) or 0)  # no "-0"


def markdown_table(results: list[dict]) -> str:
    labels = _labels(results)
    names = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    lines = ["| metric | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for name in names:
        cells = [_cell(name, r["metrics"].get(name, math.nan), r.get("ci95", {}).get(name)) for r in results]
        arrow = " (lower is better)" if name in LOWER_IS_BETTER else ""
        lines.append(f"| {name}{arrow} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in results})
    lines.append("")
    lines.append(f"{results[0]['num_tasks']} held-out tasks per checkpoint (seed {', '.join(map(str, seeds))}); "
                 "greedy decoding; tools run by the eval harness; in brackets the bootstrap 95% interval over tasks.")
    return "\n".join(lines)


def baseline_index(results: list[dict]) -> int:
    """The column the others are paired with: SFT when present, else the first."""
    labels = _labels(results)
    return labels.index("sft") if "sft" in labels else 0


def paired(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{label: {metric: paired_difference(baseline, label)}} for every other column that answered the same tasks."""
    base = results[baseline_index(results)]
    out: dict[str, dict[str, dict]] = {}
    for label, r in zip(_labels(results), results):
        if r is base or "scores" not in r or (r["seed"], r["num_tasks"]) != (base["seed"], base["num_tasks"]):
            continue
        out[label] = {name: paired_difference(base["scores"][name], values)
                      for name, values in r["scores"].items()
                      if name in base["scores"] and len(values) == len(base["scores"][name])}
    return out


def _points(name: str, d: dict) -> str:
    scale = 1 if name == "mean_reply_tokens" else 100
    lo, hi = d["ci95"]
    text = f"{scale * d['diff']:+.1f} ({scale * lo:+.1f}, {scale * hi:+.1f})"
    return f"**{text}**" if lo > 0 or hi < 0 else text


def paired_section(diffs: dict[str, dict[str, dict]], base: str) -> str:
    """`diffs` from paired(); `base`: the baseline column's label."""
    if not diffs:
        return ""
    names = list(dict.fromkeys(k for d in diffs.values() for k in d))
    lines = ["", "", f"## Paired differences from {base}", "",
             "| metric | " + " | ".join(f"{label} - {base}" for label in diffs) + " |",
             "| --- |" + " ---: |" * len(diffs)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_points(name, d[name]) if name in d else "n/a"
                                                  for d in diffs.values()) + " |")
    lines += ["", "Points (tokens for mean_reply_tokens), the same tasks answered by both checkpoints, "
              "with the paired bootstrap 95% interval; bold: the interval excludes zero."]
    return "\n".join(lines)


def rl_gain(results: list[dict], families: list[str]) -> str:
    """One line: the RL checkpoint's paired gain over SFT on the families RL trained on."""
    labels = _labels(results)
    if "rl" not in labels or "sft" not in labels:
        return ""
    sft, rl = results[labels.index("sft")], results[labels.index("rl")]
    names = [f"acc/{f}" for f in families if f"acc/{f}" in sft.get("scores", {})]
    if not names or "scores" not in rl:
        return ""
    before = [x for n in names for x in sft["scores"][n]]
    after = [x for n in names for x in rl["scores"][n]]
    d = paired_difference(before, after)
    lo, hi = d["ci95"]
    verdict = "a gain" if lo > 0 else "a loss" if hi < 0 else "not distinguishable from zero on these tasks"
    return (f"RL on its families ({', '.join(families)}): SFT {sum(before) / len(before):.1%} -> RL "
            f"{sum(after) / len(after):.1%}, {100 * d['diff']:+.1f} points (paired 95% interval "
            f"{100 * lo:+.1f} to {100 * hi:+.1f}, {d['items']} tasks): {verdict}")


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

    names = [k for k in results[0]["metrics"] if k not in PLAIN | {"mean_reply_tokens"}]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) * len(results) + 1.5))
    height = 0.8 / len(results)
    for j, r in enumerate(results):
        values = [100 * (r["metrics"].get(n) or 0) for n in names]
        bounds = [r.get("ci95", {}).get(n) or [v / 100, v / 100] for n, v in zip(names, values)]
        errors = [[max(0.0, v - 100 * lo) for v, (lo, _) in zip(values, bounds)],
                  [max(0.0, 100 * hi - v) for v, (_, hi) in zip(values, bounds)]]
        ax.barh([i + j * height for i in range(len(names))], values, height, xerr=errors,
                error_kw={"elinewidth": 0.8, "capsize": 2}, label=r.get("label") or label_of(r["checkpoint"]))
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("%")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_text(results: list[dict], rlhf: dict | None = None, rl_families: list[str] | None = None) -> str:
    """The table, the paired differences (also stored in each result as "paired"), the RL gain, the RLHF section."""
    diffs, base = paired(results), _labels(results)[baseline_index(results)]
    for label, r in zip(_labels(results), results):
        if label in diffs:
            r["paired"] = {"baseline": base, "differences": diffs[label]}
    gain = rl_gain(results, rl_families) if rl_families else ""
    return (markdown_table(results) + paired_section(diffs, base) + ("\n\n" + gain if gain else "")
            + (rlhf_section(rlhf) if rlhf else ""))


def write_report(results: list[dict], out_dir: Path, json_path: Path | None = None, rlhf: dict | None = None,
                 rl_families: list[str] | None = None) -> str:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = report_text(results, rlhf, rl_families)
    (out_dir / "report.md").write_text("# Capability eval\n\n" + text + "\n")
    payload = json.dumps(results, indent=2, default=str)
    (out_dir / "results.json").write_text(payload)
    if json_path:
        Path(json_path).write_text(payload)
    plot(results, out_dir / "chart.png")
    return text
