"""The step graph: every step of a run, its upstream steps, its config section and its function.

    run = Run(load_config("tiny"))
    run.execute("pretrain")        # upstream steps must be finished and current; skipped if already done
    run.digest("sft")              # its config + its upstream steps' digests: keys everything it keeps

A step's digest is a hash of its own config section, its upstream steps' digests
and, for the data step, the listing of its input files (names, sizes, modification
times). The digest keys every state a step keeps outside its folder (the Ray
Train run of pretrain and sft, RL's learner state), so a change anywhere upstream
redoes everything below it and nothing stale is ever resumed. A step runs only
on upstream steps whose manifests carry their current digests: a finished but
outdated upstream is an error that says which step to run.

Each step's function is `fn(cfg, inputs, work, key) -> metrics`: the run config,
the upstream steps' results, the folder to write (raylm/runs.py: Work) and the
step's digest. `raylm <step>` and `raylm run` are argument parsing over this graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from raylm.config import RunConfig
from raylm.errors import InputError
from raylm.runs import StepResult, Work, config_hash, hold_lock, read_manifest, run_step
from raylm.storage import Storage

Inputs = dict[str, StepResult]


@dataclass(frozen=True)
class Step:
    name: str
    upstream: tuple[str, ...]
    fn: Callable[[RunConfig, Inputs, Work, str], dict]
    help: str
    optional: tuple[str, ...] = ()   # upstream steps used when they are finished and current (eval's rl)

    def section(self, cfg: RunConfig) -> Any:
        """The step's own config (a pydantic model), or None for a step that has none."""
        return getattr(cfg, self.name, None)


