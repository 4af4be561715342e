"""Task families: seeded, and every checker accepts the right answer and rejects wrong ones."""

from __future__ import annotations

import json

import pytest

from raylm.tasks import check, families, generate_tasks
from raylm.tasks.conversations import ConversationError, load_conversations


def wrong_answers(task) -> list[str]:
    """Replies a checker must reject: another number/word, no answer line, a refusal where one is wrong."""
    final = task.solution[-1]["content"]
    wrong = ["", "Answer: qwxz", "Answer: 99999", final.replace(task.answer, task.answer + "7")]
    if task.expects_refusal:
        return ["It was built in 1873.\nAnswer: 1873", "Zorblat was a famous painter."]
    if task.family in ("identity", "unknown_entities"):
        return ["I am Somebody Else, an assistant made by Other Labs.", "I don't know who that is."]
    return wrong + ["I don't know."]


@pytest.mark.parametrize("family", sorted(set(families()) - {"poem"}))  # poem: mixed on purpose (test_poem.py)
def test_checker_accepts_right_and_rejects_wrong(family):
    tasks = generate_tasks({family: 200}, seed=7)
    for task in tasks:
        assert check(task, task.solution[-1]["content"]), (family, task)
        for reply in wrong_answers(task):
            assert not check(task, reply), (family, task.messages, reply)


def test_generation_is_seeded_and_seeds_differ():
    counts = {name: 20 for name in families()}
    first, again, other = (generate_tasks(counts, 1), generate_tasks(counts, 1), generate_tasks(counts, 2))
    assert [t.messages for t in first] == [t.messages for t in again]
    assert [t.messages for t in first] != [t.messages for t in other]
    with pytest.raises(ValueError, match="unknown task families"):
        generate_tasks({"astrology": 1}, 0)


def test_worked_solutions_show_their_steps():
    from raylm.tasks.arithmetic import steps_hold
    from raylm.tokenizer.chat import call_text

    for task in generate_tasks({"arithmetic": 30}, 0):  # two steps, each computed by the calculator
        calls = [m for m in task.solution if m.get("tool_calls")]
        results = [m["content"] for m in task.solution if m["role"] == "tool"]
        lines = "".join(m["content"] for m in task.solution if m["role"] == "assistant").splitlines()
        assert len(calls) == len(results) == 2 and lines[-1] == f"Answer: {task.answer}"
        for call, result, line in zip(calls, results, lines):
            assert line == f"{call_text(call['tool_calls'][0])[1]} = {result}"  # the line copies the tool's result
        assert steps_hold(task, "\n".join(lines)) and task.uses_tools
    compare = [t for t in generate_tasks({"compare": 300}, 0) if "Decimals:" in t.solution[0]["content"]]
    assert compare, "the same-whole-part case (9.11 vs 9.9) is generated"
    search = generate_tasks({"search": 20}, 0)
    assert all(t.solution[0]["tool_calls"] and t.solution[1]["role"] == "tool" for t in search)


def test_calculator_share_writes_the_other_demonstrations_mentally():
    from raylm.tasks.arithmetic import steps_hold
    from raylm.train.sft import with_calculator_share

    tasks = generate_tasks({"arithmetic": 400, "compare": 50}, 0)
    assert with_calculator_share(tasks, 1.0, seed=1) == tasks
    mixed = with_calculator_share(tasks, 0.25, seed=1)
    assert [t.messages for t in mixed] == [t.messages for t in tasks]  # same questions, same order
    mental = [(t, m) for t, m in zip(tasks, mixed) if m is not t]
    assert all(t.family == "arithmetic" for t, _ in mental) and 0.65 < len(mental) / 400 < 0.85
    for calculator, written in mental:  # one turn, no call: the calculator's lines, then the same answer
        reply = written.solution[0]["content"]
        assert len(written.solution) == 1 and not written.uses_tools and "tool_calls" not in written.solution[0]
        assert reply.splitlines()[-2] == calculator.solution[-1]["content"].splitlines()[0]
        assert check(written, reply) and steps_hold(written, reply) and len(reply.splitlines()) == 3
    assert with_calculator_share(tasks, 0.25, seed=1) == mixed


def test_jsonl_import_names_the_bad_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    path = tmp_path / "conversations.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert len(load_conversations(path)) == 2
    for bad, problem in [("{not json", "not valid JSON"), ('{"text": "x"}', '"messages" list'),
                         ('{"messages": [{"role": "robot", "content": "x"}]}', "role must be"),
                         ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(ConversationError, match=rf"conversations.jsonl:3: .*{problem}"):
            load_conversations(path)


def test_verified_reward_pays_only_for_steps_that_check_out():
    from raylm.tasks import reward, verified_reward

    for task in generate_tasks({"arithmetic": 50, "compare": 50}, seed=3):
        solution = task.solution[-1]["content"]
        assert verified_reward(task, solution) == 1.0
        lucky = solution.replace(" = ", " = 1", 1) if task.family == "arithmetic" else \
            solution.replace("Whole parts: ", "Whole parts: 7", 1)
        assert reward(task, lucky) == 1.0 and verified_reward(task, lucky) == 0.0  # right answer, wrong work
    for task in generate_tasks({"spelling": 30}, seed=3):
        solution = task.solution[-1]["content"]
        assert verified_reward(task, solution) == 1.0
        assert verified_reward(task, "Answer: " + task.answer) == 0.0  # a bare guess of the count
    identity = generate_tasks({"identity": 5}, seed=3)
    assert all(verified_reward(t, t.solution[-1]["content"]) == 1.0 for t in identity)  # no step check: answer only
