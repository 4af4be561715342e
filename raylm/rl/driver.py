"""The rl step: GRPO on verifiable tasks, rollouts from vLLM-backed Ray actors, a learner actor.

    raylm rl          # <run>/sft/hf -> <run>/rl/hf, history.json, reward.png

Each step: draw `prompts_per_step` fresh tasks from `rl.families` (raylm/tasks)
-> the rollout pool samples `group_size` replies to each -> the reward function
(`rl.reward`, any "module:callable" taking (task, reply_text)) scores them ->
group-relative advantages -> one GRPO update on the learner -> the learner pushes
the new weights into the rollout engines in memory itself (in rl.sync_dtype; the
driver only waits and logs pack_s, reload_s and sync_s); the step itself is raylm/rl/steps.py. With
`rl.dynamic_sampling` (DAPO), groups whose replies all scored the same are dropped and fresh tasks fill
the batch; with `rl.overlap`, the next step's rollouts are sampled while the learner trains. Every
`eval_every` steps, held-out pass@1 (greedy, on tasks from another seed) per family. The learner's state is
saved every `checkpoint_every` steps in the run's storage under
rl_state/rl-<step digest>/ and a rerun of the same step continues from it; the
digest covers the SFT model's whole history, so a new SFT model starts afresh.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch

from raylm.config import ConfigError, RlConfig
from raylm.rl.learner import Learner
from raylm.rl.rollout import RolloutPool
from raylm.rl.steps import GrpoSteps, rollout_tools
from raylm.runs import StepResult, Work
from raylm.tasks import Task, families, generate_tasks
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat, answer_text


def load_reward(name: str):
    """'package.module:function' -> the function; errors name what is missing."""
    module_name, _, attribute = name.partition(":")
    if not attribute:
        raise ConfigError(f"rl.reward '{name}' must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"rl.reward: cannot import {module_name} ({err})") from None
    if not callable(getattr(module, attribute, None)):
        raise ConfigError(f"rl.reward: {module_name} has no function {attribute}")
    return getattr(module, attribute)


def step_tasks(cfg: RlConfig, step: int, refill: int = 0) -> list[Task]:
    """This step's problems: fresh every step, spread evenly over the families, reproducible from (seed, step);
    `refill` > 0: the step's further draws for dynamic sampling."""
    counts = {f: cfg.prompts_per_step // len(cfg.families) + (i < cfg.prompts_per_step % len(cfg.families))
              for i, f in enumerate(cfg.families)}
    return generate_tasks(counts, seed=cfg.seed * 1_000_003 + step + 1_000_000_007 * refill)


def stop_ids(cfg: RlConfig, chat: ChatFormat) -> list[int]:
    """The rollout engines stop at the end of a turn, and with rl.tools also after a tool call."""
    return [chat.im_end, chat.call_end] if cfg.tools else [chat.im_end]


def pass_at_1(pool: RolloutPool, chat: ChatFormat, tasks: list[Task], cfg: RlConfig) -> dict[str, float]:
    from raylm.tasks import check

    groups = pool.generate([chat.prompt(t.messages) for t in tasks], 1, 0.0, cfg.max_new_tokens,
                           tools=rollout_tools(tasks, cfg.tools), max_tool_rounds=cfg.max_tool_rounds)
    right: dict[str, list[bool]] = {}
    for task, group in zip(tasks, groups):
        reply = answer_text(chat.parse(group[0].ids))
        right.setdefault(task.family, []).append(check(task, reply))
    return {f"pass@1/{f}": sum(v) / len(v) for f, v in right.items()}


