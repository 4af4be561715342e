"""The Ray Serve deployment: an OpenAI-compatible FastAPI ingress that holds the engine.

Routes (one replica answers all of them; Serve's proxy spreads requests over replicas):

    GET  /                     the chat page (raylm/serve/static/chat.html; it holds nothing about the server)
    GET  /health               200 while the engine is alive, else 503
    GET  /v1/models            the served model
    GET  /v1/raylm/config      what the chat page shows: model, system prompt, tools, context (needs the key)
    POST /v1/chat/completions  chat, tools run by the server, SSE when "stream": true
    POST /v1/completions       raw text continuation (no chat template, no tools)

Ingress and engine live in the same replica on purpose: a streamed token then
crosses one hop (proxy -> replica) instead of two, which matters at 32 clients on
a small machine; autoscaling adds whole replicas. Deployed by raylm/serve/deploy.py.
Errors reach clients as OpenAI error bodies; tracebacks stay in the replica's log.

A request passes raylm/serve/guards.py (key, content type, body size and read
time) on the event loop, then is parsed, validated and tokenized in a thread:
the loop that streams every other response and answers /health never runs a
tokenizer, and input longer than the context could hold is refused by its
character count before it is tokenized at all.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve

from raylm.config import ServeConfig, StorageConfig
from raylm.serve.assistant import Assistant, Turn
from raylm.serve.guards import (INTERNAL, authorize, install_error_handlers, load_api_key, page_headers, read_body,
                                require_json)
from raylm.serve.protocol import (APIError, ChatRequest, CompletionRequest, Request as APIRequest, chat_chunk,
                                  chat_response, completion_response, new_id, read_request, sse, usage, usage_chunk)
from raylm.storage import Storage

log = logging.getLogger("ray.serve")
PAGE = Path(__file__).parent / "static" / "chat.html"

app = FastAPI(title="raylm", docs_url=None, redoc_url=None, openapi_url=None)


install_error_handlers(app)


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    """SSE response; an error after the first byte can only be reported inside the stream, as vLLM does."""

    async def guarded() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except Exception:
            log.exception("stream failed")
            yield sse(INTERNAL.body())
        yield sse("[DONE]")

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@serve.deployment(name="ChatServer")
@serve.ingress(app)
class ChatServer:
    def __init__(self, checkpoint: str, settings: dict, search_db: str | None = None, storage: dict | None = None):
        """`checkpoint` and `search_db` are URIs in the run's storage (`storage`: its options); the replica
        reads them through node-local copies, so it may start on any node."""
        self.settings = ServeConfig.model_validate(settings)
        self.api_key = load_api_key(self.settings)  # before the engine: a replica without its key stops here
        options = StorageConfig.model_validate(storage or {})
        local = lambda uri: Storage(options.model_copy(update={"uri": uri})).local("")  # noqa: E731
        self.assistant = Assistant(local(checkpoint), self.settings, local(search_db) if search_db else None)
        self.max_body = int(self.settings.max_body_mb * 2**20)
        self.page = PAGE.read_text()
        self.page_headers = page_headers(self.page)

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: vLLM's engine-core processes would outlive it otherwise."""
        assistant = getattr(self, "assistant", None)
        if assistant is not None:
            assistant.engine.shutdown()

    def check_health(self) -> None:
        """Serve calls this periodically; a dead engine gets the replica replaced."""
        if not self.assistant.engine.healthy():
            raise RuntimeError("engine is dead")

    async def _turn(self, request: Request, model: type[APIRequest]) -> tuple[APIRequest, Turn]:
        """Guards on the loop (cheap, before the body is read), then parse + validate + tokenize in a thread."""
        authorize(request, self.api_key)
        require_json(request)
        raw = await read_body(request, self.max_body, self.settings.body_timeout_s)
        return await asyncio.to_thread(self._parse_and_render, raw, model)

    def _parse_and_render(self, raw: bytes, model: type[APIRequest]) -> tuple[APIRequest, Turn]:
        body = read_request(model, raw)
        if body.model != self.settings.model_name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server has "
                                f"'{self.settings.model_name}'.", param="model", code="model_not_found")
        if isinstance(body, ChatRequest):
            return body, self.assistant.chat_turn(body)
        return body, self.assistant.completion_turn(body)

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers=self.page_headers)

    @app.get("/health")
    async def health(self) -> JSONResponse:
        ok = self.assistant.engine.healthy()
        return JSONResponse({"status": "ok" if ok else "engine dead", "engine": self.assistant.engine.name},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        authorize(request, self.api_key)
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "raylm", "max_model_len": self.assistant.context_len}]}

    @app.get("/v1/raylm/config")
    async def config(self, request: Request) -> dict:
        authorize(request, self.api_key)
        return {"model": self.settings.model_name, "system": self.assistant.system,
                "tools": sorted(self.assistant.tools), "context": self.assistant.context_len}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        body, turn = await self._turn(request, ChatRequest)
        request_id, model = new_id("chatcmpl"), body.model
        if body.stream:
            return _stream(self._chat_chunks(request_id, model, turn, body.include_usage))
        content, trace = [], []
        async for event in self.assistant.events(turn):
            if event["type"] == "text":
                content.append(event["text"])
            elif event["type"] == "tool_call":
                trace.append({"name": event["name"], "argument": event["argument"]})
            elif event["type"] == "tool_result":
                trace[-1]["result"] = event["content"]
            else:
                end = event
        use = usage(end["prompt_tokens"], end["completion_tokens"])
        return chat_response(request_id, model, "".join(content), end["finish_reason"], trace, use)

    async def _chat_chunks(self, request_id: str, model: str, turn: Turn, include_usage: bool) -> AsyncIterator[str]:
        yield sse(chat_chunk(request_id, model, {"role": "assistant", "content": ""}))
        async for event in self.assistant.events(turn):
            if event["type"] == "text":
                yield sse(chat_chunk(request_id, model, {"content": event["text"]}))
            elif event["type"] == "tool_call":
                call = {"type": "call", "name": event["name"], "argument": event["argument"]}
                yield sse(chat_chunk(request_id, model, {"tool_event": call}))
            elif event["type"] == "tool_result":
                yield sse(chat_chunk(request_id, model, {"tool_event": {"type": "result",
                                                                        "content": event["content"]}}))
            else:
                yield sse(chat_chunk(request_id, model, {}, event["finish_reason"]))
                if include_usage:
                    use = usage(event["prompt_tokens"], event["completion_tokens"])
                    yield sse(usage_chunk(request_id, model, "chat.completion.chunk", use))

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        body, turn = await self._turn(request, CompletionRequest)
        request_id, model = new_id("cmpl"), body.model
        if body.stream:
            return _stream(self._completion_chunks(request_id, model, turn, body.include_usage))
        text = []
        async for event in self.assistant.events(turn):
            if event["type"] == "text":
                text.append(event["text"])
            elif event["type"] == "end":
                end = event
        use = usage(end["prompt_tokens"], end["completion_tokens"])
        return completion_response(request_id, model, "".join(text), end["finish_reason"], use)

    async def _completion_chunks(self, request_id: str, model: str, turn: Turn,
                                 include_usage: bool) -> AsyncIterator[str]:
        async for event in self.assistant.events(turn):
            if event["type"] == "text":
                yield sse(completion_response(request_id, model, event["text"], None, None))
            elif event["type"] == "end":
                yield sse(completion_response(request_id, model, "", event["finish_reason"], None))
                if include_usage:
                    use = usage(event["prompt_tokens"], event["completion_tokens"])
                    yield sse(usage_chunk(request_id, model, "text_completion", use))
