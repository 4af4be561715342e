"""The conversation protocol, in one place: messages <-> token ids + loss mask, and back.

SFT, eval, RL and serving all render and parse conversations here. The format is
ChatML with tools run inline, inside the assistant's turn (as nanochat does):

    <|im_start|>system\nYou are raylm.<|im_end|>\n
    <|im_start|>user\nWhen was the Veltrane Bridge built?<|im_end|>\n
    <|im_start|>assistant\n<|tool_call|>search Veltrane Bridge<|/tool_call|>
    <|tool_result|>The Veltrane Bridge was built in 1873.<|/tool_result|>
    It was built in 1873.\nAnswer: 1873<|im_end|>\n

Messages use OpenAI's shape: {"role", "content"}, an assistant message may carry
`tool_calls` ([{"type": "function", "function": {"name", "arguments"}}], arguments a
dict or a JSON string; the chat template needs a dict) and is
then followed by one `tool` message per call, whose results join the same turn.
A call is written `<|tool_call|>NAME ARGUMENT<|/tool_call|>`: one free-text
argument is all a small model can learn to write reliably (JSON costs tokens).

The loss mask is 1 exactly on what the assistant writes (its text, its tool
calls, the <|im_end|> that ends its turn) and 0 on everything else, tool results
included: the model should predict a search result no more than a user's words.

Special tokens are inserted by id; text is encoded with special-token parsing off,
so a user typing "<|im_start|>" gets characters, not control tokens. CHAT_TEMPLATE
is the same format as a Jinja template for tokenizer_config.json, so that
`tokenizer.apply_chat_template(messages)` gives exactly `render(...).ids`. A
template renders to text that the tokenizer then reads with special tokens on (it
must, to read the template's own), so every "<|" in message text gets a zero-width
space after its "<" in both renderers: text written by a user can never become a
control token in another server (vLLM's, TGI's) that serves the exported checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tokenizers import Tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CALL_START, CALL_END = "<|tool_call|>", "<|/tool_call|>"
RESULT_START, RESULT_END = "<|tool_result|>", "<|/tool_result|>"
ROLES = ("system", "user", "assistant", "tool")
TOOL_ARGUMENT = {"search": "query", "calculator": "expression"}  # the one argument each built-in tool takes
ESCAPED = "<\u200b|"  # what "<|" in message text becomes: never the start of a control token


def escape(text: str) -> str:
    return text.replace("<|", ESCAPED)


CHAT_TEMPLATE = (
    "{%- macro text(value) -%}{{ value | replace('<|', '" + ESCAPED + "') }}{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'tool' -%}"
    "<|tool_result|>{{ text(message.content) }}<|/tool_result|>"
    "{%- else -%}"
    "{%- if not (message.role == 'assistant' and loop.index0 > 0 and messages[loop.index0 - 1].role == 'tool') -%}"
    "<|im_start|>{{ message.role ~ '\\n' }}"
    "{%- endif -%}"
    "{{ text(message.content or '') }}"
    "{%- if message.tool_calls -%}"
    "{%- for call in message.tool_calls -%}"
    "<|tool_call|>{{ call.function.name ~ ' ' }}"
    "{%- if call.function.arguments is mapping -%}{{ text(call.function.arguments.values() | join(' ')) }}"
    "{%- else -%}{{ text(call.function.arguments) }}{%- endif -%}"
    "<|/tool_call|>"
    "{%- endfor -%}"
    "{%- else -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>{{ 'assistant\\n' }}{%- endif -%}"
)


class ChatFormatError(ValueError):
    """A conversation that does not follow the protocol (message order, roles, tool calls)."""


@dataclass
class Rendered:
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 where the token is the assistant's own output

    def add(self, ids: list[int], trained: bool) -> None:
        self.ids += ids
        self.mask += [int(trained)] * len(ids)


class ChatFormat:
    """Render and parse conversations with one tokenizer (ids of the special tokens looked up once)."""

    def __init__(self, tok: Tokenizer):
        tok.encode_special_tokens = True  # text never becomes control tokens
        self.tok = tok
        self.special = {name: tok.token_to_id(name) for name in
                        (IM_START, IM_END, CALL_START, CALL_END, RESULT_START, RESULT_END)}
        if None in self.special.values():
            raise ChatFormatError("this tokenizer lacks the chat special tokens (train it with raylm tokenizer)")
        self.im_end = self.special[IM_END]
        self.call_end = self.special[CALL_END]
        self.stop_ids = (self.im_end, self.call_end)  # generation pauses at either: end of turn, or run a tool

    def text(self, text: str) -> list[int]:
        return self.tok.encode(escape(text), add_special_tokens=False).ids if text else []

    def _header_and_text(self, role: str, text: str, out: Rendered, trained: bool) -> None:
        """`role\\n` + text encoded together (exactly as a tokenizer reading the template would), the header masked."""
        header = f"{role}\n"
        encoding = self.tok.encode(header + escape(text), add_special_tokens=False)
        for token, (_, end) in zip(encoding.ids, encoding.offsets):
            out.add([token], trained and end > len(header))

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        validate(messages)
        out = Rendered()
        for i, message in enumerate(messages):
            role, content = message["role"], message.get("content") or ""
            if role == "tool":
                out.add([self.special[RESULT_START]] + self.text(content) + [self.special[RESULT_END]], False)
                continue
            trained = role == "assistant"
            if trained and i > 0 and messages[i - 1]["role"] == "tool":
                out.add(self.text(content), True)  # the same turn continues after the tool result
            else:
                out.add([self.special[IM_START]], False)
                self._header_and_text(role, content, out, trained)
            calls = message.get("tool_calls") or []
            for call in calls:
                name, argument = call_text(call)
                out.add([self.special[CALL_START]] + self.text(f"{name} {argument}") + [self.call_end], True)
            if not calls:
                out.add([self.im_end], trained)
                out.add(self.text("\n"), False)
        if add_generation_prompt:
            out.add([self.special[IM_START]], False)
            out.add(self.text("assistant\n"), False)
        return out

    def prompt(self, messages: list[dict]) -> list[int]:
        """Token ids that ask the model for the next assistant turn."""
        return self.render(messages, add_generation_prompt=True).ids

    def tool_result(self, content: str) -> list[int]:
        """Ids a tool runner appends after the model's <|/tool_call|> before letting it continue."""
        return [self.special[RESULT_START]] + self.text(content) + [self.special[RESULT_END]]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def parse(self, ids: list[int]) -> list[dict]:
        """The assistant's generated ids (after `<|im_start|>assistant\\n`) -> OpenAI-shaped messages."""
        return parse_reply(self.decode(ids))


