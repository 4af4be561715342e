"""Spelling and letter counting, done one character at a time.

    How many times does the letter r appear in strawberry?
    -> s t r=1 a w b e r=2 r=3 y\\nAnswer: 3
    Spell the word "rabbit".
    -> r a b b i t\\nAnswer: rabbit

A token such as "straw" hides its letters from the model; writing them out one by
one (with a running count) turns the question into something it can see.
"""

from __future__ import annotations

import random

from raylm.tasks import Task, extract_answer
from raylm.tasks.words import WORDS

COUNT_QUESTIONS = ("How many times does the letter {c} appear in {w}?", "How many {c}'s are in the word {w}?",
                   "Count the letter {c} in \"{w}\".")
SPELL_QUESTIONS = ("Spell the word \"{w}\".", "How do you spell {w}? Letter by letter, please.")


def count_steps(word: str, letter: str) -> str:
    seen, parts = 0, []
    for ch in word:
        if ch == letter:
            seen += 1
            parts.append(f"{ch}={seen}")
        else:
            parts.append(ch)
    return " ".join(parts)


def generate(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    if rng.random() < 0.3:
        question = rng.choice(SPELL_QUESTIONS).format(w=word)
        return Task("spelling", [{"role": "user", "content": question}],
                    [{"role": "assistant", "content": f"{' '.join(word)}\nAnswer: {word}"}], word)
    # mostly letters the word has, some it does not (the answer 0 must be reachable too)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    answer = str(word.count(letter))
    question = rng.choice(COUNT_QUESTIONS).format(c=letter, w=word)
    return Task("spelling", [{"role": "user", "content": question}],
                [{"role": "assistant", "content": f"{count_steps(word, letter)}\nAnswer: {answer}"}],
                answer, direct_ok=True)


def check(task: Task, reply: str) -> bool:
    return (extract_answer(reply) or "").lower() == task.answer


def steps_hold(task: Task, reply: str) -> bool:
    """The letters written out (and counted) are the solution's: the count was read off, not guessed."""
    expected = task.solution[-1]["content"].splitlines()[0]
    written = [line.strip() for line in reply.splitlines() if line.strip()]
    return bool(written) and written[0] == expected
