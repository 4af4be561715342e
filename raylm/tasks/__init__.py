"""Verifiable tasks: seeded generators of conversations with worked solutions, and their checkers.

Each family module (arithmetic, compare, spelling, identity, knowledge, poem) makes
`Task`s from a `random.Random`; a task carries the prompt messages, the worked
solution the assistant should write (for SFT), the verifiable answer, and is
judged by its family's checker (for eval and as the RL reward):

    tasks = generate_tasks({"arithmetic": 100, "compare": 50}, seed=0)
    task.solution       # [{"role": "assistant", "content": "13 - 4 = 9\\n9 / 3 = 3\\nAnswer: 3"}]
    check(task, "...")  # True when the reply's final "Answer: X" is right

Answers end with a line `Answer: X` so one rule extracts them for every family.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

REFUSAL = "I don't know"  # the phrase every refusal in the SFT data contains; eval counts replies with it


@dataclass
class Task:
    family: str
    messages: list[dict]              # the prompt: optional system message + the user's question
    solution: list[dict]              # what the assistant should write: assistant [, tool, assistant]
    answer: str                       # the verifiable answer
    expects_refusal: bool = False     # the right reply says REFUSAL (a made-up entity)
    uses_tools: bool = False          # the right reply starts with a tool call
    direct_ok: bool = False           # the family has worked steps that "Answer:" right away skips (eval)
    documents: dict[str, str] = field(default_factory=dict)  # what the search tool finds, by title

    def conversation(self) -> list[dict]:
        return self.messages + self.solution


def extract_answer(reply: str) -> str | None:
    """The text after the last `Answer:` (first line of it), or None."""
    found = re.findall(r"Answer:\s*([^\n]*)", reply)
    return found[-1].strip().rstrip(".") if found else None


def is_refusal(reply: str) -> bool:
    return REFUSAL.lower() in reply.lower().replace("\u2019", "'")


def numbers_equal(a: str | None, b: str) -> bool:
    try:
        return a is not None and float(a.replace(",", "")) == float(b)
    except ValueError:
        return False


def families() -> dict[str, tuple[Callable, Callable]]:
    """name -> (generate(rng) -> Task, check(task, reply) -> bool)."""
    from raylm.tasks import arithmetic, compare, identity, knowledge, poem, spelling

    return {
        "arithmetic": (arithmetic.generate, arithmetic.check),
        "compare": (compare.generate, compare.check),
        "spelling": (spelling.generate, spelling.check),
        "identity": (identity.generate, identity.check),
        "unknown_entities": (knowledge.generate_entity_question, knowledge.check_entity_answer),
        "search": (knowledge.generate_search, knowledge.check_search),
        "poem": (poem.generate, poem.check),  # open-ended: RLHF's family; `check` is the gold judge's bar
    }


def generate_tasks(counts: dict[str, int], seed: int) -> list[Task]:
    """`counts[family]` tasks of each family, the same for the same seed, in a seeded shuffled order."""
    table = families()
    unknown = sorted(set(counts) - set(table))
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(table)}")
    tasks = []
    for name, count in counts.items():
        rng = random.Random(f"{seed}-{name}")  # each family its own stream: changing one count leaves the others
        tasks += [table[name][0](rng) for _ in range(count)]
    random.Random(seed).shuffle(tasks)
    return tasks


def check(task: Task, reply: str) -> bool:
    """Is `reply` (the assistant's final text) right for `task`?"""
    return bool(families()[task.family][1](task, reply))


def reward(task: Task, reply: str) -> float:
    """The default RL reward: 1 for a right answer, else 0."""
    return 1.0 if check(task, reply) else 0.0


def verified_reward(task: Task, reply: str) -> float:
    """1 only for a right answer whose worked steps also check out (arithmetic: every `a op b = c` is true;
    compare: the whole parts and padded decimals copied and compared right; spelling: the letters
    written out and counted right), else 0.

    A final-answer reward also pays lucky guesses (half of all comparisons), and RL
    then reinforces the wrong reasoning that produced them; checking the steps
    removes that noise. Families without step checks fall back to `reward`.
    """
    from raylm.tasks import arithmetic, compare, spelling

    steps = {"arithmetic": arithmetic.steps_hold, "compare": compare.steps_hold,
             "spelling": spelling.steps_hold}.get(task.family)
    return reward(task, reply) * (1.0 if steps is None or steps(task, reply) else 0.0)
