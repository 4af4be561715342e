"""The capability eval: one row of metrics per checkpoint (base, SFT, RL), on freshly generated tasks.

    metrics = evaluate_checkpoint(storage.child("tiny/sft/hf"), EvalConfig(), val_shards=[...])   # raylm/storage.py

Held-out tasks come from raylm/tasks with the eval seed (SFT data uses another),
`num_per_family` of each family. Every prompt is answered greedily through the
conversation protocol with the tools run between rounds (raylm/tools/runner.py);
the search tool serves each task's own documents. Metrics:

- acc/<family>: the family's checker on the reply, worked steps allowed;
- direct/<family>: the same with the reply forced to start with "Answer:" (no room to think);
- refusal_rate: "I don't know" on questions about made-up people (higher is better);
- false_refusal_rate: "I don't know" on answerable questions (lower is better);
- identity_consistency: the name/maker from the system message in the answer;
- tool_call_validity: search and arithmetic questions answered with well-formed calls of known tools;
- protocol_adherence: replies that end their turn with <|im_end|> and nothing malformed;
- poem_gold_score: the poem family's gold judge (raylm/tasks/poem.py), mean score over a flawless poem's;
- val_bpb: bits per byte on the pretraining val shards (the base model's yardstick);
- english_bpb, english_shuffled_bpb, english_word_order: bits per byte on held-out English
  documentation from outside the crawl, on the same words shuffled, and their ratio
  (raylm/eval/english.py: below 1 only as far as the model knows word order).

Each metric is a mean over tasks; the result also keeps the per-task values
(`scores`, in task order) and a bootstrap 95% interval per metric (`ci95`), so the
report (raylm/eval/report.py) can pair checkpoints task by task.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from raylm.config import EvalConfig
from raylm.eval.english import english_bpb
from raylm.eval.stats import mean_interval
from raylm.model.engine import Engine
from raylm.model.hf import load_pretrained
from raylm.storage import Storage
from raylm.tasks import families, generate_tasks, is_refusal
from raylm.tasks.knowledge import search_documents
from raylm.tasks.poem import gold_score
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import CALL_START, IM_START, ChatFormat
from raylm.tools.calculator import calculate
from raylm.tools.runner import complete

KNOWN_TOOLS = ("search", "calculator")


def val_bpb(model, folder: Path, val_shards: list[Storage], seq_len: int, batches: int = 8,
            batch_size: int = 16) -> float:
    from raylm.tokenizer.shards import read_shard
    from raylm.train.batches import TokenStream
    from raylm.train.loop import evaluate
    from raylm.train.pretrain import token_byte_lengths

    shards = [read_shard(shard.local("")) for shard in val_shards]
    stream = TokenStream(shards, min(seq_len, model.cfg.max_seq_len - 1), seed=0)
    token_bytes = torch.tensor(token_byte_lengths(folder), dtype=torch.int64)
    return evaluate(model, stream, token_bytes, batches, batch_size, torch.device("cpu"), nullcontext())["val_bpb"]


def _well_formed(reply) -> bool:
    """Ended its turn, no stray turn header inside, every tool call closed."""
    text = reply.text
    return reply.finished and IM_START not in text and text.count(CALL_START) == len(reply.tool_calls)


def evaluate_checkpoint(checkpoint: Storage, cfg: EvalConfig, val_shards: list[Storage] | None = None,
                        seq_len: int = 128) -> dict:
    """`checkpoint`: the HF folder (a Storage rooted there); `val_shards`: the pretraining val shards, likewise."""
    folder = checkpoint.local("")
    started = time.time()
    chat = ChatFormat(load(folder))
    model = load_pretrained(folder)
    engine = Engine(model)
    tasks = generate_tasks({name: cfg.num_per_family for name in families()}, cfg.seed)
    tools = [{"search": lambda q, docs=t.documents: search_documents(docs, q), "calculator": calculate}
             for t in tasks]
    replies = complete(engine, chat, [chat.prompt(t.messages) for t in tasks], tools, cfg.max_new_tokens,
                       cfg.max_tool_rounds, temperature=0.0, batch_size=cfg.batch_size)
    checkers = families()
    right = [float(checkers[t.family][1](t, r.answer)) for t, r in zip(tasks, replies)]
    # Per-task values of every metric, in task order: the same tasks for every checkpoint of one seed,
    # so the report can bootstrap each metric and pair two checkpoints task by task (raylm/eval/stats.py).
    scores: dict[str, list[float]] = {}
    for name in checkers:
        scores[f"acc/{name}"] = [ok for t, ok in zip(tasks, right) if t.family == name]

    # Direct answers: the reply is forced to begin "Answer:", so no worked steps fit before the answer.
    direct = [t for t in tasks if t.direct_ok]
    prefix = chat.text("Answer:")
    outs = complete(engine, chat, [chat.prompt(t.messages) + prefix for t in direct], None, 16, 0,
                    batch_size=cfg.batch_size)
    for name in sorted({t.family for t in direct}):
        scores[f"direct/{name}"] = [float(checkers[name][1](t, "Answer:" + r.answer))
                                    for t, r in zip(direct, outs) if t.family == name]

    refused = [float(is_refusal(r.answer)) for r in replies]
    scores["refusal_rate"] = [x for t, x in zip(tasks, refused)
                              if t.family == "unknown_entities" and t.expects_refusal]
    scores["false_refusal_rate"] = [x for t, x in zip(tasks, refused) if not t.expects_refusal]
    scores["identity_consistency"] = [ok for t, ok in zip(tasks, right)
                                      if t.family == "identity" and t.messages[0]["role"] == "system"]
    scores["tool_call_validity"] = [
        float(bool(r.tool_calls) and all(name in KNOWN_TOOLS and argument for name, argument in r.tool_calls))
        for t, r in zip(tasks, replies) if t.uses_tools]
    scores["protocol_adherence"] = [float(_well_formed(r)) for r in replies]
    # the gold judge's score as a share of a flawless poem's
    scores["poem_gold_score"] = [gold_score(t.answer, r.answer) / 3 for t, r in zip(tasks, replies)
                                 if t.family == "poem"]
    scores["mean_reply_tokens"] = [float(r.generated) for r in replies]
    metrics = {name: sum(v) / len(v) if v else math.nan for name, v in scores.items()}
    intervals = {name: list(mean_interval(v)) for name, v in scores.items()}
    metrics["val_bpb"] = val_bpb(model, folder, val_shards, seq_len) if val_shards else math.nan
    metrics.update(english_bpb(model, folder, seq_len))
    examples = {}
    for t, r in zip(tasks, replies):
        examples.setdefault(t.family, {"prompt": t.messages[-1]["content"], "reply": r.text})
    return {"checkpoint": checkpoint.uri(), "metrics": metrics, "ci95": intervals, "scores": scores,
            "num_tasks": len(tasks), "seed": cfg.seed, "seconds": time.time() - started, "examples": examples}


def evaluate_many(checkpoints: list[Storage], cfg: EvalConfig, val_shards: list[Storage] | None = None,
                  seq_len: int = 128) -> list[dict]:
    """Each checkpoint in its own Ray task (one CPU each) when Ray is up, so a cluster evaluates them at once."""
    import ray

    for checkpoint in checkpoints:
        if not checkpoint.is_file("config.json"):
            raise FileNotFoundError(f"no HF checkpoint (config.json) in {checkpoint.uri()}")
    if not ray.is_initialized():
        return [evaluate_checkpoint(c, cfg, val_shards, seq_len) for c in checkpoints]
    task = ray.remote(num_cpus=1)(evaluate_checkpoint)
    return ray.get([task.remote(c, cfg, val_shards, seq_len) for c in checkpoints])
