"""The reward step: Bradley-Terry reward models on the preference rankings, trained on Ray Train.

    raylm reward       # label database -> <run>/reward/hf (the proxy RL optimises), <run>/reward/watch/hf

Rankings of the SFT model's items are read from the label database and split by
item: items on held-out subjects (raylm/tasks/poem.py) measure accuracy; the
others are dealt into two disjoint halves. The **proxy** reward model learns
from one half and is what `raylm rlhf` optimises; the **watcher** learns from
the other half and only watches (raylm/rlhf/monitor.py). Both start from the
SFT policy's trunk with a zero scalar head (raylm/model/reward.py), and both
train in one Ray Train run, side by side on half the workers each
(raylm/train/reward_loop.py; `benchmarks/reward_side_by_side.py` times it
against one run per model).

Reported on the held-out items (bootstrap 95% intervals over items):
- accuracy: pairs ordered as the labelers ordered them;
- gold_accuracy: pairs ordered as the synthetic rater's noise-free judge orders
  them (report only: the judge never reaches training; ties left out);
- length_baseline: "the longer (or shorter, whichever fits the training pairs
  better) answer wins", the cheapest feature a reward model could learn instead.
Also kept beside each model (raylm_reward.json): the support of its training
answers (longest, most repetitive) and its score spread on held-out answers,
which the hacking alarm measures against.
"""

from __future__ import annotations

import json
import zlib
from itertools import combinations

from raylm.config import RunConfig
from raylm.eval.stats import ratio_interval
from raylm.model.hf import from_hf_config
from raylm.model.reward import RewardModel, save_reward_model
from raylm.rlhf.labels import Ranking
from raylm.rlhf.monitor import Support
from raylm.rlhf.preferences import open_labels
from raylm.runs import StepResult, Work
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat
from raylm.train.reward_loop import (RewardJob, RewardLoopConfig, pair_accuracy, reward_loop,
                                     score_rankings, split_workers)
from raylm.train.trainer import fit_states

MIN_RANKINGS = 20


def answer_sequence(chat: ChatFormat, messages: list[dict], answer: str) -> list[int]:
    """Prompt + answer rendered by the conversation protocol, cut after the answer's <|im_end|>."""
    ids = chat.render(messages + [{"role": "assistant", "content": answer}]).ids
    return ids[:len(ids) - ids[::-1].index(chat.im_end)]


def encode(chat: ChatFormat, rankings: list[Ranking]) -> list[dict]:
    return [{"seqs": [answer_sequence(chat, r.item.messages, a) for a in r.item.answers], "order": r.order,
             "item": r.item.id} for r in rankings]


def half(item_id: int) -> int:
    """Which training half an item is in: a hash of its id (stable, and even whatever the ids' parity)."""
    return zlib.crc32(str(item_id).encode()) % 2


def gold_accuracy(scores: list[list[float]], rankings: list[Ranking]) -> tuple[float, list[tuple[float, float]]]:
    """Pairs ordered as the gold judge orders them (gold ties left out); also (right, total) per item."""
    from raylm.rlhf.rater import gold_scores

    per_item = []
    for s, r in zip(scores, rankings):
        gold = gold_scores(r.item)
        pairs = [(a, b) if gold[a] > gold[b] else (b, a)
                 for a, b in combinations(range(len(gold)), 2) if gold[a] != gold[b]]
        right = sum(1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0 for a, b in pairs)
        per_item.append((right, float(len(pairs))))
    total = sum(t for _, t in per_item)
    return sum(r for r, _ in per_item) / max(total, 1), per_item


def per_item_accuracy(scores: list[list[float]], orders: list[list[int]]) -> list[tuple[float, float]]:
    out = []
    for s, order in zip(scores, orders):
        pairs = list(combinations(order, 2))
        out.append((pair_accuracy([s], [order]) * len(pairs), float(len(pairs))))
    return out


def length_baseline(train: list[Ranking], heldout: list[Ranking]) -> dict:
    """Accuracy of "the longer answer wins" (or the shorter, if the training pairs say so)."""
    def agreement(rankings: list[Ranking]) -> float:
        lengths = [[float(len(a)) for a in r.item.answers] for r in rankings]
        return pair_accuracy(lengths, [r.order for r in rankings])

    longer_wins = agreement(train) >= 0.5
    held = agreement(heldout)
    return {"rule": "longer wins" if longer_wins else "shorter wins", "accuracy": held if longer_wins else 1 - held}


