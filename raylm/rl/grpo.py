"""GRPO losses: pure functions of tensors, so they are tested on hand-computed numbers.

    advantages = group_advantages(rewards)            # (groups, samples) -> same shape
    loss, stats = policy_loss(logprobs, old_logprobs, advantages_per_token, mask,
                              clip_eps=0.2, ref_logprobs=ref, kl_coef=0.01)

Group-relative advantages (DeepSeekMath's GRPO): each prompt is sampled several
times and a sample's advantage is its reward minus the group mean, divided by
the group's standard deviation; no value network. A group whose samples all got
the same reward has zero advantage and teaches nothing (its share is reported).

The loss is token-level (DAPO): the sum over every response token of every
sample divided by the number of tokens, so long answers are not down-weighted
per token. PPO's clipped ratio keeps a batch reused for several updates close to
the policy that sampled it; the optional KL penalty to a frozen reference uses
Schulman's k3 estimator exp(ref - logp) - (ref - logp) - 1 (non-negative, unbiased).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(groups, samples) rewards -> advantages: centred per group, optionally divided by the group's std."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not normalize:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from the sampled tokens' log-probabilities."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2, ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0,
                num_tokens: float | None = None) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate (+ KL), summed over masked tokens and divided by `num_tokens` (default: mask.sum()).

    All tensors are (batch, tokens); `advantages` is already broadcast to tokens.
    Passing the whole batch's token count as `num_tokens` makes micro-batch losses add up to the batch loss.
    """
    mask = mask.to(logprobs.dtype)
    denominator = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    active = (clipped < unclipped).to(mask.dtype)  # where the clipped term wins, the token's gradient is zero
    stats = {"clip_fraction": float((active * mask).sum() / mask.sum().clamp(min=1))}
    if ref_logprobs is not None:  # measured whenever there is a reference (RLHF logs it at coefficient 0 too)
        kl = k3_kl(logprobs, ref_logprobs)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
        stats["kl_sum"] = float((kl.detach() * mask).sum())  # summed over tokens: sequence KL x samples
    return (per_token * mask).sum() / denominator, stats
