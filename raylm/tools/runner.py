"""Generate assistant replies and run the tools they call, in the middle of the turn.

The model writes `<|tool_call|>search Veltrane Bridge<|/tool_call|>`; generation
pauses there, the runner calls the tool, appends `<|tool_result|>...<|/tool_result|>`
to the context and lets the model continue the same turn, up to `max_tool_rounds`
times. Eval and RL use the batched `complete`; `raylm chat` and serving use
`stream_reply`, which yields text as it is sampled.

    replies = complete(engine, chat, [chat.prompt(messages)], tools=[{"calculator": calculate}],
                       max_new_tokens=96)
    replies[0].text, replies[0].messages, replies[0].finished
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from raylm.model.engine import Engine
from raylm.tokenizer.chat import CALL_START, ChatFormat, parse_reply

Tools = dict[str, Callable[[str], str]]


@dataclass
class Reply:
    ids: list[int] = field(default_factory=list)  # generated tokens and inserted tool results, after the prompt
    generated: int = 0                             # tokens the model sampled (tool results not counted)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    finished: bool = False                         # ended its turn with <|im_end|>
    text: str = ""                                 # decoded ids (special tokens kept)
    messages: list[dict] = field(default_factory=list)

    @property
    def answer(self) -> str:
        """What a user reads: the text after the last tool result."""
        return self.messages[-1]["content"] if self.messages else ""


def last_call(chat: ChatFormat, ids: list[int]) -> tuple[str, str]:
    """(name, argument) of the tool call that `ids` ends with."""
    text = chat.decode(ids).rsplit(CALL_START, 1)[-1]
    text = re.sub(r"<\|/tool_call\|>$", "", text).strip()
    name, _, argument = text.partition(" ")
    return name, argument.strip()


def run_tool(tools: Tools, name: str, argument: str) -> str:
    if name not in tools:
        return f"error: unknown tool '{name}' (available: {', '.join(sorted(tools)) or 'none'})"
    try:
        return tools[name](argument)
    except Exception as err:  # a broken tool is reported to the model, not raised through generation
        return f"error: {type(err).__name__}"


def complete(engine: Engine, chat: ChatFormat, prompts: list[list[int]], tools: list[Tools] | Tools | None = None,
             max_new_tokens: int = 128, max_tool_rounds: int = 2, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, batch_size: int = 64,
             seed: int | None = None) -> list[Reply]:
    """One assistant turn per prompt (batched), tools run between rounds; `tools` may differ per prompt."""
    per_prompt = tools if isinstance(tools, list) else [tools or {}] * len(prompts)
    replies = [Reply() for _ in prompts]
    active = list(range(len(prompts)))
    limit = engine.model.cfg.max_seq_len
    for round_ in range(max_tool_rounds + 1):
        budget = {i: min(max_new_tokens - replies[i].generated, limit - len(prompts[i]) - len(replies[i].ids))
                  for i in active}
        active = [i for i in active if budget[i] > 0]
        still = []
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            outs = engine.generate([prompts[i] + replies[i].ids for i in chunk], max(budget[i] for i in chunk),
                                   temperature, top_k, top_p, stop_ids=chat.stop_ids,
                                   seed=None if seed is None else seed + round_ * 100_003 + start)
            for i, out in zip(chunk, outs):
                out = out[:budget[i]]
                reply = replies[i]
                reply.ids += out
                reply.generated += len(out)
                if out and out[-1] == chat.im_end:
                    reply.finished = True
                elif out and out[-1] == chat.call_end and round_ < max_tool_rounds:
                    name, argument = last_call(chat, reply.ids)
                    reply.tool_calls.append((name, argument))
                    reply.ids += chat.tool_result(run_tool(per_prompt[i], name, argument))
                    still.append(i)
        active = still
        if not active:
            break
    for reply in replies:
        reply.text = chat.decode(reply.ids)
        reply.messages = parse_reply(reply.text)
    return replies


class TurnDecoder:
    """Sampled tokens of one generation round -> printable text; remembers a tool call the round ended with.

    Shared by `stream_reply` (terminal chat) and the server (raylm/serve/assistant.py).
    Text is UTF-8 safe: tokens that end inside a multi-byte character are held back.
    """

    def __init__(self, chat: ChatFormat, hidden: tuple[int, ...] = ()):
        self.chat = chat
        self.hidden = {chat.im_end, *hidden}  # stop tokens: end the text, never part of it
        self.pending: list[int] = []  # tokens not yet printed
        self.call: list[int] = []     # the tool call being written, from <|tool_call|>
        self.last: int | None = None

    def feed(self, tokens: list[int]) -> str:
        """Text that became printable with these tokens ('' if none)."""
        out = []
        for token in tokens:
            self.last = token
            if self.call or token == self.chat.special[CALL_START]:
                self.call.append(token)
            elif token not in self.hidden:
                self.pending.append(token)
                text = self.chat.decode(self.pending)
                if not text.endswith("\ufffd"):
                    out.append(text)
                    self.pending = []
        return "".join(out)

    def flush(self) -> str:
        text, self.pending = (self.chat.decode(self.pending) if self.pending else ""), []
        return text

    @property
    def finished(self) -> bool:
        return self.last == self.chat.im_end

    def tool_call(self) -> tuple[str, str] | None:
        """(name, argument) if the round ended with a complete tool call."""
        return last_call(self.chat, self.call) if self.last == self.chat.call_end and self.call else None


def stream_reply(engine: Engine, chat: ChatFormat, prompt: list[int], tools: Tools | None = None,
                 max_new_tokens: int = 256, max_tool_rounds: int = 2, temperature: float = 0.7,
                 top_k: int | None = 50, top_p: float | None = 0.95, seed: int | None = None) -> Iterator[dict]:
    """Events of one reply as it is generated:

    {"type": "text", "text": ...}                       decoded text (UTF-8 safe: held back until complete)
    {"type": "tool_call", "name": ..., "argument": ...}
    {"type": "tool_result", "content": ...}
    {"type": "end", "finished": bool, "generated": int}
    """
    tools = tools or {}
    context, generated = list(prompt), 0
    limit = engine.model.cfg.max_seq_len
    for round_ in range(max_tool_rounds + 1):
        decoder = TurnDecoder(chat)
        budget = min(max_new_tokens - generated, limit - len(context))
        for token in engine.stream(context, budget, temperature, top_k, top_p, stop_ids=chat.stop_ids, seed=seed):
            context.append(token)
            generated += 1
            if text := decoder.feed([token]):
                yield {"type": "text", "text": text}
        if text := decoder.flush():
            yield {"type": "text", "text": text}
        call = decoder.tool_call()
        if call and round_ < max_tool_rounds:
            yield {"type": "tool_call", "name": call[0], "argument": call[1]}
            result = run_tool(tools, *call)
            yield {"type": "tool_result", "content": result}
            context += chat.tool_result(result)
            continue
        yield {"type": "end", "finished": decoder.finished, "generated": generated}
        return
    yield {"type": "end", "finished": False, "generated": generated}
