"""The torch engine behind the API: one generation at a time, and a request whose client left while it
waited in the queue never starts (no prefill for nobody)."""

from __future__ import annotations

import asyncio

from raylm.serve.engines import Sampling, TorchAsyncEngine


def test_a_cancelled_waiter_never_starts(scripted_checkpoint):
    checkpoint, _, chat = scripted_checkpoint
    engine = TorchAsyncEngine(checkpoint.local(""))
    prompt = chat.prompt([{"role": "user", "content": "Hi"}])

    async def scenario() -> list[int]:
        first = engine.stream(prompt, Sampling(max_tokens=8, temperature=0), chat.stop_ids)
        tokens = await first.__anext__()  # the first request holds the engine ...
        waiter = asyncio.create_task(anext(engine.stream(prompt, Sampling(max_tokens=8), chat.stop_ids)))
        await asyncio.sleep(0.2)  # ... the second queues behind it ...
        waiter.cancel()  # ... and its client leaves
        async for more in first:
            tokens += more
        return tokens

    tokens = asyncio.run(scenario())
    assert tokens and engine.started == 1
    after = asyncio.run(_collect(engine, prompt, chat.stop_ids))  # the engine is free again
    assert after == tokens and engine.started == 2


async def _collect(engine, prompt, stop_ids) -> list[int]:
    return [t async for batch in engine.stream(prompt, Sampling(max_tokens=8, temperature=0), stop_ids)
            for t in batch]
