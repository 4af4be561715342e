"""The Ray Serve deployment: an OpenAI-compatible FastAPI ingress that holds the engine.

Routes (one replica answers all of them; Serve's proxy spreads requests over replicas):

    GET  /                     the chat page (raylm/serve/static/chat.html)
    GET  /health               200 while the engine is alive, else 503
    GET  /v1/models            the served model
    POST /v1/chat/completions  chat, tools run by the server, SSE when "stream": true
    POST /v1/completions       raw text continuation (no chat template, no tools)

Ingress and engine live in the same replica on purpose: a streamed token then
crosses one hop (proxy -> replica) instead of two, which matters at 32 clients on
a small machine; autoscaling adds whole replicas. Deployed by raylm/serve/deploy.py.
Errors reach clients as OpenAI error bodies; tracebacks stay in the replica's log.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve

from raylm.config import ServeConfig, StorageConfig
from raylm.serve.assistant import Assistant, Turn
from raylm.serve.protocol import (APIError, ChatRequest, CompletionRequest, chat_chunk, chat_response,
                                  completion_response, new_id, parse, sse, usage, usage_chunk)
from raylm.storage import Storage

log = logging.getLogger("ray.serve")
PAGE = Path(__file__).parent / "static" / "chat.html"

app = FastAPI(title="raylm", docs_url=None, redoc_url=None, openapi_url=None)
INTERNAL = APIError(500, "internal server error (details are in the server log)", type="server_error")


@app.exception_handler(APIError)
async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@app.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse(INTERNAL.body(), status_code=500)


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
        options = StorageConfig.model_validate(storage or {})
        local = lambda uri: Storage(options.model_copy(update={"uri": uri})).local("")  # noqa: E731
        self.assistant = Assistant(local(checkpoint), self.settings, local(search_db) if search_db else None)
        self.api_key = os.environ.get(self.settings.api_key_env) or None
        config = {"model": self.settings.model_name, "system": self.assistant.system,
                  "tools": sorted(self.assistant.tools), "needs_key": self.api_key is not None,
                  "context": self.assistant.context_len}
        # "</" escaped: a system prompt containing "</script>" must not end the page's script
        self.page = PAGE.read_text().replace("/*RAYLM_CONFIG*/null", json.dumps(config).replace("</", "<\\/"))

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: vLLM's engine-core processes would outlive it otherwise."""
        assistant = getattr(self, "assistant", None)
        if assistant is not None:
            assistant.engine.shutdown()

    def check_health(self) -> None:
        """Serve calls this periodically; a dead engine gets the replica replaced."""
        if not self.assistant.engine.healthy():
            raise RuntimeError("engine is dead")

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    async def _body(self, request: Request, model: type):
        self._authorize(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        parsed = parse(model, body)
        if parsed.model != self.settings.model_name:
            raise APIError(404, f"The model '{parsed.model}' does not exist; this server has "
                                f"'{self.settings.model_name}'.", param="model", code="model_not_found")
        return parsed

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/health")
    async def health(self) -> JSONResponse:
        ok = self.assistant.engine.healthy()
        return JSONResponse({"status": "ok" if ok else "engine dead", "engine": self.assistant.engine.name},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "raylm", "max_model_len": self.assistant.context_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        body = await self._body(request, ChatRequest)
        turn = self.assistant.chat_turn(body)
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
        body = await self._body(request, CompletionRequest)
        turn = self.assistant.completion_turn(body)
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
