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
    assert alarm.may_keep(2) is False and alarm.may_keep(3) is False   # the samples have already left
    alarm.update(5, proxy=2.0, watch=-1.0, outside=0.9)
    assert alarm.fired["step"] == 3


def test_agreement_counts_pairs_within_groups_that_both_models_order_alike():
    from raylm.rlhf.monitor import agreement

    assert agreement([[1, 2, 3]], [[10, 20, 30]]) == 1.0
    assert agreement([[1, 2, 3]], [[30, 20, 10]]) == 0.0
    # group 1: (a,b) same, (a,c) tied by the watcher (left out), (b,c) opposite; group 2: one same pair
    assert agreement([[1, 2, 3], [0, 1]], [[1, 2, 1], [5, 6]]) == 2 / 3
    assert agreement([[1, 1]], [[1, 2]]) == 1.0  # nothing to compare: no disagreement


def test_agreement_floor_is_two_independent_judges_as_accurate_as_the_models():
    from raylm.rlhf.monitor import agreement_floor

    # raters right 75% of the time: 62.5% against the labels means 75% against the truth; two such judges
    # agree on 0.75^2 + 0.25^2 of the pairs
    assert agreement_floor((0.625, 0.625), 0.75) == pytest.approx(0.625)
    assert agreement_floor((1.0, 1.0), 1.0) == 1.0
    assert agreement_floor((0.4, 0.5), 0.75) == pytest.approx(0.5)  # no better than chance: clipped to 0.5


def test_alarm_fires_when_the_models_agree_no_more_than_independent_judges_over_a_window():
    alarm = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=1.0, agreement_floor=0.65)
    assert alarm.agreement(1, 0.60) is None            # one step is not a window
    assert alarm.agreement(2, 0.80) is None
    assert alarm.agreement(3, 0.60) is None            # mean 0.667
    reason = alarm.agreement(4, 0.60)                  # mean 0.667 -> (0.8 + 0.6 + 0.6) / 3 = 0.667: not yet
    assert reason is None
    reason = alarm.agreement(5, 0.62)                  # (0.6 + 0.6 + 0.62) / 3 = 0.607
    assert reason and "ordered the samples alike on 60.7%" in reason and alarm.fired["step"] == 5
    assert alarm.may_keep(5) and not alarm.may_keep(6)  # it looks ahead: the step it fires at may still be kept
    off = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=1.0)   # no floor: the signal is off
    assert all(off.agreement(step, 0.0) is None for step in range(5))