def train_reward_models(cfg: RunConfig, sft: StepResult, work: Work, key: str, jobs: list[RewardJob],
                        pad_id: int) -> dict[str, tuple[RewardModel, list[list[float]] | None]]:
    """Every job's (reward model, its scores of the held-out rankings as the loop's last evaluation left them),
    from one Ray Train run (side by side on the workers: raylm/train/reward_loop.py)."""
    model_config = from_hf_config(json.loads(sft.storage.local(f"{sft.rel}/hf", only=("config.json",))
                                             .joinpath("config.json").read_text()))
    config = RewardLoopConfig(jobs=jobs, train=cfg.reward, model=model_config, storage=work.storage.cfg,
                              init_checkpoint=f"{sft.rel}/hf", pad_id=pad_id)
    names = [job.name for job in jobs]
    states = fit_states(config, cfg.reward.num_workers, cfg.reward.use_gpu, cfg.reward.max_failures, work.storage,
                        f"{cfg.name}/ray_train", f"reward-{'-'.join(names)}-{key}", loop=reward_loop,
                        files=[f"{name}.pt" for name in names])
    out = {}
    for name in names:
        state = states[f"{name}.pt"]
        model = RewardModel(model_config)
        model.load_state_dict(state["model"])
        out[name] = (model.eval(), state.get("val_scores"))
    return out


def evaluate(model: RewardModel, heldout: list[dict], rankings: list[Ranking], pad_id: int,
             scores: list[list[float]] | None = None) -> dict:
    """`scores`: the model's scores of `heldout` where the training loop already computed them."""
    if scores is None:
        scores = score_rankings(model, heldout, pad_id)
    orders = [r["order"] for r in heldout]
    per_item = per_item_accuracy(scores, orders)
    gold, gold_items = gold_accuracy(scores, rankings)
    flat = [x for s in scores for x in s]
    mean = sum(flat) / len(flat)
    return {"accuracy": pair_accuracy(scores, orders), "accuracy_ci95": ratio_interval(per_item),
            "gold_accuracy": gold, "gold_accuracy_ci95": ratio_interval(gold_items),
            "score_mean": mean, "score_spread": (sum((x - mean) ** 2 for x in flat) / len(flat)) ** 0.5}


def run_reward(cfg: RunConfig, preferences: StepResult, sft: StepResult, work: Work, key: str) -> dict:
    rankings = open_labels(cfg, preferences).rankings(model=preferences.metrics["model"])
    if len(rankings) < MIN_RANKINGS:
        raise ValueError(f"only {len(rankings)} rankings of {preferences.metrics['model']} in the label database; "
                         f"rank at least {MIN_RANKINGS} (`raylm label`) before training a reward model")
    base = sft.storage.local(f"{sft.rel}/hf")
    chat = ChatFormat(load(base))
    pad_id = chat.tok.token_to_id("<|pad|>")
    heldout = [r for r in rankings if r.item.meta.get("split") == "heldout"]
    halves = [[r for r in rankings if r.item.meta.get("split") != "heldout" and half(r.item.id) == h] for h in (0, 1)]
    kinds = sorted({r.labeler_kind for r in rankings})
    print(f"[reward] {len(rankings)} rankings ({', '.join(kinds)} labelers): {len(halves[0])} proxy / "
          f"{len(halves[1])} watcher training, {len(heldout)} held-out (subjects never trained on)", flush=True)
    held_encoded = encode(chat, heldout)
    metrics: dict = {"rankings": len(rankings), "labeler_kinds": kinds, "heldout_rankings": len(heldout),
                     "length_baseline": length_baseline(halves[0], heldout)}
    jobs = []
    for name, train in (("proxy", halves[0]), ("watch", halves[1])):
        (work.local / f"{name}.json").write_text(json.dumps({"train": encode(chat, train), "val": held_encoded}))
        jobs.append(RewardJob(name=name, data_file=work.publish(f"{name}.json")))
    workers = cfg.reward.num_workers
    per_job, accum = split_workers(workers, len(jobs))
    print(f"[reward] proxy and watcher in one Ray Train run of {workers} workers: "
          + (f"side by side, {per_job} each ({accum} micro-batches per step)" if per_job < workers
             else "one after the other"), flush=True)
    trained = train_reward_models(cfg, sft, work, key, jobs, pad_id)
    for name, train in (("proxy", halves[0]), ("watch", halves[1])):
        model, scores = trained[name]
        result = evaluate(model, held_encoded, heldout, pad_id, scores)
        answers = [(a, len(chat.text(a))) for r in train for a in r.item.answers]
        unseen = [(a, r.item.messages[-1]["content"]) for r in heldout for a in r.item.answers]
        result["support"] = Support.of(answers, unseen).to_dict()
        result["training_rankings"] = len(train)
        folder = work.local / ("hf" if name == "proxy" else "watch/hf")
        save_reward_model(model, folder, base, pad_id, extra=result)
        metrics[name] = result
        lo, hi = result["accuracy_ci95"]
        print(f"[reward] {name}: held-out pair accuracy {result['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}) against "
              f"the labels, {result['gold_accuracy']:.1%} against the gold judge's order", flush=True)
    print(f"[reward] length-only baseline ({metrics['length_baseline']['rule']}): "
          f"{metrics['length_baseline']['accuracy']:.1%}", flush=True)
    return metrics
