"""The rlhf step: GRPO against the proxy reward model, KL to SFT, and the hacking alarm.

    raylm rlhf     # <run>/sft/hf + <run>/reward -> <run>/rlhf/hf (the kept checkpoint), history.json, plots

The loop is RL's (raylm/rl/steps.py: GrpoSteps; vLLM rollout actors, a learner
actor, in-memory weight pushes) with the reward from the proxy reward model,
scored by a pool of Ray actors (raylm/rlhf/scorer.py). Per step: the proxy's
scores, whitened over the batch (`normalize_reward`), minus `length_penalty` per
token; the KL to the SFT model is measured always (k3, per token and summed per
answer), and penalised with `kl_coef`. With `ptx_coef` > 0 every update also takes
the SFT loss on fresh demonstrations of the other task families (`demonstrations`),
so that what SFT taught outside the rewarded prompts is not traded away.

Every `eval_every` steps, greedy answers to `validation_prompts` prompts (unseen
prompts on training subjects) are scored by the proxy and by the **watcher**
reward model (trained on the other half of the rankings). The watcher's score is
the validation signal: the best checkpoint by it is kept. The hacking alarm
(raylm/rlhf/monitor.py) fires when the samples leave the reward model's support
(longer, more repetitive or more novel than its training answers, or less likely
under the SFT model, which wrote those answers, than 99% of its own first batch
was; checked after every step, a step it fires at is validated too), when proxy and watcher stop
ordering each step's samples alike (no more alike than two independent judges as accurate as they
are; every step), or when the watcher falls while the proxy rises (checked at each validation);
`alarm: rollback` then restores the kept checkpoint and stops, `stop` stops, `off` only records it.

The gold judge (the synthetic rater's noise-free rule) never steers anything
here; it is logged beside each evaluation (gold score, win rate over the SFT
model's answers) so that RESULTS can show what the proxy's rise was worth. At
the end, `rlhf.final_prompts` held-out-subject prompts are answered once by SFT and
once by the kept policy (sampled, same seed): the gold win rate with its
bootstrap interval.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter

import torch

from raylm.config import RunConfig
from raylm.eval.stats import SAMPLES, mean_interval
from raylm.rl.driver import step_tasks
from raylm.rl.learner import Learner
from raylm.rl.rollout import RolloutPool
from raylm.rl.steps import GrpoSteps
from raylm.rlhf.monitor import HackingAlarm, Support, agreement, agreement_floor
from raylm.rlhf.scorer import ScorerPool
from raylm.runs import StepResult, Work
from raylm.tasks import Task, generate_tasks
from raylm.tasks.poem import gold_score
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat, answer_text

VALIDATION_SEED, FINAL_SEED, DEMO_SEED = 9001, 9002, 9003


def demonstrations(cfg: RunConfig, chat: ChatFormat, step: int) -> list[tuple[list[int], list[int]]] | None:
    """`rlhf.ptx_demos` SFT conversations for this step (ids, assistant-token mask), drawn in proportion to
    sft.mix from its families other than RLHF's own; None when `ptx_coef` is 0."""
    rl = cfg.rlhf
    mix = {f: n for f, n in cfg.sft.mix.items() if f not in rl.families and n > 0}
    if rl.ptx_coef == 0 or not mix:
        return None
    rng = random.Random(f"{DEMO_SEED}-{rl.seed}-{step}")
    counts = Counter(rng.choices(sorted(mix), weights=[mix[f] for f in sorted(mix)], k=rl.ptx_demos))
    rendered = [chat.render(t.conversation()) for t in generate_tasks(dict(counts), DEMO_SEED * 1_000_003 + step)]
    return [(r.ids, r.mask) for r in rendered if len(r.ids) <= cfg.sft.seq_len + 1]


def final_tasks(count: int) -> list[Task]:
    from raylm.tasks.poem import generate_heldout

    rng = random.Random(FINAL_SEED)
    return [generate_heldout(rng) for _ in range(count)]


def answers(pool: RolloutPool, chat: ChatFormat, tasks: list[Task], temperature: float, max_new_tokens: int,
            seed: int = 0) -> list[str]:
    groups = pool.generate([chat.prompt(t.messages) for t in tasks], 1, temperature, max_new_tokens, seed=seed)
    return [answer_text(chat.parse(g[0].ids)) for g in groups]


