"""PPO/GRPO maths against hand computations on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.rl_losses import gae, group_advantages, grpo_loss, ppo_loss, ppo_rewards, whiten


def test_ppo_rewards_penalise_kl_per_token_and_add_the_score_on_the_last_valid_token():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = ppo_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 0.1 + 2.0, -0.1, -1.0, 0.0])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    gamma, lam = 0.9, 0.8
    d1 = 1.0 - 0.2  # last valid token: no next value
    d0 = 0.0 + gamma * 0.2 - 0.5
    a1, a0 = d1, d0 + gamma * lam * d1
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, 0.0])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, 0.0])


def test_whiten_normalises_over_valid_tokens_only():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_ppo_loss_clips_the_ratio_and_the_value_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.9)]])  # ratios 1.5 (clipped to 1.2) and 0.9
    adv = torch.tensor([[1.0, -2.0]])
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    out = ppo_loss(new, old, adv, values, old_values, returns, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.5)
    # token 0: max(-1*1.5, -1*1.2) = -1.2 (clipped); token 1: max(2*0.9, 2*0.9) = 1.8
    assert out.policy_loss.item() == pytest.approx((-1.2 + 1.8) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    # value: token 0 max((1-0)^2, (0.7-0)^2) = 1; token 1 max((0-1)^2, (0-1)^2) = 1 -> 0.5 * mean = 0.5
    assert out.value_loss.item() == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(0.3 + 0.5 * 0.5)


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    adv = group_advantages(scores, group_size=2)
    std = torch.tensor([1.0, 3.0]).std().item()
    assert adv.tolist() == pytest.approx([-1 / (std + 1e-4), 1 / (std + 1e-4), 0.0, 0.0])


def test_grpo_loss_with_the_k3_kl_term_by_hand():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    old = logps.clone()
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = grpo_loss(logps, old, ref, adv, mask, cliprange=0.2, kl_coef=0.1)
    # ratio 1 everywhere: per-token loss -A; mean over the 3 valid tokens
    policy = (-2 - 2 + 1) / 3
    kl = (math.exp(-0.5) + 0.5 - 1) / 3
    assert out.policy_loss.item() == pytest.approx(policy)
    assert out.loss.item() == pytest.approx(policy + 0.1 * kl)
