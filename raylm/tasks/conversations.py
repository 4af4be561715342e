"""User conversations from JSONL in OpenAI's `messages` format, validated line by line.

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}

Every line must parse, hold a `messages` list that follows the conversation
protocol (raylm/tokenizer/chat.py) and contain at least one assistant message
(otherwise it teaches nothing); a bad line stops the import with its file and
line number, so a user fixes the data instead of training on half of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from raylm.tokenizer.chat import ChatFormatError, validate


class ConversationError(ValueError):
    """A malformed line in a conversations file; the message names the file and line."""


def load_conversations(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise ConversationError(f"{path}: no such file")
    conversations = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConversationError(f"{where}: not valid JSON ({err.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list):
                raise ConversationError(f"{where}: expected an object with a \"messages\" list")
            try:
                validate(messages)
            except ChatFormatError as err:
                raise ConversationError(f"{where}: {err}") from None
            if not any(m["role"] == "assistant" for m in messages):
                raise ConversationError(f"{where}: no assistant message to learn from")
            conversations.append([{k: v for k, v in m.items() if k in ("role", "content", "tool_calls")}
                                  for m in messages])
    if not conversations:
        raise ConversationError(f"{path}: no conversations")
    return conversations
