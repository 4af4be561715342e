"""GRPO steps for the rl and rlhf drivers: sample and score groups, update the learner, push the weights;
one step after another, or overlapped (`rl.overlap`).

    with GrpoSteps(cfg, learner, pool, chat, score, tasks=lambda step: step_tasks(cfg, step), start=0) as steps:
        for step in range(start, cfg.steps):
            metrics = steps.run(step)      # reward, lengths, timings, the learner's loss and clip stats

A step: draw the step's tasks -> the rollout pool samples `group_size` replies to each -> `score(tasks,
groups)` gives their rewards -> group-relative advantages -> one learner update -> the learner pushes the new
weights into the rollout engines. With `refill` (round -> fresh tasks), DAPO's dynamic sampling: a group whose
samples all got the same reward has zero advantage and carries no signal, so it is dropped and fresh prompts
are sampled until the batch holds len(tasks) groups that differ, or `rl.max_sampling_rounds` rounds have run.
The logged reward stays the first round's, an unbiased sample of the policy.

Sampling and the update each keep one actor busy while the other waits. With `rl.overlap`, step k+1's
rollouts are sampled (by the weights before step k's update) while the learner trains on step k, as
asynchronous RL systems do (one step off-policy, like PipelineRL's or AReaL's bounded staleness): the
learner takes the ratio against the weights that sampled the batch, so PPO's clipping bounds the stale
update. The push waits for both, so every sample comes from one known policy and runs repeat exactly.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from raylm.config import RlConfig
from raylm.rl.grpo import group_advantages
from raylm.rl.rollout import RolloutPool, Sample
from raylm.rl.tool_calls import task_tools
from raylm.tasks import Task
from raylm.tokenizer.chat import ChatFormat


def rollout_tools(tasks: list[Task], enabled: bool) -> list[dict] | None:
    """Per task, the tools its rollouts may call when tool calls are on (rl.tools), else None."""
    return [task_tools(t) for t in tasks] if enabled else None


@dataclass
class Sampled:
    """One step's scored rollouts, and the learner step whose weights sampled them."""

    step: int
    sampled_at: int
    picked: list[tuple[list[int], list[Sample], torch.Tensor]]  # (prompt, group, rewards) to train on
    first: torch.Tensor                                           # the first round's rewards (what is logged)
    extra: dict
    timings: dict = field(default_factory=dict)
    tokens: int = 0
    samples: int = 0
    calls: int = 0
    rounds: int = 1


