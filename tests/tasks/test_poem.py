"""The poem family and its gold judge: each rule moves the score the way it says, subjects split cleanly."""

from __future__ import annotations

import random

import pytest

from raylm.tasks import generate_tasks
from raylm.tasks.poem import HELDOUT_SUBJECTS, TRAIN_SUBJECTS, check, gold_parts, gold_score, write_poem

GOOD = ("The river is waiting for the day,\nI wait and watch it play.\n"
        "A little river beneath the night,\nand every star looks bright.")


def test_a_flawless_poem_meets_every_rule_and_each_flaw_costs():
    parts = gold_parts("river", GOOD)
    assert (parts["subject"], parts["rhyme"], parts["lines"], parts["repetition"]) == (1.0, 1.0, 4.0, 0.0)
    assert check_reply("river", GOOD) and gold_score("river", GOOD) == 3.0       # four lines of 24 words
    good = gold_score("river", GOOD)
    assert gold_score("castle", GOOD) == pytest.approx(good - 1)                  # the subject is never named
    assert gold_score("river", GOOD.replace("play", "sun")) == pytest.approx(good - 0.5)   # a pair stops rhyming
    assert gold_score("river", GOOD.split("\n", 1)[0]) < 2.0                      # one line
    padded = GOOD.replace("looks bright", "looks so so so so so bright")
    assert gold_score("river", padded) < good - 0.5 and not check_reply("river", padded)
    assert gold_score("river", "") < 0.5


def check_reply(subject: str, reply: str) -> bool:
    from raylm.tasks import Task

    return check(Task("poem", [], [], subject), reply)


def test_demonstrations_are_of_mixed_quality_and_never_on_held_out_subjects():
    tasks = generate_tasks({"poem": 400}, seed=3)
    scores = [gold_score(t.answer, t.solution[0]["content"]) for t in tasks]
    flawless = sum(check(t, t.solution[0]["content"]) for t in tasks) / len(tasks)
    assert 0.25 < flawless < 0.5 and min(scores) < 1.0          # something to choose between
    assert not {t.answer for t in tasks} & HELDOUT_SUBJECTS
    assert len(HELDOUT_SUBJECTS) >= 15 and len(TRAIN_SUBJECTS) >= 60


def test_write_poem_follows_the_flaws_it_is_given():
    rng = random.Random(0)
    for flaws, holds in [(set(), lambda p: p["rhyme"] == 1 and p["lines"] == 4), ({"no_rhyme"}, lambda p: p["rhyme"] == 0),
                         ({"no_subject"}, lambda p: p["subject"] == 0), ({"too_long"}, lambda p: p["lines"] >= 7),
                         ({"too_short"}, lambda p: p["lines"] <= 2), ({"repeats"}, lambda p: p["repetition"] > 0)]:
        poem = write_poem(rng, "comet", flaws)
        assert holds(gold_parts("comet", poem)), (flaws, poem)