def plot_rewards(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([m["step"] for m in history], [m["mean_reward"] for m in history], lw=1, label="mean reward (train)")
    for key in sorted({k for m in history for k in m if k.startswith("pass@1/")}):
        points = [(m["step"], m[key]) for m in history if key in m]
        ax.plot(*zip(*points), "o-", label=f"held-out {key}")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_rl(cfg: RlConfig, sft: StepResult, work: Work, state_rel: str) -> dict:
    """`state_rel`: the learner's state file in storage (keyed by this step's digest).

    If an actor dies (its node went away), the learner and the rollout pool are started again and the
    run continues from the last saved state, up to `rl.max_failures` times."""
    import ray

    storage, policy = work.storage, f"{sft.rel}/hf"
    chat = ChatFormat(load(storage.local(policy, only=("tokenizer.json",))))
    reward = load_reward(cfg.reward)
    unknown = sorted(set(cfg.families) - set(families()))
    if unknown:
        raise ConfigError(f"rl.families: unknown {unknown}; known: {', '.join(families())}")
    eval_tasks = generate_tasks({f: cfg.eval_per_family for f in cfg.families}, cfg.eval_seed)
    failures = 0
    while True:
        learner = ray.remote(Learner).options(num_cpus=cfg.learner_cpus, num_gpus=cfg.learner_gpus).remote(
            storage, policy, cfg, chat.tok.token_to_id("<|pad|>"))
        pool = RolloutPool(cfg.engine, storage, policy, cfg.num_rollout_workers, stop_ids(cfg, chat), cfg.rollout_cpus,
                           cfg.rollout_gpus, cfg.kv_cache_gib, cfg.seed, cfg.gpu_memory_utilization)
        try:
            start, history = train(cfg, learner, pool, chat, reward, eval_tasks, state_rel)
            ray.get(learner.export.remote(f"{work.rel}/hf", policy))
            break
        except ray.exceptions.RayActorError as err:
            failures += 1
            if failures > cfg.max_failures:
                raise
            print(f"[rl] an actor died ({type(err).__name__}); restarting from the last saved state "
                  f"({failures}/{cfg.max_failures})", flush=True)
        finally:
            pool.shutdown()
            ray.kill(learner)
    (work.local / "history.json").write_text(json.dumps(history, indent=1))
    plot_rewards(history, work.local / "reward.png")
    first, last = history[0], history[-1]
    gains = {k: last[k] - first[k] for k in last if k.startswith("pass@1/") and k in first}
    print("[rl] held-out pass@1 change: " + ", ".join(f"{k[7:]} {100 * v:+.0f} pts" for k, v in gains.items()),
          flush=True)
    return {"steps": cfg.steps, "restored_from": start or None, "actor_failures": failures, "engine": pool.engine,
            "final": last, "start": first, "pass_at_1_gain": gains}


def train(cfg: RlConfig, learner, pool: RolloutPool, chat: ChatFormat, reward, eval_tasks: list[Task],
          state_rel: str) -> tuple[int, list[dict]]:
    """The GRPO loop from the last saved state; returns (the step it started from, the whole history)."""
    import ray

    start, history = ray.get(learner.restore.remote(state_rel))
    if start:
        print(f"[rl] restored from step {start}", flush=True)
        pool.sync_from(learner)
    else:
        started = time.perf_counter()
        history.append({"step": 0, "mean_reward": float("nan"),
                        **pass_at_1(pool, chat, eval_tasks, cfg)})
        print(f"[rl] {pool.engine} rollouts ready; start: " + _fmt(history[0]) +
              f" ({time.perf_counter() - started:.0f}s)", flush=True)

    def score(tasks: list[Task], groups: list[list]) -> tuple[torch.Tensor, dict]:
        return torch.tensor([[float(reward(task, answer_text(chat.parse(s.ids)))) for s in group]
                             for task, group in zip(tasks, groups)]), {}

    with GrpoSteps(cfg, learner, pool, chat, score, lambda step: step_tasks(cfg, step),
                   (lambda step, r: step_tasks(cfg, step, r)) if cfg.dynamic_sampling else None,
                   start=start) as steps:
        for step in range(start, cfg.steps):
            metrics = steps.run(step)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:  # the engines are idle here, holding step `done`
                metrics.update(pass_at_1(pool, chat, eval_tasks, cfg))
            history.append(metrics)
            print(f"[rl] step {done}/{cfg.steps} " + _fmt(metrics), flush=True)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                ray.get(learner.save.remote(state_rel, history))
    return start, history


def _fmt(m: dict) -> str:
    parts = []
    if m.get("mean_reward") == m.get("mean_reward") and "generate_s" in m:
        parts.append(f"reward {m['mean_reward']:.3f} len {m['response_length']:.0f} "
                     f"{m['rollout_tokens_per_s']:,.0f} tok/s | gen {m['generate_s']:.1f}s score {m['score_s']:.2f}s "
                     f"train {m['train_s']:.1f}s sync {m['sync_s']:.2f}s")
    if "sampling_rounds" in m:
        parts.append(f"| {m['sampling_rounds']} sampling rounds, {m['trained_groups']:.0%} of the batch trained")
    if "tool_call_share" in m:
        parts.append(f"| {m['tool_call_share']:.0%} of samples called a tool")
    if m.get("policy_lag"):
        parts.append(f"| sampled {m['policy_lag']} step behind, clipped {m.get('clip_fraction', 0):.1%}")
    parts += [f"{k} {v:.2f}" for k, v in m.items() if k.startswith("pass@1/")]
    return " ".join(parts)
