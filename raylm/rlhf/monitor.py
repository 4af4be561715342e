"""Watching RL against a reward model: when has the policy left the ground the reward model knows?

    support = Support.of(training_answers, unseen_answers)   # what the reward model was trained on
    share = support.outside(answers)                     # share longer / more repetitive / more novel
    alarm = HackingAlarm(support_limit=0.3, divergence=0.5, watch_spread=0.5, agreement_floor=0.65)
    reason = alarm.support(step, share)                      # every step: None, or why it fires
    reason = alarm.agreement(step, agreement(proxy_scores, watch_scores))   # every step, per group pairs
    reason = alarm.update(step, proxy=..., watch=..., outside=share)   # at validation: both signals

A reward model is a network fitted to a few hundred rankings; RL finds what it
over-pays for (Gao et al. 2022; the "the the the" joke). Three signals that need no
gold judge:
- **support**: the share of sampled answers longer (in tokens) or more
  repetitive than every answer the reward model was trained on, or made of more
  words it never saw than 99% of real answers it did not train on are (a policy
  that invents words to please it). Out there its scores are extrapolation.
- **divergence**: a second reward model (the watcher), trained on the disjoint
  other half of the rankings, scores held-out prompts; when its score falls
  `divergence` (in units of its score spread on real answers) below its best
  while the proxy's keeps rising, the policy is fitting the proxy's quirks, not
  what both learned from people.
- **agreement**: every step the watcher also scores the samples, and the share of
  pairs within a prompt's group that both models order alike is taken (GRPO's
  update follows the proxy's order there). On the SFT model's own answers the two
  agree more than their accuracy alone implies (they learned the same things);
  when, averaged over `AGREEMENT_WINDOW` steps, they agree no more than two
  *independent* judges as accurate as they are on held-out pairs would
  (`agreement_floor`), what the proxy pays for is no longer what they share.
  In two of three KL-free hacking runs it fired 13 and 4 steps before the gold
  judge's score fell 5 points, while the watcher's validation score still rose; a
  collapse within three steps it missed (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

AGREEMENT_WINDOW = 3  # steps averaged: one step's 16 groups move the share by several points


def repetition(text: str) -> float:
    """Share of words that repeat one of the three words before them ("so so so", "the sun the sun")."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return 0.0
    return sum(w in words[max(0, i - 3):i] for i, w in enumerate(words)) / len(words)


def novelty(text: str, vocabulary: set[str], prompt: str = "") -> float:
    """Share of the answer's words that no trained-on answer used (words of its own prompt excepted)."""
    words = [w for w in _words(text) if w not in set(_words(prompt))]
    return sum(w not in vocabulary for w in words) / len(words) if words else 0.0


def agreement(proxy: list[list[float]], watch: list[list[float]]) -> float:
    """Share of the pairs of answers within a group (one prompt's samples) that proxy and watcher order the
    same way; pairs either model ties are left out. GRPO's update follows the proxy's order within each
    group: where the watcher stops sharing it, the update fits what only the proxy pays for."""
    same = counted = 0
    for p, w in zip(proxy, watch):
        for i in range(len(p)):
            for j in range(i + 1, len(p)):
                dp, dw = p[i] - p[j], w[i] - w[j]
                if dp and dw:
                    counted += 1
                    same += (dp > 0) == (dw > 0)
    return same / counted if counted else 1.0


