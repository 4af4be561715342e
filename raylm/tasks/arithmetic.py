"""Multi-step arithmetic word problems, solved one operation at a time with the calculator tool.

    Mia has 13 pens. She gives away 4 and shares the rest equally among 3 friends.
    How many pens does each friend get?
    -> <|tool_call|>calculator 13 - 4<|/tool_call|><|tool_result|>9<|/tool_result|>13 - 4 = 9
       <|tool_call|>calculator 9 / 3<|/tool_call|><|tool_result|>3<|/tool_result|>9 / 3 = 3
       Answer: 3

A model spends a fixed amount of compute per token, so it needs the intermediate
lines to get multi-step problems right; eval measures accuracy with and without them.
Even with them, a model this size gets addition facts wrong (RL on mental steps lost
10-14 points: benchmarks/RESULTS.md), so each operation goes to the calculator, as
nanochat does for GSM8K: the model only picks the numbers and the operation, and
copies the result it reads into the worked line. Eval, RL (`rl.tools`) and serving
run the calculator inside the turn; `direct/arithmetic` still measures mental answers.
`written_mentally` turns a task's calculator solution into the same worked lines without
the calls: `sft.calculator_share` < 1 mixes such demonstrations in, so the SFT model only
sometimes reaches for the calculator and RL with it in the rollouts has a choice to learn.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from raylm.tasks import Task, extract_answer, numbers_equal
from raylm.tasks.identity import random_system
from raylm.tasks.words import ITEMS, PEOPLE
from raylm.tokenizer.chat import call_text, tool_call
from raylm.tools.calculator import calculate


def _share(rng: random.Random, who: str, pronoun: str, item: str):
    friends = rng.randint(2, 5)
    each = rng.randint(1, 9)
    given = rng.randint(1, 9)
    total = friends * each + given
    question = (f"{who} has {total} {item}. {pronoun} gives away {given} and shares the rest equally "
                f"among {friends} friends. How many {item} does each friend get?")
    return question, [f"{total} - {given} = {total - given}", f"{total - given} / {friends} = {each}"], each


def _buy_and_give(rng: random.Random, who: str, pronoun: str, item: str):
    start, bought = rng.randint(2, 20), rng.randint(1, 9)
    given = rng.randint(1, start + bought - 1)
    question = (f"{who} has {start} {item}. {pronoun} buys {bought} more and then gives {given} away. "
                f"How many {item} does {who} have now?")
    return question, [f"{start} + {bought} = {start + bought}",
                      f"{start + bought} - {given} = {start + bought - given}"], start + bought - given


def _boxes(rng: random.Random, who: str, pronoun: str, item: str):
    per_box, boxes = rng.randint(2, 9), rng.randint(2, 5)
    used = rng.randint(1, per_box * boxes - 1)
    question = (f"A box holds {per_box} {item}. {who} buys {boxes} boxes and uses {used} {item}. "
                f"How many {item} are left?")
    return question, [f"{per_box} * {boxes} = {per_box * boxes}",
                      f"{per_box * boxes} - {used} = {per_box * boxes - used}"], per_box * boxes - used


TEMPLATES = (_share, _buy_and_give, _boxes)


def calculator_solution(steps: list[str], result: int) -> list[dict]:
    """Worked lines `a op b = c` -> assistant turns that get each c from the calculator, then write the line.

    Each worked line follows its own call's result (copied, not recomputed), and the final segment (what a
    user and the reward see) holds the last worked line and `Answer: X`."""
    messages, written = [], ""
    for line in steps:
        expression = line.split(" = ")[0]
        value = calculate(expression)
        messages += [{"role": "assistant", "content": written, "tool_calls": [tool_call("calculator", expression)]},
                     {"role": "tool", "content": value}]
        written = f"{expression} = {value}\n"
    return messages + [{"role": "assistant", "content": f"{written}Answer: {result}"}]


def written_mentally(task: Task) -> Task:
    """The same task with its worked lines written without the calculator: each call's expression and
    result become the line `a op b = c`, then `Answer: X`, in one assistant turn."""
    expressions = [call_text(m["tool_calls"][0])[1] for m in task.solution if m.get("tool_calls")]
    results = [m["content"] for m in task.solution if m["role"] == "tool"]
    if not expressions or len(expressions) != len(results):
        raise ValueError("written_mentally needs a calculator solution (a tool call and result per line)")
    lines = [f"{expression} = {value}" for expression, value in zip(expressions, results)]
    return replace(task, solution=[{"role": "assistant", "content": "\n".join(lines) + f"\nAnswer: {task.answer}"}],
                   uses_tools=False)


def generate(rng: random.Random) -> Task:
    who, pronoun = rng.choice(PEOPLE)
    question, steps, result = rng.choice(TEMPLATES)(rng, who, pronoun, rng.choice(ITEMS))
    return Task("arithmetic", random_system(rng, 0.25) + [{"role": "user", "content": question}],
                calculator_solution(steps, result), str(result), uses_tools=True, direct_ok=True)


def check(task: Task, reply: str) -> bool:
    return numbers_equal(extract_answer(reply), task.answer)


_STEP = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a / b if b else float("nan")}


def steps_hold(task: Task, reply: str) -> bool:
    """Every worked line `a op b = c` is true and there is at least one: the answer was computed, not guessed."""
    lines = [line for line in reply.splitlines() if "=" in line]
    if not lines:
        return False
    for line in lines:
        match = _STEP.match(line)
        if not match:
            return False
        a, op, b, c = match.groups()
        if abs(_OPS[op](float(a), float(b)) - float(c)) > 1e-9:
            return False
    return True
