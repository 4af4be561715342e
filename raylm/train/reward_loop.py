"""The reward models' per-worker training loop on Ray Train: Bradley-Terry over whole rankings.

    states = fit_states(RewardLoopConfig(jobs=[proxy, watch], ...), num_workers=2, ...,
                        loop=reward_loop, files=["proxy.pt", "watch.pt"])   # raylm/train/trainer.py

A batch element is one ranking: the k answers of one item, scored together,
and the loss is Bradley-Terry's -log sigmoid(s_better - s_worse) averaged over
all k*(k-1)/2 pairs the ranking implies (InstructGPT's way: the pairs of one
ranking share their forward passes and are never split across batches, which
would overfit to the prompts seen twice). The scores of an item's answers are
read at the <|im_end|> ending each answer (raylm/model/reward.py).

One Ray Train run trains every job (the RLHF step's proxy and its watcher) side
by side: the workers are split evenly among the jobs, each job's ranks form
their own DDP process group, and each rank takes `jobs` micro-batches per step,
so a job's global batch is batch_size x num_workers as if it had every worker.
That is the same arithmetic as training them one after the other on all the
workers, minus one Ray Train start-up (~25 s on a laptop) and the gradient
all-reduce. Where the workers do not divide evenly (1 worker, or 3), the jobs
run one after the other on every worker, still in one run. Rankings are dealt
to micro-batches by index from a per-epoch shuffle seeded by the epoch, so
every rank, and a resumed run, sees the same order.

Each job's leader (its first rank) saves <name>.pt in the checkpoint (Ray Train
merges the workers' files into one checkpoint folder); a resumed run restores
each job from its own file.

The data file (JSON, published to storage by raylm/rlhf/reward.py) holds
{"train": [{"seqs": [[ids]...], "order": [...]}...], "val": [...]}.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from contextlib import nullcontext
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from raylm.config import GPTConfig, RewardConfig, StorageConfig
from raylm.model.reward import RewardModel, pad_batch
from raylm.storage import Storage
from raylm.train.loop import lr_at


class RewardJob(BaseModel):
    """One reward model to train: its name (its checkpoint file <name>.pt and its log tag) and its rankings."""

    name: str                      # "proxy" or "watch"
    data_file: str                 # the rankings (relative to storage)
    shuffle_labels: bool = False   # the control experiment: each ranking's order replaced by a random one


class RewardLoopConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    jobs: list[RewardJob]
    train: RewardConfig
    model: GPTConfig
    storage: StorageConfig
    init_checkpoint: str       # the SFT policy whose trunk every reward model starts from
    pad_id: int


def split_workers(world: int, jobs: int) -> tuple[int, int]:
    """(ranks per job, micro-batches per step). Side by side when the workers divide evenly among the jobs:
    each job on world/jobs ranks with `jobs` micro-batches per step, so its global batch stays
    batch_size x world; otherwise (world 1 or 3 for two jobs) one job after the other on every rank."""
    if world % jobs == 0:
        return world // jobs, jobs
    return world, 1


def ranking_loss(scores: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Bradley-Terry over every pair a ranking implies; `scores` holds the item's k answers' scores."""
    better = torch.tensor([a for a, _ in combinations(order, 2)])
    worse = torch.tensor([b for _, b in combinations(order, 2)])
    return -F.logsigmoid(scores[better] - scores[worse]).mean()


def score_rankings(model: RewardModel, rankings: list[dict], pad_id: int, batch: int = 64) -> list[list[float]]:
    """Each ranking's answers' scores, in answer order (no gradients), on the model's device."""
    flat = [seq for r in rankings for seq in r["seqs"]]
    device = next(model.parameters()).device
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(flat), batch):
            ids, lengths = pad_batch(flat[i:i + batch], pad_id)
            scores += model.score_last(ids.to(device), lengths.to(device)).float().tolist()
    out, at = [], 0
    for r in rankings:
        out.append(scores[at:at + len(r["seqs"])])
        at += len(r["seqs"])
    return out


def pair_accuracy(scores: list[list[float]], orders: list[list[int]]) -> float:
    """Share of a ranking's pairs that the scores order the same way (a tie counts half)."""
    right = total = 0.0
    for s, order in zip(scores, orders):
        for a, b in combinations(order, 2):
            right += 1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0
            total += 1
    return right / total if total else float("nan")