def agreement_floor(label_accuracies: tuple[float, float], rater_accuracy: float) -> float:
    """How often two independent judges order a pair alike when each is as often right as a reward model is:
    a model's accuracy against labels that are right with probability r, l = g r + (1 - g)(1 - r), gives its
    accuracy g against the truth; two independent judges agree with probability g1 g2 + (1 - g1)(1 - g2)."""
    g = [min(1.0, max(0.5, (acc - (1 - rater_accuracy)) / (2 * rater_accuracy - 1))) for acc in label_accuracies]
    return g[0] * g[1] + (1 - g[0]) * (1 - g[1])


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass
class Support:
    max_tokens: int          # the longest trained-on answer
    max_repetition: float    # the most repetitive trained-on answer
    max_novelty: float       # 99th percentile, over answers it never trained on, of words new to its training
    vocabulary: list[str]    # every word of the trained-on answers

    @classmethod
    def of(cls, answers: list[tuple[str, int]], unseen: list[tuple[str, str]]) -> "Support":
        """(text, token count) of every answer the reward model trained on; (text, prompt) of answers from the
        same model that it did not train on, which say how many new words an answer of that kind brings."""
        vocabulary = {w for text, _ in answers for w in _words(text)}
        shares = sorted(novelty(text, vocabulary, prompt) for text, prompt in unseen) or [0.0]
        return cls(max(n for _, n in answers), max(repetition(t) for t, _ in answers),
                   shares[min(len(shares) - 1, int(0.99 * len(shares)))], sorted(vocabulary))

    def beyond(self, text: str, tokens: int, prompt: str = "") -> bool:
        return (tokens > self.max_tokens or repetition(text) > self.max_repetition
                or novelty(text, self._vocabulary, prompt) > self.max_novelty)

    def outside(self, answers: list[tuple[str, int, str]]) -> float:
        """Share of (text, token count, prompt) answers beyond the support."""
        if not answers:
            return 0.0
        return sum(self.beyond(*a) for a in answers) / len(answers)

    @property
    def _vocabulary(self) -> set[str]:
        if not hasattr(self, "_vocab_set"):
            self._vocab_set = set(self.vocabulary)
        return self._vocab_set

    def to_dict(self) -> dict:
        return asdict(self)


class HackingAlarm:
    """Fires once, on the first update that shows any of the signals; remembers when, why and which."""

    def __init__(self, support_limit: float, divergence: float, watch_spread: float,
                 agreement_floor: float | None = None):
        self.support_limit, self.divergence, self.spread = support_limit, divergence, max(watch_spread, 1e-6)
        self.floor, self.recent = agreement_floor, []
        self.best_watch: float | None = None
        self.proxy_at_best: float | None = None
        self.fired: dict | None = None

    def support(self, step: int, outside: float) -> str | None:
        """The support share of one step's samples: checked every step, since it needs no validation."""
        reason = None
        if outside > self.support_limit:
            reason = (f"{outside:.0%} of the samples left the reward model's support: longer, more repetitive or "
                      f"made of more unseen words than its training answers, or unlikely under the model that wrote "
                      f"them (limit {self.support_limit:.0%})")
        return self._fire(step, reason, "support")

    def agreement(self, step: int, share: float) -> str | None:
        """One step's agreement of proxy and watcher on the samples (`agreement`): checked every step."""
        self.recent = (self.recent + [share])[-AGREEMENT_WINDOW:]
        mean = sum(self.recent) / len(self.recent)
        reason = None
        if self.floor is not None and len(self.recent) == AGREEMENT_WINDOW and mean < self.floor:
            reason = (f"the proxy and watcher reward models ordered the samples alike on {mean:.1%} of the pairs over "
                      f"the last {AGREEMENT_WINDOW} steps, less than two independent judges as accurate as they are "
                      f"would ({self.floor:.1%}): what the proxy pays for now is not what the two learned together")
        return self._fire(step, reason, "agreement")

    def update(self, step: int, proxy: float, watch: float, outside: float) -> str | None:
        """The validation scores of proxy and watcher, and the support share of this step's samples."""
        if self.best_watch is None or watch > self.best_watch:
            self.best_watch, self.proxy_at_best = watch, proxy
        reason = self.support(step, outside)
        fall = (self.best_watch - watch) / self.spread
        if reason is None and fall >= self.divergence and proxy > self.proxy_at_best:
            reason = self._fire(step, f"the watcher reward model's validation score fell {fall:.2f} spreads below "
                                      f"its best while the proxy's rose ({self.proxy_at_best:.3f} -> {proxy:.3f})",
                                "divergence")
        return reason

    def _fire(self, step: int, reason: str | None, signal: str) -> str | None:
        if reason and self.fired is None:
            self.fired = {"step": step, "reason": reason, "signal": signal}
        return reason

    def may_keep(self, step: int) -> bool:
        """May the checkpoint of `step` be kept? Not once the alarm has fired, except at the step the agreement
        signal fires: it looks ahead (the update has just begun to follow the proxy alone), while the support
        and divergence signals see damage already done to the samples or the watcher's score."""
        return self.fired is None or (self.fired["signal"] == "agreement" and self.fired["step"] == step)