class GrpoSteps:
    """`score(tasks, groups) -> ((tasks, group_size) rewards, extra metrics)`; `tasks(step)` the step's tasks;
    `refill(step, round)` fresh tasks for dynamic sampling (None: off); `demos(step)` demonstrations whose SFT
    loss joins the update (RLHF's ptx); `start`: the learner's step (the engines hold its weights)."""

    def __init__(self, cfg: RlConfig, learner, pool: RolloutPool, chat: ChatFormat, score: Callable,
                 tasks: Callable[[int], list[Task]], refill: Callable[[int, int], list[Task]] | None = None,
                 demos: Callable[[int], list] | None = None, start: int = 0):
        self.cfg, self.learner, self.pool, self.chat, self.score = cfg, learner, pool, chat, score
        self.tasks, self.refill, self.demos = tasks, refill, demos
        self.pushed_at = start  # the learner step whose weights the rollout engines hold
        self.ready: Sampled | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rollouts") if cfg.overlap else None

    def run(self, step: int) -> dict:
        """One step; with rl.overlap the next step's rollouts are sampled during this step's update."""
        import ray

        sampled = self.ready if self.ready is not None and self.ready.step == step else self.sample(step)
        self.ready = None
        ahead = None
        if self.executor and step + 1 < self.cfg.steps:  # sampled by the weights the engines hold now
            ahead = self.executor.submit(self.sample, step + 1, self.pushed_at)
        batch = []
        if sampled.picked:  # with dynamic sampling, every group of every round may have been uniform
            advantages = group_advantages(torch.stack([r for _, _, r in sampled.picked]))
            batch = [{"prompt": prompt, "response": s.ids, "advantage": float(advantages[i, j]), "mask": s.mask}
                     for i, (prompt, group, _) in enumerate(sampled.picked) for j, s in enumerate(group)]
        t0 = time.perf_counter()  # called with an empty batch too: the learner counts every step
        metrics = ray.get(self.learner.update.remote(batch, self.demos(step) if self.demos and batch else None,
                                                     sampled.sampled_at))
        sampled.timings.update(train_s=time.perf_counter() - t0, sync_s=0.0)
        if ahead is not None:
            t0 = time.perf_counter()
            self.ready = ahead.result()  # the engines must be idle before their weights change
            metrics["rollout_wait_s"] = time.perf_counter() - t0
        if sampled.picked:
            t0 = time.perf_counter()
            metrics.update(self.pool.sync_from(self.learner))  # learner -> rollout actors directly: pack_s, reload_s
            sampled.timings["sync_s"] = time.perf_counter() - t0
            self.pushed_at = step + 1
        return summarise(sampled, metrics, self.refill is not None, self.cfg.tools)

    def sample(self, step: int, sampled_at: int | None = None) -> Sampled:
        """Sample and score the step's groups (and refill rounds) with the weights the engines hold now
        (pushed at learner step `sampled_at`, default the last push)."""
        cfg, chat = self.cfg, self.chat
        tasks = self.tasks(step)
        out = Sampled(step, self.pushed_at if sampled_at is None else sampled_at, [], torch.zeros(0), {},
                      {"generate_s": 0.0, "score_s": 0.0})
        for rounds in range(1, (cfg.max_sampling_rounds if self.refill else 1) + 1):
            drawn = tasks if rounds == 1 else self.refill(step, rounds - 1)
            t0 = time.perf_counter()
            prompts = [chat.prompt(t.messages) for t in drawn]
            groups = self.pool.generate(prompts, cfg.group_size, cfg.temperature, cfg.max_new_tokens,
                                        seed=cfg.seed + step + 1_000_000 * (rounds - 1),
                                        tools=rollout_tools(drawn, cfg.tools), max_tool_rounds=cfg.max_tool_rounds)
            out.timings["generate_s"] += time.perf_counter() - t0
            out.tokens += sum(len(s.ids) if s.mask is None else sum(s.mask) for group in groups for s in group)
            if cfg.tools:
                out.calls += sum(s.mask is not None and 0 in s.mask for group in groups for s in group)
            out.samples += sum(len(group) for group in groups)
            t0 = time.perf_counter()
            rewards, extra = self.score(drawn, groups)
            out.timings["score_s"] += time.perf_counter() - t0
            if rounds == 1:
                out.first, out.extra = rewards, extra
            out.picked += [(p, g, r) for p, g, r in zip(prompts, groups, rewards) if not self.refill or r.std() > 0]
            out.rounds = rounds
            if len(out.picked) >= len(tasks):
                break
        out.picked = out.picked[:len(tasks)]
        return out

    def __enter__(self) -> "GrpoSteps":
        return self

    def __exit__(self, *_) -> None:
        """Also on an error: a sampling still running ends when the drivers shut the pool down."""
        if self.executor:
            self.executor.shutdown(wait=False, cancel_futures=True)


def summarise(sampled: Sampled, metrics: dict, refill: bool, tools: bool) -> dict:
    """The step's log line: the learner's stats, timings, the first round's reward, lengths, lag."""
    timings = sampled.timings
    metrics.update(timings)
    metrics.update(sampled.extra)
    metrics.update(step=sampled.step + 1, mean_reward=float(sampled.first.mean()),
                   response_length=sampled.tokens / sampled.samples,
                   rollout_tokens_per_s=sampled.tokens / timings["generate_s"],
                   solved_groups=float((sampled.first.std(dim=1) == 0).float().mean()),
                   policy_lag=sampled.step - sampled.sampled_at,  # 0: on-policy; 1 with rl.overlap
                   sync_share=timings["sync_s"] / sum(timings.values()))
    if refill:
        metrics.update(sampling_rounds=sampled.rounds, trained_groups=len(sampled.picked) / len(sampled.first))
    if tools:
        metrics.update(tool_call_share=sampled.calls / sampled.samples)  # samples that called a tool at least once
    return metrics
