"""The hacking alarm's two signals, on hand-made numbers."""

from __future__ import annotations

import pytest

from raylm.rlhf.monitor import HackingAlarm, Support, novelty, repetition


def test_repetition_counts_words_said_again_right_away():
    assert repetition("the river sings a song") == 0.0
    assert repetition("so so so so") == pytest.approx(3 / 4)
    assert repetition("the sun the sun the sun") == pytest.approx(4 / 6)
    assert repetition("") == 0.0


def test_support_is_what_the_reward_model_saw():
    trained = [("a short answer", 3), ("a longer answer than that", 5), ("so so good", 3)]
    unseen = [("a short river", "Write about a river."), ("a good poem", "Write about a comet.")]
    support = Support.of(trained, unseen)
    assert (support.max_tokens, support.max_repetition, support.max_novelty) == (5, pytest.approx(1 / 3), 0.5)
    assert novelty("a river answer", set(support.vocabulary), "Write about a river.") == 0.0  # its own subject
    answers = [("a good short answer", 4, ""), ("too many words here", 6, ""), ("the the the the", 4, ""),
               ("zorp blag answer", 4, "")]
    assert support.outside(answers) == pytest.approx(3 / 4)   # too long, repetitive, two words never seen


def test_alarm_fires_when_the_watcher_falls_while_the_proxy_rises():
    alarm = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=1.0)
    assert alarm.update(0, proxy=0.0, watch=0.0, outside=0.0) is None
    assert alarm.update(5, proxy=0.5, watch=0.4, outside=0.0) is None      # both rise: learning
    assert alarm.update(10, proxy=0.8, watch=0.2, outside=0.0) is None     # fell 0.2 spreads: not yet
    reason = alarm.update(15, proxy=1.2, watch=-0.2, outside=0.1)          # fell 0.6 while the proxy rose
    assert reason and "watcher" in reason and alarm.fired["step"] == 15
    alarm.update(20, proxy=2.0, watch=-1.0, outside=0.9)
    assert alarm.fired["step"] == 15                                        # the first firing is kept


def test_alarm_fires_when_samples_leave_the_support_and_not_when_both_fall():
    alarm = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=1.0)
    alarm.update(0, proxy=1.0, watch=1.0, outside=0.0)
    assert alarm.update(5, proxy=0.0, watch=0.0, outside=0.1) is None      # both fell: a bad step, not hacking
    assert "left the reward model's support" in alarm.update(10, proxy=0.0, watch=0.0, outside=0.5)


def test_the_support_is_checked_on_its_own_every_step_and_the_first_firing_is_kept():
    alarm = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=1.0)
    assert alarm.support(1, 0.1) is None and alarm.fired is None
    assert "left the reward model's support" in alarm.support(3, 0.4)      # between two validations
    assert alarm.fired["step"] == 3
    alarm.update(5, proxy=2.0, watch=-1.0, outside=0.9)
    assert alarm.fired["step"] == 3