class JobTraining:
    """One job's model, optimizer and data on this rank; DDP over its group when the group has several ranks."""

    def __init__(self, config: RewardLoopConfig, job: RewardJob, group_rank: int, group_size: int, accum: int,
                 group, device: torch.device, restored: dict | None):
        from raylm.model.hf import load_pretrained

        cfg, storage = config.train, Storage(config.storage)
        self.cfg, self.job, self.pad_id, self.device = cfg, job, config.pad_id, device
        self.group_rank, self.group_size, self.accum = group_rank, group_size, accum
        self.leader = group_rank == 0
        data = json.loads(storage.read_bytes(job.data_file))
        self.train, self.val = data["train"], data["val"]
        if job.shuffle_labels:
            rng = random.Random(cfg.seed)
            self.train = [{**r, "order": rng.sample(r["order"], len(r["order"]))} for r in self.train]
        torch.manual_seed(cfg.seed)
        self.model = RewardModel.from_policy(load_pretrained(storage.local(config.init_checkpoint)))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                           weight_decay=cfg.weight_decay)
        self.start, self.history = 0, []
        if restored is not None:
            self.model.load_state_dict(restored["model"])
            self.optimizer.load_state_dict(restored["optimizer"])
            self.start, self.history = restored["step"], list(restored["history"])
        self.model.to(device)
        self.forward = self.model
        if group_size > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, process_group=group)
        self.order = list(range(len(self.train)))
        self.epochs: dict[int, list[int]] = {}
        self.tag, self.started = f"[reward:{job.name}]", time.time()
        self.metrics: dict = {}
        self.val_scores = restored.get("val_scores") if restored else None  # the last evaluation's, per ranking

    def picks(self, step: int, micro: int) -> list[dict]:
        """The rankings of one micro-batch: the job's global batch walks a per-epoch shuffle of the rankings."""
        size = self.cfg.batch_size
        first = ((step * self.accum + micro) * self.group_size + self.group_rank) * size
        out = []
        for k in range(first, first + size):
            epoch, at = divmod(k, len(self.order))
            if epoch not in self.epochs:  # seeded by the epoch: every rank (and a resumed run) sees the same shuffle
                self.epochs[epoch] = random.Random(self.cfg.seed * 7919 + epoch).sample(self.order, len(self.order))
            out.append(self.train[self.epochs[epoch][at]])
        return out

    def step(self, step: int) -> dict:
        cfg = self.cfg
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(self.accum):
            picks = self.picks(step, micro)
            ids, lengths = pad_batch([seq for r in picks for seq in r["seqs"]], self.pad_id)
            ids, lengths = ids.to(self.device), lengths.to(self.device)
            # gradients are all-reduced across the group once per step, on the last micro-batch
            last = micro == self.accum - 1
            with nullcontext() if last or self.group_size == 1 else self.forward.no_sync():
                scores = self.forward(ids).gather(1, (lengths - 1)[:, None])[:, 0]
                losses, at = [], 0
                for r in picks:
                    losses.append(ranking_loss(scores[at:at + len(r["seqs"])], r["order"]))
                    at += len(r["seqs"])
                loss = torch.stack(losses).mean()
                (loss / self.accum).backward()
            loss_sum += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        metrics = {"job": self.job.name, "step": done, "loss": loss_sum / self.accum, "lr": lr,
                   "grad_norm": float(grad_norm)}
        if self.leader and (done % cfg.eval_every == 0 or done == cfg.steps):
            self.model.eval()
            self.val_scores = score_rankings(self.model, self.val, self.pad_id)
            metrics["val_accuracy"] = pair_accuracy(self.val_scores, [r["order"] for r in self.val])
            self.model.train()
        self.metrics = metrics
        return metrics

    def log(self, metrics: dict) -> None:
        self.history.append(metrics)
        if self.leader:
            extra = f" val pair accuracy {metrics['val_accuracy']:.3f}" if "val_accuracy" in metrics else ""
            print(f"{self.tag} step {metrics['step']}/{self.cfg.steps} loss {metrics['loss']:.4f}{extra} "
                  f"({time.time() - self.started:.0f}s)", flush=True)

    def state(self) -> dict:
        return {"model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.metrics.get("step", self.start),
                "history": self.history, "metrics": self.metrics, "model_config": self.model.cfg.model_dump(),
                "val_scores": self.val_scores}   # the final model's held-out scores: the reward step reports them


def reward_loop(config: RewardLoopConfig) -> None:
    """Ray Train's train_loop_per_worker for the reward models."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg, device = config.train, ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    per_job, accum = split_workers(world, len(config.jobs))
    groups: list = [None] * (world // per_job)   # None: the default group (every rank), or no DDP at all
    if 1 < per_job < world:  # every rank creates every group, in the same order, as torch.distributed requires
        groups = [dist.new_group(list(range(g * per_job, (g + 1) * per_job))) for g in range(world // per_job)]
    mine = config.jobs if len(groups) == 1 else [config.jobs[rank // per_job]]
    restored: dict[str, dict] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            for job in config.jobs:
                if (Path(folder) / f"{job.name}.pt").exists():
                    restored[job.name] = torch.load(Path(folder) / f"{job.name}.pt", map_location="cpu",
                                                    weights_only=True)
    finished: dict[str, dict] = {}  # one after the other: the finished jobs' states go into every later checkpoint
    for job in mine:
        run = JobTraining(config, job, rank % per_job, per_job, accum, groups[rank // per_job], device,
                          restored.get(job.name))
        for step in range(run.start, cfg.steps):
            metrics = run.step(step)
            done = step + 1
            last = done == cfg.steps
            # a report is a barrier across all ranks: the condition must not depend on the rank
            if not (done % cfg.log_every == 0 or done % cfg.eval_every == 0 or last):
                continue
            run.log(metrics)
            writes = run.leader and (last or done % cfg.checkpoint_every == 0)
            with tempfile.TemporaryDirectory() as tmp:
                if writes:
                    for name, state in {**finished, job.name: run.state()}.items():
                        torch.save(state, Path(tmp) / f"{name}.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if writes else None)
        if job is not mine[-1]:  # kept (on CPU) only where a later job's checkpoints must carry it
            finished[job.name] = run.state()
        del run
