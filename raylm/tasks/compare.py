"""Which of two decimals is larger (9.11 vs 9.9): whole parts first, then decimals padded to one length.

    Which is larger, 9.11 or 9.9?
    -> Whole parts: 9 and 9.\\nDecimals: 11 and 90.\\n90 > 11, so 9.9 is larger.\\nAnswer: 9.9

Padding ("9" -> "90") is the step that defeats the "11 > 9" trap.
"""

from __future__ import annotations

import random

from raylm.tasks import Task, extract_answer
from raylm.tasks.identity import random_system

QUESTIONS = ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?", "Is {a} or {b} greater?")


def _decimal(rng: random.Random, whole: int) -> str:
    return f"{whole}.{rng.choice([rng.randint(1, 9), rng.randint(10, 99)])}"


def generate(rng: random.Random) -> Task:
    whole = rng.randint(0, 20)
    a = _decimal(rng, whole)
    b = _decimal(rng, whole if rng.random() < 0.7 else rng.randint(0, 20))  # mostly the same whole part: the trap
    while b == a or float(a) == float(b):
        b = _decimal(rng, whole)
    larger, smaller = (a, b) if float(a) > float(b) else (b, a)
    wa, da = a.split(".")
    wb, db = b.split(".")
    lines = [f"Whole parts: {wa} and {wb}."]
    if wa != wb:
        big, small = (wa, wb) if int(wa) > int(wb) else (wb, wa)
        lines.append(f"{big} > {small}, so {larger} is larger.")
    else:
        width = max(len(da), len(db))
        pa, pb = da.ljust(width, "0"), db.ljust(width, "0")
        lines.append(f"Decimals: {pa} and {pb}.")
        big, small = (pa, pb) if int(pa) > int(pb) else (pb, pa)
        lines.append(f"{big} > {small}, so {larger} is larger.")
    lines.append(f"Answer: {larger}")
    question = rng.choice(QUESTIONS).format(a=a, b=b)
    return Task("compare", random_system(rng, 0.25) + [{"role": "user", "content": question}],
                [{"role": "assistant", "content": "\n".join(lines)}], larger, direct_ok=True)


def check(task: Task, reply: str) -> bool:
    return extract_answer(reply) == task.answer


def steps_hold(task: Task, reply: str) -> bool:
    """The worked lines are the ones the solution has: the numbers copied and compared right, not a coin toss."""
    expected = [line for line in task.solution[-1]["content"].splitlines() if not line.startswith("Answer:")]
    written = [line.strip() for line in reply.splitlines() if line.strip() and not line.startswith("Answer:")]
    return written == expected
