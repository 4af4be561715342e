"""Short poems: the open-ended family that RLHF learns from preferences (no checker decides it).

    Write a short poem about a river.
    -> The river hums a quiet song,
       it carries light the whole day long.
       I watch the river in the rain,
       and wait to hear it once again.

SFT demonstrations are of deliberately mixed quality: some poems forget the
subject, break the rhyme, run too short or too long, or repeat a word until it
is noise. The SFT model then writes poems of every quality, so rankings of its
answers have something to choose between.

`gold_score` is the **gold judge** of the RLHF experiments (raylm/rlhf/rater.py):
a rule over the answer (the subject is named, line pairs rhyme, about four
lines, no word repeated to pad). The synthetic rater ranks by it plus noise; the
judge itself is never shown to training and only measures whether RLHF helped
(win rate over SFT) or was gamed. `check` (the eval's acc/poem) says whether a
poem meets every rule.

Subjects are split: `HELDOUT_SUBJECTS` never appear in SFT data, label items for
training, or RL prompts; held-out reward-model accuracy and the RLHF win rate
are measured on them.
"""

from __future__ import annotations

import hashlib
import random
import re

from raylm.tasks import Task
from raylm.tasks.words import WORDS

QUESTIONS = ("Write a short poem about {s}.", "Write a poem about {s}.", "Can you write a short poem about {s}?",
             "Compose a little poem about {s}.")

SUBJECTS = sorted(set(WORDS) - {"accommodate", "committee", "necessary", "occasion", "possess", "address",
                                "success", "embarrass", "mississippi"})
# about one subject in five, chosen by a hash so the split never depends on list order
HELDOUT_SUBJECTS = frozenset(s for s in SUBJECTS if hashlib.sha256(s.encode()).digest()[0] % 5 == 0)
TRAIN_SUBJECTS = [s for s in SUBJECTS if s not in HELDOUT_SUBJECTS]

RHYMES = [
    ("day", "way", "play", "stay", "gray", "away"), ("night", "light", "bright", "sight", "flight", "white"),
    ("sky", "high", "by", "fly", "sigh", "dry"), ("sea", "free", "tree", "me", "be", "key"),
    ("rain", "lane", "again", "plain", "train", "chain"), ("sun", "run", "fun", "done", "one", "spun"),
    ("song", "long", "along", "strong", "belong", "wrong"), ("heart", "part", "start", "art", "apart", "cart"),
    ("gold", "old", "cold", "bold", "hold", "told"), ("blue", "through", "new", "true", "you", "dew"),
]
RHYME_OF = {word: group for group, words in enumerate(RHYMES) for word in words}

# Line bodies; {s} is the subject, {e} the rhyming end word.
SUBJECT_LINES = ("The {s} is waiting for the {e}", "I think about the {s} all {e}", "A little {s} beneath the {e}",
                 "Oh {s}, you shine so {e}", "The {s} goes on its {e}", "I keep the {s} close, and {e}",
                 "My {s} will rest until the {e}", "We found a {s} out in the {e}")
PLAIN_LINES = ("and all the world is soft and {e}", "it hums a quiet tune so {e}", "the wind comes singing {e}",
               "and every star looks {e}", "I wait and watch it {e}", "we laugh and wander {e}",
               "the morning light is {e}", "and nothing here is {e}")
IDEAL_WORDS = 24  # four lines of about six words
FLAWS = ("no_subject", "no_rhyme", "too_short", "too_long", "repeats")


def _line(rng: random.Random, subject: str, end: str, mention: bool) -> str:
    body = rng.choice(SUBJECT_LINES if mention else PLAIN_LINES)
    return body.format(s=subject, e=end)


def write_poem(rng: random.Random, subject: str, flaws: set[str]) -> str:
    """A poem of four lines (AABB) with the given flaws (a subset of FLAWS)."""
    lines = {"too_short": rng.choice((1, 2)), "too_long": rng.choice((7, 8))}
    count = next((lines[f] for f in ("too_short", "too_long") if f in flaws), 4)
    text = []
    for pair in range(0, count, 2):
        group = RHYMES[rng.randrange(len(RHYMES))]
        ends = rng.sample(group, 2)
        if "no_rhyme" in flaws:  # the second end word from another rhyme group
            ends[1] = rng.choice(RHYMES[(RHYMES.index(group) + rng.randrange(1, len(RHYMES))) % len(RHYMES)])
        for k in range(min(2, count - pair)):
            mention = "no_subject" not in flaws and (pair + k) % 2 == 0 and (pair == 0 or rng.random() < 0.5)
            text.append(_line(rng, subject, ends[k], mention))
    if "repeats" in flaws:  # a word said over and over: the noise a reward model might pay for
        word = rng.choice((subject, "so", "the", "and"))
        where = rng.randrange(len(text))
        text[where] = text[where] + " " + " ".join([word] * rng.randint(4, 8))
    text = [line[0].upper() + line[1:] + ("," if i % 2 == 0 else ".") for i, line in enumerate(text)]
    return "\n".join(text)


