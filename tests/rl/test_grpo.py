"""GRPO on hand-computed numbers: advantages, the clipped surrogate, token-level normalisation, k3 KL, and the
SFT loss RLHF mixes in."""

from __future__ import annotations

import math

import pytest
import torch

from raylm.rl.grpo import group_advantages, k3_kl, policy_loss
from raylm.rl.learner import collate, collate_demos, demo_loss


def test_group_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    centred = group_advantages(rewards, normalize=False)
    assert centred.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.75, -0.75, -0.75, 2.25]]
    normalised = group_advantages(rewards)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: all equal -> 0; group 3: mean 0.75, std sqrt(27/16)
    assert normalised[0].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-5)
    assert normalised[1].tolist() == [0.0] * 4
    std = math.sqrt(27 / 16)
    assert normalised[2].tolist() == pytest.approx([-0.75 / std] * 3 + [2.25 / std], abs=1e-5)


def test_on_policy_loss_is_minus_mean_advantage_and_its_gradient_is_the_policy_gradient():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.8, 0.1, 0.1]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 3 real tokens: 2 in row 0, 1 in row 1
    loss, stats = policy_loss(logprobs, logprobs.detach(), advantages, mask)
    assert float(loss) == pytest.approx(-(1 + 1 - 2) / 3)  # ratio 1: -(sum of A over tokens) / tokens
    loss.backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, 0.0, 2 / 3, 0.0, 0.0], abs=1e-6)
    assert stats["clip_fraction"] == 0.0


def test_ratio_clipping():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25]]))  # ratios 1.5 and 0.5
    mask = torch.ones(1, 2)
    positive, stats = policy_loss(new, old, torch.ones(1, 2), mask, clip_eps=0.2)
    # A > 0: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5 -> -(1.2 + 0.5) / 2
    assert float(positive) == pytest.approx(-(1.2 + 0.5) / 2, abs=1e-6) and stats["clip_fraction"] == 0.5
    negative, _ = policy_loss(new, old, -torch.ones(1, 2), mask, clip_eps=0.2)
    # A < 0: min(-1.5, -1.2) = -1.5 and min(-0.5, -0.8) = -0.8 -> (1.5 + 0.8) / 2
    assert float(negative) == pytest.approx((1.5 + 0.8) / 2, abs=1e-6)


def test_token_level_normalisation_adds_up_over_micro_batches():
    torch.manual_seed(0)
    logprobs, advantages = -torch.rand(4, 6), torch.randn(4, 1).expand(4, 6)
    mask = (torch.rand(4, 6) > 0.3).float()
    whole, _ = policy_loss(logprobs, logprobs, advantages, mask)
    parts = sum(policy_loss(logprobs[i:i + 2], logprobs[i:i + 2], advantages[i:i + 2], mask[i:i + 2],
                            num_tokens=float(mask.sum()))[0] for i in (0, 2))
    assert float(parts) == pytest.approx(float(whole))


def test_k3_kl():
    logprobs = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.2]))
    # exp(ref - lp) - (ref - lp) - 1: 0.5 - ln 0.5 - 1 = ln 2 - 0.5, and 0 where the two agree
    assert k3_kl(logprobs, ref).tolist() == pytest.approx([math.log(2) - 0.5, 0.0])
    loss, stats = policy_loss(logprobs[None], logprobs[None], torch.zeros(1, 2), torch.ones(1, 2),
                              ref_logprobs=ref[None], kl_coef=0.1)
    assert float(loss) == pytest.approx(0.1 * (math.log(2) - 0.5) / 2)
    assert stats["kl"] == pytest.approx((math.log(2) - 0.5) / 2)


def test_collate_masks_exactly_the_response_targets():
    sequences, mask, advantages = collate([{"prompt": [5, 6, 7], "response": [8, 9], "advantage": 0.5},
                                           {"prompt": [5], "response": [4], "advantage": -1.0}], pad_id=0)
    assert sequences.tolist() == [[5, 6, 7, 8, 9], [5, 4, 0, 0, 0]]
    # targets are sequences[:, 1:]: row 0 predicts 8 and 9 at positions 2, 3; row 1 predicts 4 at position 0
    assert mask.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
    assert advantages.tolist() == [[0, 0, 0.5, 0.5], [-1, 0, 0, 0]]


def test_demo_loss_is_the_mean_nll_of_the_assistant_tokens_only():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])  # every position predicts this, whatever came before
    model = lambda seqs: torch.log(probs).expand(*seqs.shape, 4)  # noqa: E731
    # demo 1: targets 1, 2, 3 of which 2 and 3 are the assistant's; demo 2 (padded): target 3, trained
    demos = [([0, 1, 2, 3], [0, 0, 1, 1]), ([2, 3], [0, 1])]
    sequences, mask = collate_demos(demos, pad_id=0)
    assert sequences.tolist() == [[0, 1, 2, 3], [2, 3, 0, 0]] and mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    loss = demo_loss(model, sequences, mask)
    assert float(loss) == pytest.approx(-(math.log(0.3) + math.log(0.4) + math.log(0.4)) / 3)
    parts = sum(demo_loss(model, sequences[i:i + 1], mask[i:i + 1], num_tokens=float(mask.sum())) for i in (0, 1))
    assert float(parts) == pytest.approx(float(loss))  # micro-batches add up to the whole batch's mean
