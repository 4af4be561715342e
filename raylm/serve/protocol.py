"""The OpenAI wire format the server speaks: strict request models, error bodies, response and SSE chunks.

Requests are validated here, before any token is generated; every problem a client
can fix becomes an `APIError`, sent as OpenAI's error body naming the parameter:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

    request = read_request(ChatRequest, body_bytes)   # bytes -> request, or APIError(4xx)

Every accepted field has a type, a range and a shape (tool calls included); text
must be valid Unicode (no lone surrogates); OpenAI fields raylm cannot honour get a
400 naming them unless they carry their no-op value, and unknown fields get a 400,
as OpenAI's own API answers them. JSON nested past Python's recursion limit or
holding integers of thousands of digits is a 400 too, never a traceback.

Server-run tools are reported in an extension field, `tool_trace`, on the message
(and `tool_event` on stream deltas): OpenAI's `tool_calls` would tell a client to
run the tool itself, which is not what happened.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate: not valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
INT64 = 2**63 - 1

# OpenAI request fields raylm does not implement: accepted only with the value that means "off".
NO_OP_VALUES: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "response_format": (None, {"type": "text"}),
    "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False), "functions": (None, []),
    "function_call": (None, "none", "auto"), "modalities": (None, ["text"]), "audio": (None,),
    "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""),
}
IGNORED = ("user", "metadata", "store", "service_tier")  # bookkeeping fields that change nothing in the answer


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class FunctionCall(Strict):
    name: Text = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    arguments: Text | dict[str, Any] = ""


class ToolCall(Strict):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None

    @model_validator(mode="after")
    def _shape(self) -> "Message":
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only on an assistant message with tool_calls)")
        return self

    def text_size(self) -> int:
        """Characters of text it carries (content, tool calls), counted without rendering it."""
        content = self.content or ""
        size = len(content) if isinstance(content, str) else sum(len(part.text) for part in content)
        return size + sum(len(str(call.function.model_dump())) for call in self.tool_calls or [])

    def as_chat(self) -> dict:
        """The dict raylm/tokenizer/chat.py renders: text parts joined, OpenAI's `developer` read as `system`."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return out


class Request(Strict):
    model: Text = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=INT64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=-(2**63), le=INT64)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        for key, value in list(body.items()):
            if key in NO_OP_VALUES:
                if value not in NO_OP_VALUES[key]:
                    raise APIError(400, f"{key} is not supported by this server", param=key,
                                   code="unsupported_parameter")
                del body[key]
            elif key in IGNORED:
                del body[key]
            elif key not in cls.model_fields:
                raise APIError(400, f"Unrecognized request argument supplied: {key}", param=key,
                               code="unknown_parameter")
        return body

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of up to 256 characters")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def text_size(self) -> int:
        """Characters of input text: bounded before anything is tokenized."""
        raise NotImplementedError


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64)
    tools: list | None = None

    @field_validator("tools")
    @classmethod
    def _no_client_tools(cls, tools):
        if tools:
            raise ValueError("client-side tools are not supported: this server runs its own tools "
                             "(search, calculator) and reports them in tool_trace")
        return tools

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict]:
        return [message.as_chat() for message in self.messages]

    def text_size(self) -> int:
        return sum(message.text_size() for message in self.messages)


class CompletionRequest(Request):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=1, le=INT64)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("send one prompt per request")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("prompt is empty")
        return prompt

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    def text_size(self) -> int:
        return len(self.prompt)


def read_request(model: type[Request], raw: bytes) -> Request:
    """Request body bytes -> a validated request, or a 400 naming the first bad field."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError as err:  # not JSON, not UTF-8, or an integer of more than 4300 digits
        reason = "" if isinstance(err, json.JSONDecodeError) else f" ({str(err).split(':')[0]})"
        raise APIError(400, f"the request body is not valid JSON{reason}") from None
    return parse(model, body)


def _is_field(part: str | int) -> bool:
    """A location part that names a field or an index, not one of pydantic's union-member tags."""
    return isinstance(part, int) or (part.isidentifier() and part not in ("str", "int", "float", "bool", "dict"))


def parse(model: type[Request], body: Any) -> Request:
    """JSON value -> request, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = max(err.errors(), key=lambda e: len(e["loc"]))  # the deepest: in a union, the closest member
        param = ".".join(str(p) for p in first["loc"] if _is_field(p)) or None
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param=param) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(request_id: str, model: str, content: str, finish: str, trace: list[dict], use: dict) -> dict:
    message = {"role": "assistant", "content": content}
    if trace:
        message["tool_trace"] = trace
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": use}


def chat_chunk(request_id: str, model: str, delta: dict, finish: str | None = None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def completion_response(request_id: str, model: str, text: str, finish: str | None, use: dict | None) -> dict:
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
    if use is not None:
        body["usage"] = use
    return body


def usage_chunk(request_id: str, model: str, obj: Literal["chat.completion.chunk", "text_completion"],
                use: dict) -> dict:
    return {"id": request_id, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": use}


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
