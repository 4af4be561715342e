"""`raylm chat`: talk to a checkpoint in the terminal, tokens printed as they are sampled.

    raylm chat --checkpoint runs/tiny/sft/hf [--system "You are Ada."]

Commands: /system TEXT (new system message, clears the conversation), /reset,
/quit (or Ctrl-D). Tool calls run here (calculator; search when the run has a
search index) and are shown in brackets, as the chat page shows them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from raylm.model.engine import Engine
from raylm.model.hf import load_pretrained
from raylm.tasks.knowledge import default_system
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat
from raylm.tools.calculator import calculate
from raylm.tools.runner import stream_reply


def chat_loop(folder: Path, system: str | None = None, search_db: Path | None = None, temperature: float = 0.0,
              max_tokens: int = 160, read=input, write=sys.stdout.write) -> list[dict]:
    """The REPL; `read`/`write` are injectable so a test can drive it. Returns the last conversation."""
    chat = ChatFormat(load(folder))
    engine = Engine(load_pretrained(folder))
    tools = {"calculator": calculate}
    if search_db:
        from raylm.tools.search import SearchIndex

        tools["search"] = SearchIndex(search_db).search
    if system is None:
        system = default_system(search="search" in tools)
    messages = [{"role": "system", "content": system}]
    write(f"raylm chat: {folder} (tools: {', '.join(tools)}). /system TEXT, /reset, /quit\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("\n")
            return messages
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return messages
        if line.startswith("/system ") or line == "/reset":
            system = line[len("/system "):].strip() if line.startswith("/system ") else system
            messages = [{"role": "system", "content": system}]
            write("(new conversation)\n")
            continue
        messages.append({"role": "user", "content": line})
        prompt = chat.prompt(messages)
        if len(prompt) >= engine.model.cfg.max_seq_len:  # keep the system message, drop the oldest turns
            messages = [messages[0], messages[-1]]
            prompt = chat.prompt(messages)
        write("assistant> ")
        reply = []
        for event in stream_reply(engine, chat, prompt, tools, max_tokens, temperature=temperature):
            if event["type"] == "text":
                write(event["text"])
                reply.append(event["text"])
            elif event["type"] == "tool_call":
                write(f"[{event['name']}: {event['argument']}]")
            elif event["type"] == "tool_result":
                write(f"[-> {event['content'][:120]}]")
            elif not event["finished"]:
                write(" [stopped: token limit]")
            sys.stdout.flush()
        write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
