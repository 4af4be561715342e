"""The synthetic rater: ranks label items like a noisy person would, for the tiny preset and tests.

    stats = rate_all(store, agreement=0.75, seed=7)     # ranks every item it has not ranked yet

It is named as synthetic everywhere: its labeler is "synthetic-rater" of kind
"synthetic" in the label database, and reports say so. It scores each answer
with the poem family's rule (raylm/tasks/poem.py: gold_score, the **gold
judge**) plus Gaussian noise, and submits the order through the same store calls
the labeling page makes (`next_item`, `submit_ranking`). The noise is tuned on
the items themselves so that `agreement` of its pairs (pairs whose gold scores
differ) agree with the noise-free order: a person's disagreement with the
rule, not a rule a reward model could recover exactly. Only the noisy rankings
reach training; the gold judge measures what RLHF did.
"""

from __future__ import annotations

import math
import random
from itertools import combinations

from raylm.rlhf.labels import Item, LabelStore
from raylm.tasks.poem import gold_score

RATER = "synthetic-rater"
KIND = "synthetic"


def gold_scores(item: Item) -> list[float]:
    return [gold_score(item.meta["subject"], answer) for answer in item.answers]


def expected_agreement(gaps: list[float], sigma: float) -> float:
    """Mean P(noisy order = gold order) over pairs with gold gaps `gaps` (each score gets N(0, sigma^2))."""
    if sigma <= 0:
        return 1.0
    scale = sigma * math.sqrt(2)
    return sum(0.5 * (1 + math.erf(abs(g) / scale / math.sqrt(2))) for g in gaps) / len(gaps)


def calibrate(items: list[Item], agreement: float) -> float:
    """The noise sigma at which the expected share of agreeing pairs is `agreement` (bisection)."""
    gaps = [a - b for item in items for a, b in combinations(gold_scores(item), 2) if a != b]
    if not gaps or agreement >= 1:
        return 0.0
    low, high = 0.0, 100.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_agreement(gaps, mid) > agreement else (low, mid)
    return (low + high) / 2


def rank(item: Item, sigma: float, rng: random.Random) -> list[int]:
    """Answer indices best -> worst by gold score plus noise."""
    noisy = [score + rng.gauss(0, sigma) for score in gold_scores(item)]
    return sorted(range(len(noisy)), key=lambda i: -noisy[i])


def pair_agreement(rankings: list[tuple[Item, list[int]]]) -> dict:
    """How often a ranking's pairs agree with the gold order (pairs with a gold tie left out)."""
    agree = total = 0
    for item, order in rankings:
        gold = gold_scores(item)
        for a, b in combinations(order, 2):  # a ranked above b
            if gold[a] != gold[b]:
                total += 1
                agree += gold[a] > gold[b]
    return {"pairs": total, "agreement": agree / total if total else None}


def rate_all(store: LabelStore, agreement: float = 0.75, seed: int = 0, progress_every: int = 200) -> dict:
    """Rank every item the synthetic rater has not ranked, through the page's store calls."""
    pending = [item for item in _unrated(store)]
    sigma = calibrate(pending, agreement) if pending else 0.0
    rng = random.Random(seed)
    done: list[tuple[Item, list[int]]] = []
    while (item := store.next_item(RATER, kind=KIND)) is not None:
        order = rank(item, sigma, rng)
        store.submit_ranking(item.id, RATER, order, kind=KIND)
        done.append((item, order))
        if progress_every and len(done) % progress_every == 0:
            print(f"[preferences] synthetic rater: {len(done)} items ranked", flush=True)
    measured = pair_agreement(done)
    return {"rater": RATER, "kind": KIND, "ranked": len(done), "noise_sigma": sigma, "target_agreement": agreement,
            "measured_agreement": measured["agreement"], "gold_pairs": measured["pairs"]}


def _unrated(store: LabelStore) -> list[Item]:
    ranked = {r.item.id for r in store.rankings(kind=KIND)}
    return [item for item in store.items() if item.id not in ranked]
