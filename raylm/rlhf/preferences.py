"""The preferences step: prompts from an open-ended family, k answers each from the SFT model, ranked.

    raylm preferences       # <run>/sft/hf -> items in the label database; the synthetic rater ranks them
    raylm label             # (rater: human) people rank them on a page served by Ray Serve

Items are sampled by the rollout pool (vLLM actors, as RL samples) at the
preferences temperature and stored in the label database (raylm/rlhf/labels.py;
SQLite under <run>/labels/ by default, any SQLAlchemy URL on a cluster) with the
model that sampled them, so a rerun for the same SFT model adds nothing and a new
model gets fresh items beside the old ones. About a fifth of the prompts are on
held-out subjects (raylm/tasks/poem.py): the reward step measures accuracy there.

With `preferences.rater: synthetic` the synthetic rater (raylm/rlhf/rater.py)
ranks every item through the store calls the page makes; with `human` the step
stops after sampling and `raylm label` serves the page.
"""

from __future__ import annotations

import random

from raylm.config import RunConfig
from raylm.rl.rollout import RolloutPool
from raylm.errors import InputError
from raylm.rlhf.labels import LabelStore, NewItem, default_url, label_database_url, shown_url
from raylm.rlhf.rater import rate_all
from raylm.runs import StepResult, Work
from raylm.tasks import families
from raylm.tasks.poem import HELDOUT_SUBJECTS, generate_heldout
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat, answer_text

HELDOUT_SHARE = 0.2
SNAPSHOT = "labels.db"  # in the step's folder, when the run's storage is a bucket


def open_labels(cfg: RunConfig, preferences: StepResult) -> LabelStore:
    """The label database the preferences step filled: the run's, or the snapshot in its folder."""
    if preferences.metrics.get("snapshot"):
        folder = preferences.storage.local(preferences.rel, only=(SNAPSHOT,))
        return LabelStore(default_url(folder / SNAPSHOT))
    return LabelStore(label_database_url(cfg))


def model_tag(sft: StepResult) -> str:
    """Names the sampling model in the database: its folder and digest (which covers its whole history)."""
    return f"{sft.step_dir}/hf@{sft.digest}"


def new_tasks(family: str, count: int, seed: int, start: int) -> list:
    """Item prompts number `start`..`start + count`, the same for the same seed; held-out subjects mixed in."""
    generate = families()[family][0]
    tasks = []
    for index in range(start, start + count):
        rng = random.Random(f"{seed}-{family}-{index}")
        heldout = family == "poem" and rng.random() < HELDOUT_SHARE
        tasks.append(generate_heldout(rng) if heldout else generate(rng))
    return tasks


def sample_items(cfg: RunConfig, sft: StepResult, store: LabelStore) -> int:
    """Add items until this model has `preferences.items`; returns how many were added."""
    p, tag = cfg.preferences, model_tag(sft)
    have = store.count_items(model=tag)
    missing = p.items - have
    if missing <= 0:
        return 0
    policy = f"{sft.rel}/hf"
    chat = ChatFormat(load(sft.storage.local(policy, only=("tokenizer.json",))))
    tasks = new_tasks(p.family, missing, p.seed, have)
    print(f"[preferences] sampling {p.answers_per_item} answers to each of {missing} prompts "
          f"({cfg.rl.engine} rollouts)", flush=True)
    workers = p.rollout_workers or cfg.rl.num_rollout_workers
    pool = RolloutPool(cfg.rl.engine, sft.storage, policy, workers, [chat.im_end],
                       cfg.rl.rollout_cpus, cfg.rl.rollout_gpus, cfg.rl.kv_cache_gib, p.seed,
                       cfg.rl.gpu_memory_utilization)
    try:
        groups = pool.generate([chat.prompt(t.messages) for t in tasks], p.answers_per_item, p.temperature,
                               p.max_new_tokens, seed=p.seed)
    finally:
        pool.shutdown()
    items = [NewItem(messages=t.messages, answers=[answer_text(chat.parse(s.ids)) for s in group], model=tag,
                     meta={"family": t.family, "subject": t.answer,
                           "split": "heldout" if t.answer in HELDOUT_SUBJECTS else "train"})
             for t, group in zip(tasks, groups)]
    store.add_items(items)
    return len(items)


def run_preferences(cfg: RunConfig, sft: StepResult, work: Work) -> dict:
    # a bucket cannot hold a live SQLite file: without a database URL, the synthetic rater's labels are
    # kept as a snapshot in this step's folder (people label into a real database: preferences.database_url)
    snapshot = not cfg.preferences.database_url and not work.storage.is_local
    if snapshot and cfg.preferences.rater == "human":
        raise InputError("preferences.rater=human on shared storage needs preferences.database_url "
                         "(e.g. postgresql://user@host/labels) that `raylm label` and the steps all reach")
    url = default_url(work.local / SNAPSHOT) if snapshot else label_database_url(cfg)
    store = LabelStore(url)
    added = sample_items(cfg, sft, store)
    metrics: dict = {"database": SNAPSHOT if snapshot else shown_url(url), "snapshot": snapshot,
                     "model": model_tag(sft), "items_added": added,
                     "items": store.count_items(model=model_tag(sft)), "rater": cfg.preferences.rater}
    if cfg.preferences.rater == "synthetic":
        metrics["synthetic"] = rate_all(store, cfg.preferences.rater_agreement, cfg.preferences.seed)
        s = metrics["synthetic"]
        if s["ranked"]:
            print(f"[preferences] SYNTHETIC rater ranked {s['ranked']} items; its pairs agree with the gold judge's "
                  f"order {s['measured_agreement']:.1%} of the time (target {s['target_agreement']:.0%}, "
                  f"noise sigma {s['noise_sigma']:.2f})", flush=True)
    metrics["labels"] = store.stats()
    if snapshot:
        store.seal()  # the step uploads the file alone: nothing may stay in SQLite's write-ahead log
    if cfg.preferences.rater == "human":
        print(f"[preferences] {metrics['labels']} — rank items with `raylm label`, then run `raylm reward`",
              flush=True)
    return metrics
