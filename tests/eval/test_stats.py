"""raylm/eval/stats.py and the report's paired differences: the intervals cover what they should."""

import math

import numpy as np
import pytest

from raylm.eval.report import paired, report_text, rl_gain
from raylm.eval.stats import mean_interval, paired_difference, ratio_interval


def test_mean_interval_brackets_the_mean_and_narrows_with_more_items():
    small = [1.0] * 14 + [0.0] * 6
    large = small * 10
    lo, hi = mean_interval(small)
    assert lo < 0.7 < hi
    lo_l, hi_l = mean_interval(large)
    assert lo < lo_l < 0.7 < hi_l < hi
    assert mean_interval([1.0] * 5) == (1.0, 1.0)
    assert all(math.isnan(x) for x in mean_interval([]))


def test_ratio_interval_pools_items():
    low, high = ratio_interval([(1.0, 1.0)] * 70 + [(0.0, 1.0)] * 30)
    assert 0.6 < low < 0.7 < high < 0.8
    # one item holding many pairs moves as one: its weight shows in the spread
    assert ratio_interval([(6.0, 6.0), (0.0, 6.0)])[1] == 1.0


def test_paired_difference_is_narrower_than_the_columns_when_tasks_share_difficulty():
    rng = np.random.default_rng(0)
    easy = rng.random(400) < 0.5                  # half the tasks are easy for both checkpoints
    before = easy.astype(float)
    after = before.copy()
    after[np.flatnonzero(~easy)[:24]] = 1.0       # the second one also solves 24 of the hard ones: +6 points
    d = paired_difference(before, after)
    assert d["diff"] == pytest.approx(0.06) and d["items"] == 400
    lo, hi = d["ci95"]
    assert 0.03 < lo < 0.06 < hi < 0.09
    # each column's own interval is wider than the paired one, and the two overlap: read separately,
    # the gain could not be told from noise
    (b_lo, b_hi), (a_lo, a_hi) = mean_interval(before), mean_interval(after)
    assert a_lo < b_hi
    assert hi - lo < 0.6 * (b_hi - b_lo)
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 0.0], [1.0])


def _result(label: str, scores: dict[str, list[float]]) -> dict:
    return {"label": label, "checkpoint": f"runs/x/{label}/hf", "seed": 1, "num_tasks": 4,
            "metrics": {k: sum(v) / len(v) for k, v in scores.items()},
            "ci95": {k: list(mean_interval(v)) for k, v in scores.items()}, "scores": scores}


def test_report_pairs_every_column_with_sft_and_prints_the_rl_gain():
    results = [_result("pretrain", {"acc/compare": [0.0] * 4 + [0.0] * 96}),
               _result("sft", {"acc/compare": [1.0] * 50 + [0.0] * 50}),
               _result("rl", {"acc/compare": [1.0] * 70 + [0.0] * 30})]
    diffs = paired(results)
    assert set(diffs) == {"pretrain", "rl"}
    assert diffs["rl"]["acc/compare"]["diff"] == pytest.approx(0.2)
    assert diffs["pretrain"]["acc/compare"]["diff"] == pytest.approx(-0.5)
    text = report_text(results, rl_families=["compare"])
    assert "## Paired differences from sft" in text and "| rl - sft |" in text.replace("pretrain - sft | ", "")
    assert "**+20.0 (" in text                                  # the interval excludes zero: bold
    assert results[2]["paired"]["baseline"] == "sft"
    line = rl_gain(results, ["compare"])
    assert "SFT 50.0% -> RL 70.0%, +20.0 points" in line and line.endswith(": a gain")
    # no shared tasks (another seed) -> nothing paired
    results[2]["seed"] = 2
    assert set(paired(results)) == {"pretrain"}


def test_checkpoints_of_one_step_from_several_runs_get_their_own_columns():
    results = [dict(_result("sft", {"acc/compare": [1.0] * 50 + [0.0] * 50}), checkpoint=f"runs/{run}/sft/hf")
               for run in ("a", "b", "c")]
    for r in results:
        del r["label"]
    results[2]["scores"] = {"acc/compare": [1.0] * 60 + [0.0] * 40}
    diffs = paired(results)
    assert set(diffs) == {"b/sft", "c/sft"}                     # paired with the first, none overwritten
    assert diffs["c/sft"]["acc/compare"]["diff"] == pytest.approx(0.1)
    assert "| c/sft - a/sft |" in report_text(results)