def generate(rng: random.Random, subjects: list[str] | None = None) -> Task:
    """A prompt on a training subject, and a demonstration of mixed quality (about a third flawless)."""
    subject = rng.choice(subjects or TRAIN_SUBJECTS)
    messages = [{"role": "user", "content": rng.choice(QUESTIONS).format(s=_article(subject))}]
    flaws = set() if rng.random() < 0.35 else set(rng.sample(FLAWS, rng.choice((1, 1, 2))))
    if {"too_short", "too_long"} <= flaws:
        flaws.discard("too_long")
    poem = write_poem(rng, subject, flaws)
    return Task("poem", messages, [{"role": "assistant", "content": poem}], subject)


def generate_heldout(rng: random.Random) -> Task:
    """A prompt on a held-out subject (its demonstration is never trained on)."""
    return generate(rng, sorted(HELDOUT_SUBJECTS))


def _article(subject: str) -> str:
    if subject.endswith("s") and subject not in ("bus", "glass"):
        return subject
    return ("an " if subject[0] in "aeiou" else "a ") + subject


def _words(line: str) -> list[str]:
    return re.findall(r"[a-z']+", line.lower())


def rhymes(a: str, b: str) -> bool:
    """Two different end words in one rhyme group, or sharing their last three letters."""
    if a == b or not a or not b:
        return False
    if a in RHYME_OF and b in RHYME_OF:
        return RHYME_OF[a] == RHYME_OF[b]
    return len(a) > 2 and len(b) > 2 and a[-3:] == b[-3:]


def gold_parts(subject: str, reply: str) -> dict[str, float]:
    """The judge's criteria, each in [0, 1] (repetition: the share of words that are repeats of another)."""
    lines = [line for line in (l.strip() for l in reply.splitlines()) if _words(line)]
    words = [w for line in lines for w in _words(line)]
    if not words:
        return {"subject": 0.0, "rhyme": 0.0, "length": 0.0, "lines": 0.0, "repetition": 1.0}
    ends = [_words(line)[-1] for line in lines]
    pairs = [(ends[i], ends[i + 1]) for i in range(0, len(ends) - 1, 2)]
    stems = {subject, subject + "s", subject.rstrip("s")}
    # a repeat is a word said again within its next two words ("so so so", "the sun the sun the sun"):
    # padding, where a poem's common words ("the", "and") recur across lines
    # (counted within a line: a line may start with the word the last one ended on)
    repeats = sum(w in ws[max(0, i - 2):i] for ws in map(_words, lines) for i, w in enumerate(ws)) / len(words)
    # length: four lines, and about as many words as four lines hold (a graded measure, so that two
    # answers rarely tie: a tie is a coin flip for every rater, which no reward model can learn)
    lines_part = {4: 1.0, 3: 0.5, 5: 0.5, 6: 0.5}.get(len(lines), 0.0)
    words_part = max(0.0, 1.0 - abs(len(words) - IDEAL_WORDS) / IDEAL_WORDS)
    return {
        "subject": 1.0 if stems & set(words) else 0.0,
        "rhyme": sum(rhymes(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0,
        "length": 0.5 * lines_part + 0.5 * words_part,
        "lines": float(len(lines)),
        "repetition": repeats,
    }


def gold_score(subject: str, reply: str) -> float:
    """The gold judge: subject + rhyme + length - 3 x repetition (higher is better; at most 3.0)."""
    parts = gold_parts(subject, reply)
    return parts["subject"] + parts["rhyme"] + parts["length"] - 3.0 * parts["repetition"]


def check(task: Task, reply: str) -> bool:
    """Every rule met: names the subject, both pairs rhyme, four lines, no padding repeats."""
    parts = gold_parts(task.answer, reply)
    return parts["subject"] == 1 and parts["rhyme"] == 1 and parts["lines"] == 4 and parts["repetition"] == 0
