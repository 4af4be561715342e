"""Tool calls inside RL rollouts: a sample pauses at <|/tool_call|>, the real calculator runs, the result is spliced
in (masked out of the loss) and the same sample goes on, on both rollout engines and through the rl step."""

from __future__ import annotations

import json

import pytest
import torch

from raylm.config import RlConfig, StorageConfig
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from raylm.rl.learner import collate
from raylm.rl.rollout import RolloutPool
from raylm.storage import Storage
from raylm.tasks import Task
from raylm.tokenizer.chat import tool_call
from raylm.tokenizer.bpe import load
from raylm.tokenizer.chat import ChatFormat
from tests.tokenizer.test_bpe import CORPUS

QUESTION = [{"role": "user", "content": "What is 17 * 23?"}]
REPLY = [{"role": "assistant", "content": "", "tool_calls": [tool_call("calculator", "17 * 23")]},
         {"role": "tool", "content": "391"}, {"role": "assistant", "content": "Answer: 391"}]


@pytest.fixture(scope="module")
def calculator_user(tmp_path_factory):
    """A small model that has memorised one conversation in which it asks the calculator for 17 * 23."""
    from raylm.tokenizer.bpe import save, train_bpe

    root = tmp_path_factory.mktemp("tool_rollout")
    save(train_bpe(CORPUS, vocab_size=600, min_frequency=1), root / "tok")
    chat = ChatFormat(load(root / "tok"))
    ids = torch.tensor([chat.render(QUESTION + REPLY).ids])
    torch.manual_seed(0)
    # head_dim 32: the smallest that vLLM's CPU attention supports
    model = GPT(GPTConfig(vocab_size=600, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.01
    save_pretrained(model.eval(), root / "sft" / "hf", tokenizer_dir=root / "tok", chat=True)
    return root, chat


@pytest.mark.parametrize("engine", ["vllm", "torch"])
def test_samples_call_the_calculator_and_continue_after_its_result(ray_session, calculator_user, engine):
    root, chat = calculator_user
    pool = RolloutPool(engine, Storage(StorageConfig(uri=str(root / "sft" / "hf"))), "", num_workers=1,
                       stop_ids=[chat.im_end, chat.call_end])
    try:
        prompt = chat.prompt(QUESTION)
        groups = pool.generate([prompt, prompt], n=1, temperature=0.0, max_new_tokens=40, tools=[{}, {}])
        result = chat.tool_result("391")  # what the real calculator returned
        for (sample,) in groups:
            text = chat.decode(sample.ids)
            assert text.startswith("<|tool_call|>calculator 17 * 23<|/tool_call|><|tool_result|>391<|/tool_result|>")
            assert text.endswith("Answer: 391<|im_end|>") and sample.finished
            start = sample.ids.index(result[0])
            assert sample.mask == [1] * start + [0] * len(result) + [1] * (len(sample.ids) - start - len(result))
            assert len(sample.logprobs) == len(sample.ids)
            # the learner trains on the sampled tokens only: the tool result's targets are masked out
            _, mask, _ = collate([{"prompt": prompt, "response": sample.ids, "advantage": 1.0,
                                   "mask": sample.mask}], pad_id=0)
            assert mask[0].tolist() == [0.0] * (len(prompt) - 1) + [float(m) for m in sample.mask]

        # the sampled-token budget holds across rounds: the call fits, the answer does not, the turn is unfinished
        call_tokens = start
        (short,) = pool.generate([prompt], n=1, temperature=0.0, max_new_tokens=call_tokens + 2, tools=[{}])
        assert sum(short[0].mask) == call_tokens + 2 and not short[0].finished
        # without tools the pool stops at the call and runs nothing
        (plain,) = pool.generate([prompt], n=1, temperature=0.0, max_new_tokens=40)
        assert plain[0].ids[-1] == chat.call_end and plain[0].mask is None
    finally:
        pool.shutdown()


def test_rl_step_with_tools_trains_on_calling_samples(ray_session, calculator_user):
    from raylm.rl.driver import run_rl
    from raylm.runs import StepResult, run_step

    root, _ = calculator_user
    storage = Storage(StorageConfig(uri=str(root)))
    cfg = RlConfig(engine="torch", families=["arithmetic"], steps=2, prompts_per_step=2, group_size=2,
                   max_new_tokens=24, eval_per_family=2, eval_every=2, checkpoint_every=2, tools=True)
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)
    step = run_step("rl", storage, "rl", "rl-tools", lambda work: run_rl(cfg, sft, work, "state/rl.pt"))
    history = json.loads((root / "rl" / "history.json").read_text())
    # the memorised reply opens with a calculator call; sampled at temperature 1 on other questions, most do
    shares = [m["tool_call_share"] for m in history[1:]]
    assert len(shares) == 2 and min(shares) > 0 and max(shares) == 1.0, shares
    assert step.metrics["steps"] == 2 and (root / "rl" / "hf" / "config.json").exists()


def test_task_tools_give_search_over_the_task_documents():
    from raylm.rl.tool_calls import build_tools, task_tools

    task = Task("search", QUESTION, [], "", documents={"Veltrane Bridge": "It is 412 m long."})
    tools = build_tools(task_tools(task))
    assert "412 m" in tools["search"]("Veltrane Bridge") and tools["calculator"]("17 * 23") == "391"
