"""PPO and GRPO maths on response-aligned tensors [batch, response tokens] with a `mask` of valid tokens.

Pure functions, each tested against a hand computation. PPO follows the InstructGPT/TRL recipe (per-token KL penalty
in the reward, the score on the last token, GAE, clipped policy and value losses); GRPO follows DeepSeekMath
(group-normalised sequence advantages, clipped ratio, k3 KL estimator in the loss, averaged over tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the valid tokens."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * (log pi - log ref) on every token, plus the sequence's score on its last one."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response (valid tokens are a prefix); (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_valid = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_valid if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running * next_valid) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    value_loss: torch.Tensor | None = None


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate loss max(-A r, -A clip(r)) and whether the clipped branch was taken."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = -advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
             cliprange_value: float, vf_coef: float) -> PolicyLoss:
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages, cliprange)
    policy_loss = masked_mean(per_token, mask)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    return PolicyLoss(policy_loss + vf_coef * value_loss, policy_loss.detach(), masked_mean(clipped, mask),
                      0.5 * masked_mean((logps - old_logps).detach() ** 2, mask), value_loss.detach())


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each completion's score minus its group's mean, over the group's standard deviation (groups are consecutive)."""
    groups = scores.view(-1, group_size)
    mean, std = groups.mean(-1, keepdim=True), groups.std(-1, keepdim=True)
    return ((groups - mean) / (std + 1e-4)).view(-1)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, cliprange: float, kl_coef: float) -> PolicyLoss:
    """Clipped surrogate with the sequence advantage on every token, plus kl_coef * k3 KL estimate
    (exp(ref - pi) - (ref - pi) - 1), averaged over all valid tokens of the batch."""
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages.unsqueeze(-1), cliprange)
    policy_loss = masked_mean(per_token, mask)
    loss = policy_loss
    if ref_logps is not None and kl_coef:
        delta = ref_logps - logps
        loss = loss + kl_coef * masked_mean(torch.exp(delta) - delta - 1, mask)
    return PolicyLoss(loss, policy_loss.detach(), masked_mean(clipped, mask),
                      0.5 * masked_mean((logps - old_logps).detach() ** 2, mask))
