"""Word lists the task generators draw from (shipped, so nothing is downloaded).

WORDS: common English words for spelling and letter counting. REAL_PEOPLE: a few
well-known people with a one-line description, the answerable counterpart of the
made-up names the assistant must refuse. SYLLABLES build names that do not exist.
"""

from __future__ import annotations

import random

WORDS = """apple banana cherry orange grape lemon melon peach pear plum strawberry raspberry blueberry
mango papaya tomato potato carrot onion garlic pepper button window garden kitchen bottle pocket
rabbit turtle monkey donkey giraffe elephant kitten puppy parrot dolphin penguin squirrel butterfly
river mountain valley desert forest island ocean planet rocket comet galaxy bridge castle tunnel
letter bubble coffee cookie dinner lesson mirror pillow ribbon summer winter spring autumn yellow
purple silver golden hammer ladder pencil paper scissors balloon blanket candle carpet basket
teacher doctor farmer pilot sailor banner cotton engine needle puzzle rhythm shadow spirit
street sugar tennis ticket toffee traffic umbrella village wallet whistle wizard zipper zebra
accommodate committee necessary occasion possess address success embarrass mississippi
balloon coconut pineapple vanilla chocolate broccoli cucumber lettuce spinach noodle""".split()

ITEMS = ["apples", "pens", "marbles", "books", "stickers", "cookies", "coins", "cards", "shells", "stamps"]

PEOPLE = [("Mia", "She"), ("Sam", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Max", "He"),
          ("Ivy", "She"), ("Ben", "He"), ("Ella", "She"), ("Omar", "He"), ("Nina", "She"), ("Raj", "He")]

REAL_PEOPLE = {
    "Ada Lovelace": "a mathematician who wrote the first computer program",
    "Alan Turing": "a mathematician who founded computer science",
    "Marie Curie": "a physicist and chemist who studied radioactivity",
    "Albert Einstein": "a physicist who developed the theory of relativity",
    "Isaac Newton": "a physicist who described the laws of motion and gravity",
    "Charles Darwin": "a naturalist who explained evolution by natural selection",
    "Grace Hopper": "a computer scientist who built the first compiler",
    "Linus Torvalds": "a programmer who created the Linux kernel",
    "Guido van Rossum": "a programmer who created the Python language",
    "Ian Murdock": "a programmer who founded the Debian project",
    "William Shakespeare": "a playwright who wrote Hamlet",
    "Jane Austen": "a novelist who wrote Pride and Prejudice",
    "Leonardo da Vinci": "a painter who painted the Mona Lisa",
    "Galileo Galilei": "an astronomer who observed the moons of Jupiter",
    "Nikola Tesla": "an inventor who developed alternating current systems",
    "Johann Sebastian Bach": "a composer of baroque music",
    "Wolfgang Amadeus Mozart": "a composer of classical music",
    "Rosalind Franklin": "a chemist whose images revealed the structure of DNA",
    "Dennis Ritchie": "a computer scientist who created the C language",
    "Tim Berners-Lee": "a computer scientist who invented the World Wide Web",
}

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s",
           "st", "t", "th", "v", "w", "z", "zh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "th", "x", "m", "ck", "nd"]


def made_up_word(rng: random.Random, syllables: int | None = None) -> str:
    n = syllables or rng.randint(2, 3)
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))
    return word.capitalize()


def made_up_person(rng: random.Random) -> str:
    """A first and last name that (almost surely) belongs to nobody famous."""
    while True:
        name = f"{made_up_word(rng, 2)} {made_up_word(rng)}"
        if name not in REAL_PEOPLE:
            return name
