"""The tool loop: generation pauses at a tool call, the tool runs, its result joins the turn, the turn ends.

The model is a real GPT whose weights are set to follow a script: attention and MLP
outputs are zero, so the next token depends on the current one only, and lm_head
maps each token of the script to its successor (a bigram table written into weights).
"""

from __future__ import annotations

import pytest
import torch

from raylm.model.engine import Engine
from raylm.model.gpt import GPT, GPTConfig
from raylm.tasks import generate_tasks
from raylm.tokenizer.bpe import load, save, train_bpe
from raylm.tokenizer.chat import CALL_START, ChatFormat
from raylm.tools.calculator import calculate
from raylm.tools.runner import complete, stream_reply


def scripted_model(successor: dict[int, int], vocab: int, max_seq_len: int = 128) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, dim=256, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=max_seq_len))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()  # the residual stream is the current token's embedding, nothing else
        embed = torch.randn(vocab, 256)
        model.model.embed_tokens.weight.copy_(embed)
        head = torch.zeros(vocab, 256)
        for token, after in successor.items():
            head[after] += embed[token] * 10  # logit of `after` is large exactly when the input is `token`
        model.lm_head.weight.copy_(head)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    texts = [str(t.conversation()) for t in generate_tasks({"arithmetic": 40, "identity": 40}, 0)]
    folder = tmp_path_factory.mktemp("runner_tok")
    save(train_bpe(texts + ["calculator 6*7 ok"] * 50, vocab_size=600, min_frequency=1), folder)
    chat = ChatFormat(load(folder))
    prompt = chat.prompt([{"role": "user", "content": "What is six times seven?"}])
    call = chat.text("calculator 6*7")
    answer = chat.text(" ok")
    assert len(set(call + answer)) == len(call + answer), "script tokens must be distinct"
    script = [prompt[-1], chat.special[CALL_START], *call, chat.call_end]
    after_result = [chat.special["<|/tool_result|>"], *answer, chat.im_end]
    successor = dict(zip(script, script[1:])) | dict(zip(after_result, after_result[1:]))
    model = scripted_model(successor, chat.tok.get_vocab_size())
    return chat, Engine(model), prompt


def test_complete_runs_the_tool_and_finishes_the_turn(setup):
    chat, engine, prompt = setup
    reply = complete(engine, chat, [prompt, prompt], {"calculator": calculate}, max_new_tokens=40)[0]
    assert reply.tool_calls == [("calculator", "6*7")]
    assert reply.finished
    assert "<|tool_result|>42<|/tool_result|>" in reply.text
    assert [m["role"] for m in reply.messages] == ["assistant", "tool", "assistant"]
    assert reply.messages[1]["content"] == "42" and reply.answer == " ok"
    assert reply.generated == len(reply.ids) - len(chat.tool_result("42"))  # the result is not "generated"


def test_tool_rounds_and_unknown_tools_are_bounded(setup):
    chat, engine, prompt = setup
    no_rounds = complete(engine, chat, [prompt], {"calculator": calculate}, max_new_tokens=40, max_tool_rounds=0)[0]
    assert not no_rounds.finished and not no_rounds.tool_calls and no_rounds.ids[-1] == chat.call_end
    missing = complete(engine, chat, [prompt], {}, max_new_tokens=40)[0]
    assert "error: unknown tool 'calculator'" in missing.text and missing.finished


def test_stream_reply_events(setup):
    chat, engine, prompt = setup
    events = list(stream_reply(engine, chat, prompt, {"calculator": calculate}, 40, temperature=0))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "tool_call" and events[0]["argument"] == "6*7"
    assert events[1] == {"type": "tool_result", "content": "42"}
    assert "".join(e["text"] for e in events if e["type"] == "text") == " ok"
    assert events[-1]["type"] == "end" and events[-1]["finished"]
