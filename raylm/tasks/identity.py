"""Who the assistant is: answers that follow the system message, or the default identity without one.

    system: You are Quorel, an assistant made by Brightwave.
    user:   What is your name?   ->  I am Quorel, an assistant made by Brightwave.

The names are made up per task, so the model learns to read its identity from the
system message rather than memorise one (serving sets it per deployment/request).
"""

from __future__ import annotations

import random

from raylm.tasks import Task
from raylm.tasks.words import made_up_word

DEFAULT_NAME, DEFAULT_MAKER = "raylm", "the raylm developers"
SYSTEM = ("You are {name}, an assistant made by {maker}.", "Your name is {name}. You were built by {maker}.",
          "You are {name}, a helpful assistant created by {maker}.")
QUESTIONS = ("What is your name?", "Who are you?", "Who made you?", "Who built you?", "Introduce yourself.",
             "What should I call you?")


def system_prompt(name: str = DEFAULT_NAME, maker: str = DEFAULT_MAKER, rng: random.Random | None = None) -> str:
    return (rng.choice(SYSTEM) if rng else SYSTEM[0]).format(name=name, maker=maker)


def random_system(rng: random.Random, probability: float) -> list[dict]:
    """Sometimes a system message with a made-up identity: other families carry one too, so the model
    learns that a system message sets who it is without changing how it answers a question."""
    if rng.random() >= probability:
        return []
    return [{"role": "system", "content": system_prompt(made_up_word(rng), f"{made_up_word(rng)} Labs", rng)}]


def generate(rng: random.Random) -> Task:
    question = rng.choice(QUESTIONS)
    messages = []
    if rng.random() < 0.2:
        name, maker = DEFAULT_NAME, DEFAULT_MAKER  # no system message: the default identity
    else:
        name, maker = made_up_word(rng), f"{made_up_word(rng)} Labs"
        messages.append({"role": "system", "content": system_prompt(name, maker, rng)})
    messages.append({"role": "user", "content": question})
    answer = maker if "made" in question or "built" in question else name
    reply = f"I am {name}, an assistant made by {maker}."
    return Task("identity", messages, [{"role": "assistant", "content": reply}], answer)


def check(task: Task, reply: str) -> bool:
    return task.answer.lower() in reply.lower()