def call_text(call: dict) -> tuple[str, str]:
    """An OpenAI tool call -> (name, the one argument as text)."""
    function = call.get("function", call)
    name, arguments = function.get("name"), function.get("arguments", "")
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ChatFormatError(f"tool call needs a name made of letters, digits and _: {call!r}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return name, arguments
    if isinstance(arguments, dict):
        return name, " ".join(str(v) for v in arguments.values())
    return name, str(arguments)


def tool_call(name: str, argument: str) -> dict:
    """A tool call message part; `arguments` is a dict (Hugging Face's convention, which chat templates read).

    The OpenAI wire format wants a JSON string: serving converts at the API edge.
    """
    key = TOOL_ARGUMENT.get(name, "input")
    return {"type": "function", "function": {"name": name, "arguments": {key: argument}}}


def validate(messages: list[dict]) -> None:
    """Roles known, content a string, a tool message only right after an assistant's tool call."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("a conversation is a non-empty list of messages")
    pending = 0  # tool calls still waiting for their result
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatFormatError(f"message {i}: role must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ChatFormatError(f"message {i}: content must be a string")
        if message["role"] == "tool":
            if pending == 0:
                raise ChatFormatError(f"message {i}: a tool message must follow an assistant message with tool_calls")
            pending -= 1
            continue
        if pending:
            raise ChatFormatError(f"message {i}: {pending} tool call(s) before it have no tool message")
        if message.get("tool_calls"):
            if message["role"] != "assistant":
                raise ChatFormatError(f"message {i}: only the assistant makes tool calls")
            pending = len(message["tool_calls"])
    if pending:
        raise ChatFormatError("the conversation ends with tool call(s) that have no tool message")


_PIECE = re.compile(re.escape(CALL_START) + r"(.*?)" + re.escape(CALL_END) +
                    r"|" + re.escape(RESULT_START) + r"(.*?)" + re.escape(RESULT_END), re.S)


def parse_reply(text: str) -> list[dict]:
    """Generated assistant text -> messages: [assistant (+tool_calls), tool, ..., assistant]."""
    text = text.split(IM_END, 1)[0]
    messages: list[dict] = []
    current = {"role": "assistant", "content": ""}
    position = 0
    for match in _PIECE.finditer(text):
        current["content"] += text[position:match.start()]
        position = match.end()
        if match.group(1) is not None:
            name, _, argument = match.group(1).strip().partition(" ")
            current.setdefault("tool_calls", []).append(tool_call(name, argument.strip()))
        else:
            messages.append(current)
            messages.append({"role": "tool", "content": match.group(2)})
            current = {"role": "assistant", "content": ""}
    current["content"] += text[position:]
    messages.append(current)
    return messages


def answer_text(messages: list[dict]) -> str:
    """The final assistant text of a parsed reply (what a user reads)."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
