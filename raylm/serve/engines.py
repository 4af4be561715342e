"""Async token engines for serving: vLLM's AsyncLLM, or raylm's torch engine as the fallback.

    engine = make_engine("vllm", "runs/tiny/rl/hf", kv_cache_gib=1)
    async for tokens in engine.stream(prompt_ids, Sampling(max_tokens=64), stop_ids=(im_end,)):
        ...   # new token ids since the last yield (a stop token, when one ends it, included)

Both take token ids in and give token ids out: the server renders chats and decodes
text itself (raylm/tokenizer/chat.py), so tools and special tokens behave the same
whichever engine runs. vLLM batches concurrent requests (continuous batching);
the torch engine generates one request at a time per replica, in a thread so the
event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = True  # False: the engine may hand back all tokens at once


class VllmAsyncEngine:
    name = "vllm"

    def __init__(self, checkpoint: str, max_model_len: int, kv_cache_gib: int = 1, seed: int = 0,
                 colocate_engine_core: bool = True, colocate_from_requests: int = 1):
        import torch

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # CPU: KV cache size, GiB
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.on_gpu = torch.cuda.is_available()
        args = AsyncEngineArgs(model=checkpoint, dtype="bfloat16" if self.on_gpu else "float32", seed=seed,
                               max_model_len=max_model_len, gpu_memory_utilization=0.85 if self.on_gpu else 0.5,
                               enforce_eager=not self.on_gpu,
                               skip_tokenizer_init=True)  # ids in, ids out: raylm renders and decodes
        self.llm = AsyncLLM.from_engine_args(args)
        from raylm.serve.lifecycle import engine_processes, reap_with_parent

        # vLLM's engine core does not watch this process: without a reaper it outlives a killed replica
        self.reaper = reap_with_parent([process.pid for process in engine_processes()])
        self.ongoing = 0
        self.placement = None
        if colocate_engine_core and not self.on_gpu:
            from raylm.serve.placement import EngineCorePlacement

            self.placement = EngineCorePlacement(busy=colocate_from_requests)
            if self.placement.enabled:
                print(f"[serve] vLLM engine core joins its worker's CPUs {self.placement.worker_cpus} while "
                      f"{self.placement.busy}+ requests run", flush=True)

    async def stream(self, ids: list[int], sampling: Sampling, stop_ids: tuple[int, ...]) -> AsyncIterator[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, stop_token_ids=list(stop_ids), detokenize=False,
                                # vLLM-CPU's sampler fails on per-request seeds: the engine's seed still holds
                                seed=sampling.seed if self.on_gpu else None,
                                # a non-streamed request needs no per-step outputs: less work per token
                                output_kind=RequestOutputKind.DELTA if sampling.stream else
                                RequestOutputKind.FINAL_ONLY)
        self._placed(+1)
        try:
            # A client that disconnects cancels this generator; AsyncLLM then aborts the request.
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
                tokens = list(out.outputs[0].token_ids)
                if tokens:
                    yield tokens
        finally:
            self._placed(-1)

    def _placed(self, change: int) -> None:
        self.ongoing += change
        if self.placement:
            self.placement.update(self.ongoing)

    def healthy(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()


class TorchAsyncEngine:
    name = "torch"

    def __init__(self, checkpoint: str, **_):
        from raylm.model.engine import Engine
        from raylm.model.hf import load_pretrained

        self.engine = Engine(load_pretrained(Path(checkpoint)))
        # One generation at a time (Engine.stream holds one KV cache). Requests queue on the asyncio lock, so a
        # client that leaves while queued is cancelled there and never prefills; the thread lock covers the
        # moment a cancelled generation's thread still finishes its last token.
        self.turn = asyncio.Lock()
        self.busy = threading.Lock()
        self.started = 0  # generations begun (tests: a cancelled waiter never counts)

    async def stream(self, ids: list[int], sampling: Sampling, stop_ids: tuple[int, ...]) -> AsyncIterator[list[int]]:
        async with self.turn:
            async for tokens in self._generate(ids, sampling, stop_ids):
                yield tokens

    async def _generate(self, ids: list[int], sampling: Sampling,
                        stop_ids: tuple[int, ...]) -> AsyncIterator[list[int]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        self.started += 1

        def produce() -> None:
            try:
                with self.busy:
                    for token in self.engine.stream(ids, sampling.max_tokens, sampling.temperature, None,
                                                    sampling.top_p, stop_ids=stop_ids, seed=sampling.seed):
                        if cancelled.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, token)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except Exception as err:  # handed to the request's coroutine, which reports it
                loop.call_soon_threadsafe(queue.put_nowait, err)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield [item]
        finally:
            cancelled.set()

    def healthy(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass


async def coalesce(source: AsyncIterator[list[int]], interval_s: float) -> AsyncIterator[list[int]]:
    """Merge token batches that arrive within `interval_s` of a batch's first token; the first token and the
    end of the stream pass at once, so neither time to first token nor latency grows."""
    if interval_s <= 0:
        async for tokens in source:
            yield tokens
        return
    queue: asyncio.Queue = asyncio.Queue()
    ended = asyncio.Event()

    async def pump() -> None:
        try:
            async for tokens in source:
                queue.put_nowait(tokens)
        except Exception as err:  # raised again in the consumer
            queue.put_nowait(err)
        finally:
            queue.put_nowait(_END)
            ended.set()

    task = asyncio.create_task(pump())
    try:
        first, done = True, False
        while not done and (item := await queue.get()) is not _END:
            if not first:  # collect what the engine samples in the next interval_s, unless the stream ends
                try:
                    await asyncio.wait_for(ended.wait(), interval_s)
                except asyncio.TimeoutError:
                    pass
            first = False
            batch = [item]
            while not queue.empty():
                part = queue.get_nowait()
                done = part is _END
                if done:
                    break
                batch.append(part)
            tokens = []
            for part in batch:
                if isinstance(part, Exception):
                    raise part
                tokens += part
            yield tokens
    finally:
        task.cancel()  # a client gone or a stop string hit: cancelling the source aborts the engine request


_END = object()


def make_engine(kind: str, checkpoint: str, max_model_len: int, kv_cache_gib: int = 1, seed: int = 0,
                colocate_engine_core: bool = True,
                colocate_from_requests: int = 1):
    from raylm.rl.rollout import vllm_available

    if kind == "vllm" and not vllm_available():
        print("[serve] vLLM is not installed: replicas use raylm's torch engine", flush=True)
        kind = "torch"
    if kind == "torch":
        return TorchAsyncEngine(checkpoint, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, seed=seed)
    return VllmAsyncEngine(checkpoint, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, seed=seed,
                           colocate_engine_core=colocate_engine_core, colocate_from_requests=colocate_from_requests)
