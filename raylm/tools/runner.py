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
        pending: list[int] = []  # tokens not yet printed: a multi-byte character may span several
        call: list[int] = []
        in_call = False
        budget = min(max_new_tokens - generated, limit - len(context))
        last = None
        for token in engine.stream(context, budget, temperature, top_k, top_p, stop_ids=chat.stop_ids, seed=seed):
            context.append(token)
            generated += 1
            last = token
            if token == chat.special[CALL_START]:
                in_call = True
            if in_call:
                call.append(token)
                continue
            if token == chat.im_end:
                break
            pending.append(token)
            text = chat.decode(pending)
            if not text.endswith("\ufffd"):
                yield {"type": "text", "text": text}
                pending = []
        if pending:
            yield {"type": "text", "text": chat.decode(pending)}
        if last == chat.call_end and round_ < max_tool_rounds:
            name, argument = last_call(chat, call)
            yield {"type": "tool_call", "name": name, "argument": argument}
            result = run_tool(tools, name, argument)
            yield {"type": "tool_result", "content": result}
            context += chat.tool_result(result)
            continue
        yield {"type": "end", "finished": last == chat.im_end, "generated": generated}
        return
    yield {"type": "end", "finished": False, "generated": generated}
