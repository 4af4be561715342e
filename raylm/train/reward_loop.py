"""The reward model's per-worker training loop on Ray Train: Bradley-Terry over whole rankings.

    state = fit(RewardLoopConfig(...), num_workers=2, ..., loop=reward_loop)   # raylm/train/trainer.py

A batch element is one ranking: the k answers of one item, scored together,
and the loss is Bradley-Terry's -log sigmoid(s_better - s_worse) averaged over
all k*(k-1)/2 pairs the ranking implies (InstructGPT's way: the pairs of one
ranking share their forward passes and are never split across batches, which
would overfit to the prompts seen twice). Rankings are dealt to the data-parallel
ranks by index; DDP averages the gradients. The scores of an item's answers are
read at the <|im_end|> ending each answer (raylm/model/reward.py).

The data file (JSON, published to storage by raylm/rlhf/reward.py) holds
{"train": [{"seqs": [[ids]...], "order": [...]}...], "val": [...]}.
"""

from __future__ import annotations

import json
import tempfile
import time
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from raylm.config import GPTConfig, RewardConfig, StorageConfig
from raylm.model.reward import RewardModel, pad_batch
from raylm.storage import Storage
from raylm.train.loop import CHECKPOINT_FILE, lr_at


class RewardLoopConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str                  # "proxy" or "watch": for the log
    train: RewardConfig
    model: GPTConfig
    storage: StorageConfig
    data_file: str             # the rankings (relative to storage)
    init_checkpoint: str       # the SFT policy whose trunk the reward model starts from
    pad_id: int
    shuffle_labels: bool = False   # the control experiment: each ranking's order replaced by a random one


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


def reward_loop(config: RewardLoopConfig) -> None:
    """Ray Train's train_loop_per_worker for a reward model."""
    import random

    import ray.train
    import ray.train.torch

    from raylm.model.hf import load_pretrained

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg, storage = config.train, Storage(config.storage)
    data = json.loads(storage.read_bytes(config.data_file))
    train, val = data["train"], data["val"]
    if config.shuffle_labels:
        rng = random.Random(cfg.seed)
        train = [{**r, "order": rng.sample(r["order"], len(r["order"]))} for r in train]
    torch.manual_seed(cfg.seed)
    model = RewardModel.from_policy(load_pretrained(storage.local(config.init_checkpoint)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
    device = ray.train.torch.get_device()
    ddp = ray.train.torch.prepare_model(model, parallel_strategy="ddp")  # also moves the model to `device`
    order = list(range(len(train)))
    epochs: dict[int, list[int]] = {}
    tag, started = f"[reward:{config.name}]", time.time()
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # the global batch: batch_size rankings per rank, walking a per-epoch shuffle of the rankings
        first = (step * world + rank) * cfg.batch_size
        picks = []
        for k in range(first, first + cfg.batch_size):
            epoch, at = divmod(k, len(order))
            if epoch not in epochs:  # seeded by the epoch: every rank (and a resumed run) sees the same shuffle
                epochs[epoch] = random.Random(cfg.seed * 7919 + epoch).sample(order, len(order))
            picks.append(train[epochs[epoch][at]])
        seqs = [seq for r in picks for seq in r["seqs"]]
        ids, lengths = pad_batch(seqs, config.pad_id)
        ids, lengths = ids.to(device), lengths.to(device)
        scores = ddp(ids).gather(1, (lengths - 1)[:, None])[:, 0]
        losses, at = [], 0
        for r in picks:
            losses.append(ranking_loss(scores[at:at + len(r["seqs"])], r["order"]))
            at += len(r["seqs"])
        loss = torch.stack(losses).mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        metrics = {"step": done, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}
        last = done == cfg.steps
        if done % cfg.eval_every == 0 or last:
            model.eval()
            metrics["val_accuracy"] = pair_accuracy(score_rankings(model, val, config.pad_id),
                                                    [r["order"] for r in val])
            model.train()
        if done % cfg.log_every == 0 or last or "val_accuracy" in metrics:
            history.append(metrics)
            if rank == 0:
                extra = f" val pair accuracy {metrics['val_accuracy']:.3f}" if "val_accuracy" in metrics else ""
                print(f"{tag} step {done}/{cfg.steps} loss {metrics['loss']:.4f}{extra} "
                      f"({time.time() - started:.0f}s)", flush=True)
            save = last or done % cfg.checkpoint_every == 0
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0 and save:
                    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()},
                                "optimizer": optimizer.state_dict(), "step": done, "history": history,
                                "metrics": metrics,
                                "model_config": model.cfg.model_dump()}, Path(tmp) / CHECKPOINT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                                 if rank == 0 and save else None)