def _data(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.data.pipeline import run_data
    from raylm.data.readers import find_inputs

    return run_data(cfg.data, find_inputs(cfg.data.input, cfg.storage, cfg.data.listing_base), work)


def _search(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.tools.search import build_index

    data = inputs["data"]
    counts = build_index(data.storage, f"{data.rel}/kept", work.local / "search.db")
    print(f"[search] indexed {counts['passages']:,} passages of {counts['documents']:,} documents", flush=True)
    return counts


def _tokenizer(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.tokenizer.step import run_tokenizer

    data = inputs["data"]
    return run_tokenizer(cfg.tokenizer, data.storage, f"{data.rel}/kept", data.metrics, work)


def _pretrain(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.train.pretrain import run_pretrain

    return run_pretrain(cfg.pretrain, inputs["tokenizer"], work, f"{cfg.name}/ray_train", key)


def _sft(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.train.sft import run_sft

    return run_sft(cfg.sft, inputs["pretrain"], inputs["tokenizer"], work, f"{cfg.name}/ray_train", key)


def _rl(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.rl.driver import run_rl

    # outside the step folder, so that a crash mid-step resumes; keyed by the digest, so nothing stale does
    return run_rl(cfg.rl, inputs["sft"], work, f"{cfg.name}/rl_state/rl-{key}/state.pt")


def _preferences(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.rlhf.preferences import run_preferences

    return run_preferences(cfg, inputs["sft"], work)


def _reward(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.rlhf.reward import run_reward

    return run_reward(cfg, inputs["preferences"], inputs["sft"], work, key)


def _rlhf(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.rlhf.driver import run_rlhf

    return run_rlhf(cfg, inputs["sft"], inputs["reward"], work, f"{cfg.name}/rl_state/rlhf-{key}/state.pt")


def _eval(cfg: RunConfig, inputs: Inputs, work: Work, key: str) -> dict:
    from raylm.eval.capability import evaluate_many
    from raylm.eval.report import write_report

    models = {name: inputs[name] for name in ("pretrain", "sft", "rl", "rlhf") if name in inputs}
    tokenizer = inputs["tokenizer"]
    val = [tokenizer.storage.child(f"{tokenizer.rel}/shards/{s}")
           for s in tokenizer.metrics["shards"]["val"]["shards"]]
    results = evaluate_many([m.storage.child(f"{m.rel}/hf") for m in models.values()], cfg.eval, val,
                            cfg.pretrain.seq_len)
    for label, result in zip(models, results):
        result["label"] = label
    print(write_report(results, work.local, rlhf=inputs["rlhf"].metrics if "rlhf" in inputs else None,
                       rl_families=cfg.rl.families if "rl" in inputs else None), flush=True)
    return {label: r["metrics"] for label, r in zip(models, results)}


GRAPH: dict[str, Step] = {step.name: step for step in [
    Step("data", (), _data, "crawl -> clean, deduplicated corpus (Ray Data)"),
    Step("search", ("data",), _search, "SQLite FTS5 index of the corpus for the search tool"),
    Step("tokenizer", ("data",), _tokenizer, "byte-level BPE on the corpus; token shards (Ray Data)"),
    Step("pretrain", ("tokenizer",), _pretrain, "next-token pretraining on Ray Train; HF checkpoint"),
    Step("sft", ("pretrain", "tokenizer"), _sft,
         "supervised fine-tuning on conversations (Ray Train); chat checkpoint"),
    Step("rl", ("sft",), _rl, "GRPO on verifiable tasks: vLLM rollout actors + a learner actor"),
    Step("preferences", ("sft",), _preferences, "k answers per open-ended prompt from the SFT model, ranked "
         "(synthetic rater, or people with `raylm label`) into the label database"),
    Step("reward", ("preferences", "sft"), _reward, "Bradley-Terry reward models on the rankings (Ray Train)"),
    Step("rlhf", ("sft", "reward"), _rlhf, "GRPO against the reward model with KL to SFT and a hacking alarm"),
    Step("eval", ("tokenizer", "pretrain", "sft"), _eval, "capability eval table of the run's models",
         optional=("rl", "rlhf")),
]}


class Run:
    """One run: its storage, its folder `<name>/`, the digests of its steps, and executing them."""

    def __init__(self, cfg: RunConfig, on_work: Callable[[], None] = lambda: None):
        self.cfg, self.storage, self.on_work = cfg, Storage(cfg.storage), on_work

    def rel(self, step: str) -> str:
        return f"{self.cfg.name}/{step}"

    def lock(self):
        return hold_lock(self.storage, f"{self.cfg.name}/raylm.lock")

    @cached_property
    def _data_digest(self) -> str:
        """The data step's digest covers its input files; once they are gone (a crawl deleted after cleaning),
        a finished data step of the same config stands for them: nothing newer can exist."""
        from raylm.data.readers import find_inputs

        section = self.cfg.data.model_dump()
        try:
            found = find_inputs(self.cfg.data.input, self.cfg.storage, self.cfg.data.listing_base)
        except InputError:
            done = read_manifest(self.storage, self.rel("data"))
            if done is None or (done.get("config") or {}).get("section") != section:
                raise
            print(f"[data] input {', '.join(self.cfg.data.input)} is gone; using the finished data step", flush=True)
            return done["config_hash"]
        listing = [entry for group in found for entry in group.listing]
        return config_hash({"step": "data", "config": section, "upstream": {}, "inputs": listing})

    def digest(self, name: str) -> str:
        if name == "data":
            return self._data_digest
        step = GRAPH[name]
        section = step.section(self.cfg)
        upstream = {u: self.digest(u) for u in step.upstream}
        upstream.update({u: self.digest(u) for u in step.optional if self.finished(u)})
        return config_hash({"step": name, "config": section.model_dump() if section is not None else None,
                            "upstream": upstream})

    def result(self, name: str) -> StepResult | None:
        """The step's finished result if it is current (its manifest carries today's digest)."""
        manifest = read_manifest(self.storage, self.rel(name))
        if manifest is None or manifest["config_hash"] != self.digest(name):
            return None
        return StepResult(self.storage, self.rel(name), manifest, skipped=True)

    def finished(self, name: str) -> bool:
        return self.result(name) is not None

    def execute(self, name: str, at: tuple[Storage, str] | None = None) -> StepResult:
        """Run one step (into `at` = (storage, folder) instead of the run's folder, for `raylm data --output`)."""
        step = GRAPH[name]
        inputs: Inputs = {}
        for upstream in step.upstream + step.optional:
            result = self.result(upstream)
            if result is None and upstream in step.upstream:
                state = "has not finished" if read_manifest(self.storage, self.rel(upstream)) is None else \
                    "is out of date (its config or a step above it changed)"
                raise InputError(f"step '{upstream}' {state} in {self.storage.uri(self.cfg.name)}; "
                                 f"run `raylm {upstream}` or `raylm run` first")
            if result is not None:
                inputs[upstream] = result
        section = step.section(self.cfg)
        storage, rel = at or (self.storage, self.rel(name))
        digest = self.digest(name)

        def work(folder: Work) -> dict:
            self.on_work()
            return step.fn(self.cfg, inputs, folder, digest)

        return run_step(name, storage, rel, digest, work,
                        config={"section": section.model_dump() if section is not None else None,
                                "upstream": {u: r.digest for u, r in inputs.items()}},
                        inputs={u: r.step_dir for u, r in inputs.items()})