def win_rate(tasks: list[Task], ours: list[str], theirs: list[str], samples: int = SAMPLES) -> dict:
    """Gold-judge wins of `ours` over `theirs` (a tie counts half), with an item bootstrap 95% interval."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in
            ((gold_score(t.answer, x), gold_score(t.answer, y)) for t, x, y in zip(tasks, ours, theirs))]
    return {"win_rate": sum(wins) / len(wins), "ci95": list(mean_interval(wins, samples)), "prompts": len(wins)}


class Validation:
    """Greedy answers to fixed prompts, scored by proxy and watcher (and, for the record only, by gold)."""

    def __init__(self, cfg: RunConfig, pool: RolloutPool, scorers: ScorerPool, chat: ChatFormat):
        self.cfg, self.pool, self.scorers, self.chat = cfg.rlhf, pool, scorers, chat
        self.tasks = generate_tasks({f: -(-cfg.rlhf.validation_prompts // len(cfg.rlhf.families))
                                     for f in cfg.rlhf.families}, VALIDATION_SEED)
        self.sft_answers: list[str] | None = None

    def __call__(self) -> dict:
        texts = answers(self.pool, self.chat, self.tasks, 0.0, self.cfg.max_new_tokens)
        if self.sft_answers is None:
            self.sft_answers = texts
        pairs = [(t.messages, a) for t, a in zip(self.tasks, texts)]
        proxy = self.scorers.score("proxy", pairs)
        gold = [gold_score(t.answer, a) for t, a in zip(self.tasks, texts)]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        top = sorted(range(len(texts)), key=lambda i: -proxy[i])[:5]  # what the proxy likes best, for the record
        return {"val/proxy": mean(proxy), "val/watch": mean(self.scorers.score("watch", pairs)),
                "val/length": mean([len(self.chat.text(a)) for a in texts]), "gold/score": mean(gold),
                "gold/win_rate_vs_sft": win_rate(self.tasks, texts, self.sft_answers, samples=1)["win_rate"],
                "val/top_answers": [{"prompt": self.tasks[i].messages[-1]["content"], "answer": texts[i],
                                     "proxy": proxy[i], "gold": gold[i]} for i in top]}


def run_rlhf(cfg: RunConfig, sft: StepResult, reward: StepResult, work: Work, state_rel: str) -> dict:
    import ray

    rl, storage, policy = cfg.rlhf, work.storage, f"{sft.rel}/hf"
    chat = ChatFormat(load(storage.local(policy, only=("tokenizer.json",))))
    support = Support(**reward.metrics["proxy"]["support"])
    learner = ray.remote(Learner).options(num_cpus=rl.learner_cpus, num_gpus=rl.learner_gpus).remote(
        storage, policy, rl, chat.tok.token_to_id("<|pad|>"), track_kl=True, demo_coef=rl.ptx_coef)
    pool = RolloutPool(rl.engine, storage, policy, rl.num_rollout_workers, [chat.im_end], rl.rollout_cpus,
                       rl.rollout_gpus, rl.kv_cache_gib, rl.seed, rl.gpu_memory_utilization)
    scorers = ScorerPool(storage, {"proxy": f"{reward.rel}/hf", "watch": f"{reward.rel}/watch/hf"},
                         cfg.reward.scorer_actors, cfg.reward.scorer_cpus)
    try:
        final = final_tasks(rl.final_prompts)
        sft_final = answers(pool, chat, final, 1.0, rl.max_new_tokens, seed=rl.seed)
        history, alarm = train(cfg, learner, pool, scorers, chat, support, reward, state_rel)
        kept = ray.get(learner.restore_best.remote())
        pool.sync_from(learner)
        result = win_rate(final, answers(pool, chat, final, 1.0, rl.max_new_tokens, seed=rl.seed), sft_final)
        ray.get(learner.export.remote(f"{work.rel}/hf", policy))
    finally:
        pool.shutdown()
        scorers.shutdown()
        ray.kill(learner)
    (work.local / "history.json").write_text(json.dumps(history, indent=1))
    plot(history, work.local)
    lo, hi = result["ci95"]
    print(f"[rlhf] kept the checkpoint of step {kept} (best watcher validation score); gold-judge win rate over "
          f"SFT on {result['prompts']} held-out prompts: {result['win_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%})",
          flush=True)
    evals = [m for m in history if "val/watch" in m]
    return {"steps": history[-1]["step"], "kept_step": kept, "alarm": alarm, "final_gold_win_rate": result,
            "kept": next(m for m in evals if m["step"] == kept), "last": evals[-1],
            "kl_coef": rl.kl_coef, "lr": rl.lr, "reward_accuracy": reward.metrics["proxy"]["accuracy"],
            "reward_gold_accuracy": reward.metrics["proxy"]["gold_accuracy"]}


def alarm_floor(cfg: RunConfig, reward: StepResult) -> float | None:
    """The agreement signal's floor from the reward models' held-out accuracy against the labels and how often
    a rater is right (configured; the synthetic rater's by construction); None turns the signal off."""
    rater = cfg.rlhf.alarm_rater_accuracy
    if rater is None and cfg.preferences.rater == "synthetic":
        rater = cfg.preferences.rater_agreement
    if rater is None:
        print("[rlhf] the alarm's agreement signal is off: set rlhf.alarm_rater_accuracy (how often one labeler "
              "orders a pair right) to turn it on", flush=True)
        return None
    floor = agreement_floor((reward.metrics["proxy"]["accuracy"], reward.metrics["watch"]["accuracy"]), rater)
    print(f"[rlhf] hacking alarm: proxy and watcher must order the samples alike on at least {floor:.1%} of pairs "
          f"(two independent judges as accurate as they are, raters right {rater:.0%} of the time)", flush=True)
    return floor


def train(cfg: RunConfig, learner, pool: RolloutPool, scorers: ScorerPool, chat: ChatFormat, support: Support,
          reward: StepResult, state_rel: str) -> tuple[list[dict], dict | None]:
    import ray

    rl = cfg.rlhf
    validation = Validation(cfg, pool, scorers, chat)
    alarm = HackingAlarm(rl.alarm_support, rl.alarm_divergence, reward.metrics["watch"]["score_spread"],
                         alarm_floor(cfg, reward))
    start, history = ray.get(learner.restore.remote(state_rel))
    started = time.perf_counter()
    first = validation()  # the pool still holds the SFT model: its answers are the gold win rate's reference
    if start:
        print(f"[rlhf] restored from step {start}", flush=True)
        pool.sync_from(learner)
        for m in history:  # the alarm as it stood: every step's support share, every validation's scores
            share = max(m.get("support_outside", 0.0), m.get("support_unlikely", 0.0))
            if "rm_agreement" in m:
                alarm.agreement(m["step"], m["rm_agreement"])
            if "val/watch" in m:
                alarm.update(m["step"], m["val/proxy"], m["val/watch"], share)
            else:
                alarm.support(m["step"], share)
    else:
        history.append({"step": 0, **first, "kl_seq": 0.0})
        ray.get(learner.keep_best.remote(0))
        print(f"[rlhf] start: {_fmt(history[0])} ({time.perf_counter() - started:.0f}s)", flush=True)
    outside: list[float] = []  # every scoring round's share (refills too), then the step's unlikely share

    def score(tasks: list[Task], groups) -> tuple[torch.Tensor, dict]:
        texts = [[answer_text(chat.parse(s.ids)) for s in group] for group in groups]
        pairs = [(t.messages, a) for t, group in zip(tasks, texts) for a in group]
        raw = torch.tensor(scorers.score("proxy", pairs)).view(len(tasks), -1)
        watch = torch.tensor(scorers.score("watch", pairs)).view(len(tasks), -1)
        rewards = (raw - raw.mean()) / (raw.std() + 1e-6) if rl.normalize_reward else raw.clone()
        lengths = torch.tensor([[len(s.ids) for s in group] for group in groups], dtype=torch.float)
        rewards -= rl.length_penalty * lengths
        share = support.outside([(a, len(chat.text(a)), m[-1]["content"]) for m, a in pairs])
        outside.append(share)
        return rewards, {"proxy_score": float(raw.mean()), "support_outside": share,
                         "watch_score": float(watch.mean()), "rm_agreement": agreement(raw.tolist(), watch.tolist())}

    best, best_step = max(((m["val/watch"], m["step"]) for m in history if "val/watch" in m),
                          default=(-math.inf, 0))
    limit = next((m["support_nll_limit"] for m in history if "support_nll_limit" in m), None)
    with GrpoSteps(rl, learner, pool, chat, score, lambda step: step_tasks(rl, step),
                   demos=lambda step: demonstrations(cfg, chat, step), start=start) as steps:
        for step in range(start, rl.steps):
            metrics = steps.run(step)
            done = step + 1
            stop = False
            nll = metrics.pop("ref_nll", [])
            if limit is None and nll:  # the first batch is the SFT model's own: what its answers are like
                limit = metrics["support_nll_limit"] = sorted(nll)[min(len(nll) - 1, int(0.99 * len(nll)))]
            metrics["support_unlikely"] = sum(x > limit for x in nll) / len(nll) if nll else 0.0
            outside.append(metrics["support_unlikely"])
            share = max(outside, default=0.0)
            outside.clear()
            # the support needs no validation: it is checked every step, and a step it fires at is validated
            # too (the record shows where the scores stood, and what a rollback goes back from)
            reasons = alarm.support(done, share), alarm.agreement(done, metrics["rm_agreement"])
            reason = reasons[0] or reasons[1]
            fires_now = bool(reason) and alarm.fired["step"] == done
            if done % rl.eval_every == 0 or done == rl.steps or fires_now:
                metrics.update(validation())
                reason = alarm.update(done, metrics["val/proxy"], metrics["val/watch"], share) or reason
                if metrics["val/watch"] > best and alarm.may_keep(done):
                    best, best_step = metrics["val/watch"], done
                    ray.get(learner.keep_best.remote(done))
                if reason and alarm.fired["step"] == done:
                    alarm.fired["kept_step"] = best_step  # what a rollback restores (also recorded with alarm=off)
                    action = {"rollback": "rolling back to the kept checkpoint and stopping", "stop": "stopping",
                              "off": "going on (rlhf.alarm=off)"}[rl.alarm]
                    print(f"[rlhf] HACKING ALARM at step {done}: {reason}; {action}", flush=True)
                    stop = rl.alarm != "off"
            history.append(metrics)
            print(f"[rlhf] step {done}/{rl.steps} " + _fmt(metrics), flush=True)
            if stop or done % rl.checkpoint_every == 0 or done == rl.steps:
                ray.get(learner.save.remote(state_rel, history))
            if stop:
                break
    return history, alarm.fired


def _fmt(m: dict) -> str:
    parts = []
    if "proxy_score" in m:
        sft = f" sft nll {m['ptx_nll']:.3f}" if "ptx_nll" in m else ""
        parts.append(f"proxy {m['proxy_score']:+.3f} kl/answer {m.get('kl_seq', 0):.2f} len {m['response_length']:.0f} "
                     f"outside {m['support_outside']:.0%}/{m.get('support_unlikely', 0):.0%} "
                     f"agree {m.get('rm_agreement', 1):.0%}{sft} | "
                     f"gen {m['generate_s']:.1f}s train {m['train_s']:.1f}s")
    if "val/watch" in m:
        parts.append(f"val proxy {m['val/proxy']:+.3f} watch {m['val/watch']:+.3f} "
                     f"(gold {m['gold/score']:.2f}, win vs SFT {m['gold/win_rate_vs_sft']:.0%}; report only)")
    return " ".join(parts)


def plot(history: list[dict], folder) -> None:
    """Proxy and gold against sqrt(KL) (Gao et al. 2022), and the scores over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [m for m in history if "val/watch" in m]
    kl = [math.sqrt(max(_kl_at(history, m["step"]), 0.0)) for m in evals]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("val/proxy", "proxy reward model"), ("val/watch", "watcher reward model"),
                       ("gold/score", "gold judge (report only)")):
        axes[0].plot(kl, [m[key] for m in evals], "o-", label=label)
        axes[1].plot([m["step"] for m in evals], [m[key] for m in evals], "o-", label=label)
    axes[0].set_xlabel("sqrt(KL to SFT), nats per answer")
    axes[1].set_xlabel("RLHF step")
    for ax in axes:
        ax.set_ylabel("score on validation prompts")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "proxy_gold_kl.png", dpi=100)
    plt.close(fig)


def _kl_at(history: list[dict], step: int) -> float:
    """The answer-level KL of the training step at `step` (0 before any update)."""
    return next((m.get("kl_seq", 0.0) for m in history if m["step"] == step and "kl_seq" in m), 0.0)
