"""Facts: refuse what does not exist, answer what does, and look facts up with the search tool.

unknown_entities: "Who was X?" where X is either a well-known person (answer) or a
made-up name (say "I don't know" rather than invent a biography). The two look
alike; only knowing the names tells them apart, which is the behaviour wanted.

search: with the search tool on offer (the system message says so) a factual
question about a place is answered by searching first and grounding the answer
in the result; when the search finds nothing the answer is "I don't know".

    <|tool_call|>search Veltrane Bridge<|/tool_call|>
    <|tool_result|>Veltrane Bridge: ... It was built in 1873.<|/tool_result|>
    The Veltrane Bridge was built in 1873.\\nAnswer: 1873
"""

from __future__ import annotations

import random
import re

from raylm.tasks import REFUSAL, Task, extract_answer, is_refusal, numbers_equal
from raylm.tasks.identity import random_system, system_prompt
from raylm.tasks.words import REAL_PEOPLE, made_up_person, made_up_word
from raylm.tokenizer.chat import tool_call

SEARCH_SYSTEM = "You can use the search tool to look up facts."
NO_RESULTS = "No results."


def default_system(search: bool) -> str:
    """The system message the assistant gets when none is given (terminal chat, serving): raylm's identity,
    plus the hint that search exists when it does."""
    return system_prompt() + (f" {SEARCH_SYSTEM}" if search else "")


PERSON_QUESTIONS = ("Who was {n}?", "Tell me about {n}.", "What is {n} known for?")
# kind -> (title pattern, question, document sentence, answer sentence)
PLACES = {
    "bridge": ("{x} Bridge", "When was the {t} built?", "The {t} crosses the river {y}. It was built in {v}.",
               "The {t} was built in {v}.", (1700, 2020)),
    "mountain": ("Mount {x}", "How tall is {t}?", "{t} is a peak near {y}. It is {v} metres tall.",
                 "{t} is {v} metres tall.", (800, 8800)),
    "town": ("{x}ville", "How many people live in {t}?", "{t} is a town on the coast of {y}. It has {v} inhabitants.",
             "{t} has {v} inhabitants.", (200, 90000)),
    "river": ("{x} River", "How long is the {t}?", "The {t} flows into lake {y}. It is {v} kilometres long.",
              "The {t} is {v} kilometres long.", (10, 3000)),
}


def generate_entity_question(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        name = rng.choice(sorted(REAL_PEOPLE))
        about = REAL_PEOPLE[name]
        question = rng.choice(PERSON_QUESTIONS).format(n=name)
        return Task("unknown_entities", [{"role": "user", "content": question}],
                    [{"role": "assistant", "content": f"{name} was {about}."}], about)
    name = made_up_person(rng)
    question = rng.choice(PERSON_QUESTIONS).format(n=name)
    reply = f"{REFUSAL} of anyone called {name}. I have no reliable information about them."
    return Task("unknown_entities", [{"role": "user", "content": question}],
                [{"role": "assistant", "content": reply}], REFUSAL, expects_refusal=True)


def check_entity_answer(task: Task, reply: str) -> bool:
    if task.expects_refusal:
        return is_refusal(reply)
    # a real person: the key words of the description, and no refusal
    key = [w for w in re.findall(r"[A-Za-z]+", task.answer) if len(w) > 4][:2]
    return not is_refusal(reply) and all(w.lower() in reply.lower() for w in key)


def search_documents(documents: dict[str, str], query: str) -> str:
    """The search tool over a task's own documents: titles sharing most words with the query.

    Eval and SFT use this; serving swaps in the full-text index over the corpus.
    """
    words = set(re.findall(r"\w+", query.lower()))
    hits = [f"{title}: {text}" for title, text in documents.items()
            if words and len(words & set(re.findall(r"\w+", title.lower()))) * 2 >= len(title.split())]
    return "\n".join(hits) if hits else NO_RESULTS


def generate_search(rng: random.Random) -> Task:
    kind = rng.choice(sorted(PLACES))
    title_pattern, question, sentence, answer_sentence, (low, high) = PLACES[kind]
    title = title_pattern.format(x=made_up_word(rng))
    value = rng.randint(low, high)
    document = sentence.format(t=title, y=made_up_word(rng), v=value)
    identity = random_system(rng, 0.5)  # the tool note may follow an identity sentence, as when serving
    system = f"{identity[0]['content']} {SEARCH_SYSTEM}" if identity else SEARCH_SYSTEM
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": question.format(t=title)}]
    found = rng.random() < 0.85
    documents = {title: document} if found else {}
    call = {"role": "assistant", "content": "", "tool_calls": [tool_call("search", title)]}
    result = {"role": "tool", "content": search_documents(documents, title)}
    if found:
        final = f"{answer_sentence.format(t=title, v=value)}\nAnswer: {value}"
        answer = str(value)
    else:
        final = f"The search found nothing about {title}, so {REFUSAL}."
        answer = REFUSAL
    return Task("search", messages, [call, result, {"role": "assistant", "content": final}], answer,
                expects_refusal=not found, uses_tools=True, documents=documents)


def check_search(task: Task, reply: str) -> bool:
    if task.expects_refusal:
        return is_refusal(reply)
    return numbers_equal(extract_answer(reply), task.answer)
