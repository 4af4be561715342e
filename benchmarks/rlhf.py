"""RLHF's claims, measured on a finished run: reward-model accuracy with its controls, and reward hacking.

    python benchmarks/rlhf.py --name tiny                      # needs finished sft, preferences, reward, rlhf steps
    python benchmarks/rlhf.py --name tiny --hack-steps 60 --hack-lr 0.0005 --hack-eval-every 2

1. Reward models on held-out pairs (held-out subjects): the run's proxy and
   watcher (from the reward step), the length-only baseline, and a control trained
   here on the same rankings with **shuffled labels** (each ranking's order replaced
   by a random one): it must land near chance, or the accuracy comes from
   something other than the labels.
2. RLHF with KL (the run's rlhf step): the gold-judge win rate of the kept
   checkpoint over SFT on the held-out prompts, with its bootstrap interval.
3. Reward hacking: the rlhf step run again into benchmarks/out/rlhf_hack with KL
   and the SFT loss (ptx) off, a higher learning rate and the alarm set to `off`
   (it records when it would fire and training goes on), so the proxy's rise and the gold judge's fall
   after it can be seen; proxy and gold against sqrt(KL) are plotted
   (Gao et al. 2022) and the five answers the proxy scores highest at the end are
   printed.
4. The SFT loss mix (`rlhf.ptx_coef`): the rlhf step run again with ptx off into
   <run>/benchmarks/rlhf_noptx, then SFT, the run's RLHF model and that one
   evaluated on the same `--eval-tasks` held-out tasks per family (greedy): what
   RLHF on poems costs the other families with and without the mix.
Markdown for benchmarks/RESULTS.md goes to stdout and benchmarks/out/rlhf.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).parent / "out"


def shuffled_control(run, cfg) -> dict:
    """A proxy trained on the same rankings with shuffled orders, scored on the held-out rankings."""
    import json as _json

    from raylm.rlhf.reward import evaluate, train_reward_models
    from raylm.rlhf.preferences import open_labels
    from raylm.runs import Work
    from raylm.tokenizer.bpe import load
    from raylm.tokenizer.chat import ChatFormat

    reward, sft = run.result("reward"), run.result("sft")
    folder = reward.storage.local(reward.rel)
    data = _json.loads((folder / "proxy.json").read_text())
    chat = ChatFormat(load(sft.storage.local(f"{sft.rel}/hf")))
    pad = chat.tok.token_to_id("<|pad|>")
    work_dir = OUT / "rlhf_shuffled"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    # in the run's storage, beside the models it starts from (every Ray Train worker reads both there)
    work = Work(run.storage, f"{cfg.name}/benchmarks/reward_shuffled", work_dir)
    (work_dir / "proxy.json").write_text(_json.dumps(data))
    from raylm.train.reward_loop import RewardJob

    job = RewardJob(name="shuffled", data_file=work.publish("proxy.json"), shuffle_labels=True)
    model, scores = train_reward_models(cfg, sft, work, f"control-{reward.digest}", [job], pad)["shuffled"]
    store = open_labels(cfg, run.result("preferences"))
    heldout_ids = [r["item"] for r in data["val"]]
    by_id = {r.item.id: r for r in store.rankings(model=run.result("preferences").metrics["model"])}
    return evaluate(model, data["val"], [by_id[i] for i in heldout_ids], pad, scores)


def rerun_rlhf(run, cfg, folder: str, **changes):
    """The rlhf step again with `changes` to cfg.rlhf, into <run>/benchmarks/<folder>: in the run's storage,
    where the rlhf step reads its inputs. Returns its StepResult."""
    from raylm.steps import Run

    changed = cfg.model_copy(deep=True)
    for key, value in changes.items():
        setattr(changed.rlhf, key, value)
    rel = f"{cfg.name}/benchmarks/{folder}"
    if run.storage.exists(rel):
        run.storage.delete(rel)
    return Run(changed, on_work=run.on_work).execute("rlhf", at=(run.storage, rel))


def hacking_run(run, cfg, steps: int, lr: float, eval_every: int, validation_prompts: int, seed: int) -> dict:
    # no SFT loss (ptx) either: nothing holds the policy near SFT
    result = rerun_rlhf(run, cfg, "rlhf_hack", kl_coef=0.0, ptx_coef=0.0, lr=lr, steps=steps, alarm="off",
                        eval_every=eval_every, validation_prompts=validation_prompts, seed=seed)
    folder = result.storage.local(result.rel)
    shutil.copy(folder / "proxy_gold_kl.png", Path(__file__).parent / "rlhf_hacking.png")
    return {"metrics": result.metrics, "history": json.loads((folder / "history.json").read_text())}


def ptx_control(run, cfg, tasks_per_family: int) -> list[str]:
    """RLHF again with ptx_coef 0, then SFT / RLHF / RLHF without ptx on the same held-out tasks: markdown lines."""
    from raylm.eval.capability import evaluate_many
    from raylm.eval.stats import paired_difference

    result = rerun_rlhf(run, cfg, "rlhf_noptx", ptx_coef=0.0)
    eval_cfg = cfg.eval.model_copy(update={"num_per_family": tasks_per_family})
    models = {"sft": run.result("sft"), f"rlhf (ptx_coef {cfg.rlhf.ptx_coef:g})": run.result("rlhf"),
              "rlhf (ptx_coef 0)": result}
    scores = evaluate_many([r.storage.child(f"{r.rel}/hf") for r in models.values()], eval_cfg)
    names = list(models)
    lines = [f"| {tasks_per_family} held-out tasks per family, greedy | " + " | ".join(names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for key in [k for k in scores[0]["metrics"] if k.startswith("acc/") and k != "acc/poem"] + ["poem_gold_score"]:
        sft = scores[0]["metrics"][key]
        cells = [f"{sft:.1%}"]
        for s in scores[1:]:  # the same tasks for every column: paired differences in points, 95% interval
            d = paired_difference(scores[0]["scores"][key], s["scores"][key])
            cells.append(f"{s['metrics'][key]:.1%} ({100 * d['diff']:+.1f}; {100 * d['ci95'][0]:+.1f} to "
                         f"{100 * d['ci95'][1]:+.1f})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    wins = [run.result("rlhf").metrics["final_gold_win_rate"], result.metrics["final_gold_win_rate"]]
    lines += ["", "Gold-judge win rate over SFT on the held-out poem prompts: " + "; ".join(
        f"{name} {w['win_rate']:.1%} ({w['ci95'][0]:.1%}-{w['ci95'][1]:.1%})" for name, w in zip(names[1:], wins))]
    return lines


def summarize_hack(hack: dict) -> dict:
    evals = [m for m in hack["history"] if "val/watch" in m]
    peak = max(evals, key=lambda m: m["gold/win_rate_vs_sft"])
    last = evals[-1]
    fired = hack["metrics"]["alarm"]
    at_alarm = next((m for m in evals if fired and m["step"] == fired["step"]), None)
    kept_step = fired["kept_step"] if fired else hack["metrics"]["kept_step"]  # what the alarm rolls back to
    kept = next(m for m in evals if m["step"] == kept_step)
    best, fell = 0.0, None  # the first validation at which gold stands 5 points below its best so far
    for m in evals:
        best = max(best, m["gold/win_rate_vs_sft"])
        if fell is None and m["gold/win_rate_vs_sft"] <= best - 0.05:
            fell = m["step"]
    return {"peak_step": peak["step"], "peak_win": peak["gold/win_rate_vs_sft"], "last_win": last["gold/win_rate_vs_sft"],
            "proxy_first": evals[0]["val/proxy"], "proxy_peak_step": peak["val/proxy"], "proxy_last": last["val/proxy"],
            "alarm_step": fired["step"] if fired else None, "alarm_reason": fired["reason"] if fired else None,
            "win_at_alarm": at_alarm["gold/win_rate_vs_sft"] if at_alarm else None,
            "kept_step": kept_step, "kept_win": kept["gold/win_rate_vs_sft"], "fell_5_step": fell,
            "top_answers": last["val/top_answers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--name", default=None)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--hack-steps", type=int, default=60)
    parser.add_argument("--hack-lr", type=float, default=5e-4)
    parser.add_argument("--hack-eval-every", type=int, default=2,
                        help="validation (and alarm) every this many steps; the preset's 5 is too coarse to time")
    parser.add_argument("--hack-validation-prompts", type=int, default=64,
                        help="greedy validation prompts (gold win rate over SFT): 64 moves ~6 points by chance")
    parser.add_argument("--hack-seed", type=int, default=None, help="rlhf.seed of the hacking run (default: the run's)")
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--skip-hack", action="store_true")
    parser.add_argument("--skip-ptx", action="store_true")
    parser.add_argument("--eval-tasks", type=int, default=200, help="held-out tasks per family (ptx comparison)")
    args = parser.parse_args()

    from raylm.config import load_config
    from raylm.ray_setup import init_ray
    from raylm.steps import Run

    cfg = load_config(args.config, args.override)
    if args.name:
        cfg.name = args.name
    run = Run(cfg, on_work=lambda: init_ray(cfg))
    for step in ("sft", "preferences", "reward", "rlhf"):
        if run.result(step) is None:
            sys.exit(f"step {step} is not finished and current in run {cfg.name}: run `raylm run` first")
    init_ray(cfg)
    OUT.mkdir(exist_ok=True)
    started = time.time()
    reward, rlhf = run.result("reward").metrics, run.result("rlhf").metrics
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
             f"({platform.processor() or platform.machine()}, {_cores()} cores), config `{args.config}` run "
             f"`{cfg.name}`{' with ' + ', '.join(args.override) if args.override else ''}.", "",
             "| held-out pairs (subjects never trained on) | vs labels | 95% CI | vs gold order |",
             "| --- | ---: | ---: | ---: |"]
    rows = [("proxy reward model", reward["proxy"]), ("watcher reward model (other half)", reward["watch"])]
    if not args.skip_control:
        # one control per reward model: the digest names the config, the finish time this training of it
        # (SFT is not bit-reproducible, so a from-scratch rerun of the same config trains other models)
        reward_step = run.result("reward")
        cached = OUT / f"rlhf_shuffled_{reward_step.digest}_{reward_step.manifest['timings']['finished']:.0f}.json"
        if not cached.exists():
            cached.write_text(json.dumps(shuffled_control(run, cfg)))
        rows.append(("control: proxy trained on shuffled labels", json.loads(cached.read_text())))
    for label, m in rows:
        lo, hi = m["accuracy_ci95"]
        lines.append(f"| {label} | {m['accuracy']:.1%} | {lo:.1%}-{hi:.1%} | {m['gold_accuracy']:.1%} |")
    lines.append(f"| length only ({reward['length_baseline']['rule']}) | {reward['length_baseline']['accuracy']:.1%} "
                 f"| | |")
    win = rlhf["final_gold_win_rate"]
    lines += ["", f"RLHF (kl_coef {rlhf['kl_coef']}, lr {rlhf['lr']}): kept step {rlhf['kept_step']}, gold win rate "
              f"over SFT {win['win_rate']:.1%} (95% CI {win['ci95'][0]:.1%}-{win['ci95'][1]:.1%}) on "
              f"{win['prompts']} held-out prompts; alarm: {rlhf['alarm'] or 'did not fire'}."]
    if not args.skip_hack:
        seed = cfg.rlhf.seed if args.hack_seed is None else args.hack_seed
        hack = summarize_hack(hacking_run(run, cfg, args.hack_steps, args.hack_lr, args.hack_eval_every,
                                          args.hack_validation_prompts, seed))
        lines += ["", f"Hacking run (kl_coef 0, ptx_coef 0, lr {args.hack_lr}, seed {seed}, {args.hack_steps} steps, "
                  f"validation every {args.hack_eval_every} on {args.hack_validation_prompts} prompts, "
                  f"alarm off = recorded): "
                  f"proxy {hack['proxy_first']:+.3f} -> {hack['proxy_last']:+.3f}; gold win rate peak "
                  f"{hack['peak_win']:.1%} at step {hack['peak_step']}, last {hack['last_win']:.1%}; first 5 points below "
                  f"its best so far at step {hack['fell_5_step']}; alarm at step "
                  f"{hack['alarm_step']} (gold win rate then {hack['win_at_alarm']}): {hack['alarm_reason']}; the "
                  f"checkpoint a rollback restores: step {hack['kept_step']}, gold win rate {hack['kept_win']:.1%}.",
                  "",
                  "The five answers the proxy scores highest at the end:", ""]
        for t in hack["top_answers"]:
            lines.append(f"- proxy {t['proxy']:+.2f}, gold {t['gold']:.2f}: {t['prompt']} -> "
                         f"`{t['answer'][:200]!r}`")
        lines += ["", "![proxy and gold against sqrt(KL)](rlhf_hacking.png)"]
    if not args.skip_ptx:
        lines += ["", "What RLHF on poems costs the other task families, with and without the SFT loss mix:", ""]
        lines += ptx_control(run, cfg, args.eval_tasks)
    lines.append(f"\n({time.time() - started:.0f} s)")
    text = "\n".join(lines)
    (OUT / "rlhf.md").write_text(text + "\n")
    print(text)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
