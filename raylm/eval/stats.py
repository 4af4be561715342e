"""Error bars for the evals: item bootstrap intervals of a mean, of a pooled ratio, and of a paired difference.

    lo, hi = mean_interval([1, 0, 1, 1])                        # 95% interval of the accuracy
    paired_difference(sft_scores, rl_scores)                    # {"diff": rl - sft, "ci95": [lo, hi], "items": n}
    lo, hi = ratio_interval([(right, total), ...])              # pairs per ranking, pooled

Each resample draws the items (tasks, rankings, prompts) with replacement, so the
interval says how much the number would move on another draw of held-out items of
the same kind; it says nothing about training noise (another seed). A paired
difference resamples the same items for both columns: two checkpoints answered the
same tasks, so their shared difficulty cancels and the interval is much narrower
than the two separate intervals suggest. Only numpy is imported: Ray Train workers
(raylm/train/reward_loop.py) call these too.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 2000
LEVEL = 0.95


def _picks(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _bounds(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def mean_interval(values, samples: int = SAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item values (0/1 outcomes or scores)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    return _bounds(values[_picks(len(values), samples, seed)].mean(1), level)


def ratio_interval(values_per_item: list[tuple[float, float]], samples: int = SAMPLES, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float]:
    """Interval of a pooled accuracy sum(right) / sum(total), items holding (right, total) resampled whole."""
    right = np.array([r for r, _ in values_per_item], dtype=float)
    total = np.array([t for _, t in values_per_item], dtype=float)
    if len(right) == 0:
        return float("nan"), float("nan")
    picks = _picks(len(right), samples, seed)
    return _bounds(right[picks].sum(1) / np.maximum(total[picks].sum(1), 1), level)


def paired_difference(before, after, samples: int = SAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """mean(after) - mean(before) over the same items, with the bootstrap interval of that difference."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"paired values need the same items: {before.shape} vs {after.shape}")
    if len(before) == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "items": 0}
    deltas = after - before
    lo, hi = _bounds(deltas[_picks(len(deltas), samples, seed)].mean(1), level)
    return {"diff": float(deltas.mean()), "ci95": [lo, hi], "items": len(deltas)}
