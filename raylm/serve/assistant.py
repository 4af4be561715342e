"""What one replica does with a request, Serve aside: render, budget, generate, run tools, stop.

    assistant = Assistant("runs/tiny/rl/hf", ServeConfig(), search_db="runs/tiny/search.db")
    turn = assistant.chat_turn(ChatRequest(model="raylm", messages=[{"role": "user", "content": "Hi"}]))
    async for event in assistant.events(turn):
        ...   # {"type": "text" | "tool_call" | "tool_result" | "end", ...}

`chat_turn`/`completion_turn` do every check that can fail before a token is
generated (messages, context length, max_tokens), so a bad request gets a 400
instead of a broken stream. `events` is the tool loop of raylm/tools/runner.py on
an async engine: generation pauses at `<|/tool_call|>`, the server runs the tool,
its result joins the context, the model continues the same turn.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator

from raylm.config import ServeConfig
from raylm.serve.engines import Sampling, coalesce, make_engine
from raylm.serve.protocol import APIError, ChatRequest, CompletionRequest
from raylm.tokenizer.bpe import EOS, SPECIAL_TOKENS, load
from raylm.tokenizer.chat import ChatFormat, ChatFormatError
from raylm.tools.runner import Tools, TurnDecoder, run_tool


@dataclass
class Turn:
    prompt: list[int]
    sampling: Sampling
    stop_ids: tuple[int, ...]
    stops: list[str] = field(default_factory=list)
    tools: Tools = field(default_factory=dict)
    max_tool_rounds: int = 0
    interval_s: float = 0.0  # tokens sampled this close together go out as one chunk


class StopStrings:
    """Cuts text at the first stop string; holds back a tail that might be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        text = self.held + text
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        split = max(len(text) - self.keep, 0)
        self.held = text[split:]
        return text[:split], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def default_system(settings: ServeConfig, has_search: bool) -> str:
    from raylm.tasks.knowledge import default_system as identity_system

    return settings.system_prompt if settings.system_prompt is not None else identity_system(has_search)


class Assistant:
    def __init__(self, checkpoint: str | Path, settings: ServeConfig, search_db: str | Path | None = None):
        folder = Path(checkpoint)
        self.settings = settings
        self.chat = ChatFormat(load(folder))
        self.eos = self.chat.tok.token_to_id(EOS)
        self.context_len = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
        # No token holds more characters than the longest in the vocabulary, so text longer than this cannot fit
        # the context whatever it says: refused by its length, before the tokenizer spends a second on it.
        longest = max(len(t) for t in self.chat.tok.get_vocab() if t not in SPECIAL_TOKENS)
        self.max_chars = self.context_len * longest
        self.tools: Tools = {}
        if "calculator" in settings.tools:
            from raylm.tools.calculator import calculate

            self.tools["calculator"] = calculate
        if "search" in settings.tools and search_db:
            from raylm.tools.search import SearchIndex

            self.tools["search"] = SearchIndex(search_db).search
        self.system = default_system(settings, "search" in self.tools)
        self.engine = make_engine(settings.engine, str(folder.resolve()), self.context_len, settings.kv_cache_gib,
                                  colocate_engine_core=settings.colocate_engine_core,
                                  colocate_from_requests=settings.colocate_from_requests)

    def _budget(self, prompt: list[int], requested: int | None) -> int:
        room = self.context_len - len(prompt)
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.context_len} tokens; "
                                f"the input is {len(prompt)} tokens. Shorten the messages.",
                           param="messages", code="context_length_exceeded")
        return min(requested or self.settings.default_max_tokens, self.settings.max_tokens_cap, room)

    def _sampling(self, request, prompt: list[int]) -> Sampling:
        return Sampling(self._budget(prompt, request.token_limit), request.temperature, request.top_p, request.seed,
                        stream=request.stream)

    def _interval(self, request) -> float:
        # Each SSE chunk costs the same (JSON, a Serve message, a proxy write) whether it holds one token or
        # ten; coalescing for a few ms is invisible to a reader and frees CPU for generation under load.
        return self.settings.stream_interval_ms / 1000 if request.stream else 0.0

    def _fits(self, request: ChatRequest | CompletionRequest) -> None:
        if (size := request.text_size()) > self.max_chars:
            raise APIError(400, f"This model's maximum context length is {self.context_len} tokens; the input is "
                                f"{size} characters, more than that many tokens can hold. Shorten the messages.",
                           param="messages" if isinstance(request, ChatRequest) else "prompt",
                           code="context_length_exceeded")

    def chat_turn(self, request: ChatRequest) -> Turn:
        self._fits(request)
        messages = request.chat_messages()
        if messages[0].get("role") != "system":  # the identity comes from the system message
            messages.insert(0, {"role": "system", "content": self.system})
        if messages[-1].get("role") == "assistant":
            raise APIError(400, "the last message must not be the assistant's: nothing to answer", param="messages")
        try:
            prompt = self.chat.prompt(messages)
        except ChatFormatError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        return Turn(prompt, self._sampling(request, prompt), self.chat.stop_ids, request.stop, self.tools,
                    self.settings.max_tool_rounds, self._interval(request))

    def completion_turn(self, request: CompletionRequest) -> Turn:
        self._fits(request)
        prompt = [self.eos, *self.chat.text(request.prompt)]  # a document starts after <|endoftext|>
        return Turn(prompt, self._sampling(request, prompt), (self.eos, self.chat.im_end), request.stop,
                    interval_s=self._interval(request))

    async def events(self, turn: Turn) -> AsyncIterator[dict]:
        """{"type": "text", "text"}, {"type": "tool_call", "name", "argument"}, {"type": "tool_result", "content"},
        and last {"type": "end", "finish_reason": "stop" | "length", "prompt_tokens": int, "completion_tokens": int}.

        Usage as a client pays for it: completion_tokens are the sampled ones; prompt_tokens are the request's
        prompt plus the tool results the server put into the context (read by the model, never sampled)."""
        context, generated = list(turn.prompt), 0

        def end(reason: str) -> dict:
            return {"type": "end", "finish_reason": reason, "prompt_tokens": len(context) - generated,
                    "completion_tokens": generated}

        stops = StopStrings(turn.stops)
        for round_ in range(turn.max_tool_rounds + 1):
            decoder = TurnDecoder(self.chat, hidden=turn.stop_ids)
            budget = min(turn.sampling.max_tokens - generated, self.context_len - len(context))
            if budget < 1:
                break
            stream = self.engine.stream(context, replace(turn.sampling, max_tokens=budget), turn.stop_ids)
            async for tokens in coalesce(stream, turn.interval_s):
                context += tokens
                generated += len(tokens)
                text, hit = stops.feed(decoder.feed(tokens))
                if text:
                    yield {"type": "text", "text": text}
                if hit:  # leaving the loop closes the engine's stream, which aborts the request
                    yield end("stop")
                    return
            text, hit = stops.feed(decoder.flush())
            text += "" if hit else stops.flush()
            if text:
                yield {"type": "text", "text": text}
            call = decoder.tool_call()
            if call and round_ < turn.max_tool_rounds and not hit:
                yield {"type": "tool_call", "name": call[0], "argument": call[1]}
                result = await asyncio.to_thread(run_tool, turn.tools, *call)  # a search must not block the loop
                yield {"type": "tool_result", "content": result}
                context += self.chat.tool_result(result)
                continue
            done = hit or decoder.finished or call is not None or context[-1] == self.eos
            yield end("stop" if done else "length")
            return
        yield end("length")
