"""PPO and GRPO maths on response-aligned tensors [batch, response tokens] with a `mask` of valid tokens.

Pure functions, each tested against a hand computation. PPO follows the InstructGPT/TRL recipe (per-token KL penalty
in the reward, the score on the last token, GAE, clipped policy and value losses); GRPO follows DeepSeekMath
(group-normalised sequence advantages, clipped ratio, k3 KL estimator in the loss) with the later variants' choices:
how tokens are averaged (grpo, bnpo, dapo, dr_grpo), clip-higher, reward scaling, the leave-one-out baseline (RLOO).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the valid tokens (the unbiased variance, as TRL's and verl's `masked_whiten`)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = masked_mean((values - mean) ** 2, mask) * (count / (count - 1) if count > 1 else 1.0)
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
    clip_low: torch.Tensor | None = None  # GRPO: ratio clipped below 1 - cliprange (negative advantages)
    clip_high: torch.Tensor | None = None  # GRPO: ratio clipped above 1 + epsilon_high (positive advantages)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # an algorithm's own statistics (online DPO's)


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate loss max(-A r, -A clip(r)) and whether the clipped branch was taken."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = -advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
             cliprange_value: float, vf_coef: float, token_normalizer: float | None = None) -> PolicyLoss:
    """Clipped policy and value losses, each averaged over the valid tokens (of the whole mini-batch across
    processes when the loop gives `token_normalizer`)."""
    tokens = max(token_normalizer if token_normalizer is not None else float(mask.sum()), 1.0)
    per_token, clipped = clipped_surrogate(logps, old_logps, advantages, cliprange)
    policy_loss = (per_token * mask).sum() / tokens
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value_loss = 0.5 * (torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2) * mask).sum() / tokens
    return PolicyLoss(policy_loss + vf_coef * value_loss, policy_loss.detach(), masked_mean(clipped, mask),
                      0.5 * masked_mean((logps - old_logps).detach() ** 2, mask), value_loss.detach())


def group_advantages(scores: torch.Tensor, group_size: int, scale: str = "group",
                     estimator: str = "grpo") -> torch.Tensor:
    """Each completion's score minus its baseline: its group's mean (`grpo`) or the mean of the rest of its group
    (`rloo`); divided by the standard deviation of its group (`scale="group"`), of all the scores (`"batch"`), or
    not (`"none"`). Groups are consecutive; the std is the unbiased one, plus 1e-4 (as TRL)."""
    groups = scores.view(-1, group_size)
    if estimator == "rloo":
        baseline = (groups.sum(-1, keepdim=True) - groups) / max(group_size - 1, 1)
    else:
        baseline = groups.mean(-1, keepdim=True)
    advantages = groups - baseline
    if scale == "group":
        advantages = advantages / (groups.std(-1, keepdim=True) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (scores.std() + 1e-4)
    return advantages.reshape(-1)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Each token's return: its reward plus the discounted rewards after it, within its completion."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns


def reinforce_pp_advantages(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                            kl_coef: float, group_size: int | None = None, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025; verl's `reinforce_plus_plus` and `reinforce_plus_plus_baseline`): per-token
    rewards with the KL penalty in them (`ppo_rewards`: -kl_coef * (log pi - log ref) on every token, the score on
    the last). Without `group_size`: each token's discounted return, whitened over every valid token of the batch.
    With `group_size` (the baseline variant): each completion's summed reward minus its group's mean, on every
    token, whitened over the batch. [batch, tokens], zero outside `mask`."""
    rewards = ppo_rewards(scores, logps, ref_logps, mask, kl_coef)
    if group_size is None:
        return whiten(discounted_returns(rewards, mask, gamma), mask)
    totals = rewards.sum(-1).view(-1, group_size)
    baseline = totals.mean(-1, keepdim=True) if group_size > 1 else torch.zeros_like(totals[:, :1])
    centred = (totals - baseline).reshape(-1, 1) * mask
    return whiten(centred, mask)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to `max_length - buffer` tokens, then falling linearly to `-factor` at
    `max_length` (and below it past that)."""
    excess = lengths.float() - (max_length - buffer)
    return torch.clamp(-excess / max(buffer, 1) * factor, max=0.0)


def zero_variance_rows(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for every completion of a group whose scores are all equal (its advantages are all zero)."""
    groups = scores.view(-1, group_size)
    return (groups == groups[:, :1]).all(-1).repeat_interleave(group_size)


GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None = None,
              token_normalizer: float | None = None, row_normalizer: float | None = None) -> torch.Tensor:
    """Per-token losses to one number, as each GRPO variant averages them (`loss_type` in RLArguments). The
    normalisers default to this batch's tokens and rows; the loop passes the counts of the whole mini-batch (bnpo) or
    optimizer step (dapo) over all processes, divided by the process count (`distributed.py`)."""
    total = (per_token * mask).sum()
    rows = float(row_normalizer if row_normalizer is not None else per_token.shape[0])
    if loss_type == "grpo":  # per completion, then over completions
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(rows, 1.0)
    if loss_type in ("bnpo", "dapo"):  # over the tokens of the mini-batch (bnpo) or of the optimizer step (dapo)
        return total / max(token_normalizer if token_normalizer is not None else float(mask.sum()), 1.0)
    if loss_type == "dr_grpo":  # a constant normaliser: completions x the longest allowed completion
        return total / (max(rows, 1.0) * (max_completion_length or per_token.shape[1]))
    raise ValueError(f"unknown loss_type '{loss_type}' (one of {', '.join(GRPO_LOSS_TYPES)})")


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, cliprange: float, kl_coef: float,
              epsilon_high: float | None = None, loss_type: str = "bnpo", max_completion_length: int | None = None,
              token_normalizer: float | None = None, row_normalizer: float | None = None,
              importance_sampling_level: str = "token") -> PolicyLoss:
    """Per token: the clipped surrogate with the sequence's (or the token's) advantage, ratio clipped to [1 - cliprange,
    1 + (epsilon_high or cliprange)], plus kl_coef * the k3 KL estimate exp(ref - pi) - (ref - pi) - 1; averaged
    as `loss_type` says (`aggregate`). With `importance_sampling_level` "sequence" (GSPO), every token of a
    completion takes the completion's ratio: exp of the mean of its tokens' log-ratios (TRL's definition). Clip
    fractions: tokens whose ratio was clipped below (negative advantage) and above (positive advantage)."""
    high = cliprange if epsilon_high is None else epsilon_high
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)  # per token (REINFORCE++) or sequence
    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))
    elif importance_sampling_level != "token":
        raise ValueError(f"unknown importance_sampling_level '{importance_sampling_level}' (token or sequence)")
    ratio = torch.exp(log_ratio)
    per_token = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - cliprange, 1 + high))
    policy_per_token = per_token
    if ref_logps is not None and kl_coef:
        delta = ref_logps - logps
        per_token = per_token + kl_coef * (torch.exp(delta) - delta - 1)
    loss = aggregate(per_token, mask, loss_type, max_completion_length, token_normalizer, row_normalizer)
    policy_loss = aggregate(policy_per_token.detach(), mask, loss_type, max_completion_length, token_normalizer,
                            row_normalizer)
    low_clipped = ((ratio < 1 - cliprange) & (adv < 0)).float().expand_as(mask)
    high_clipped = ((ratio > 1 + high) & (adv > 0)).float().expand_as(mask)
    return PolicyLoss(loss, policy_loss, masked_mean(low_clipped + high_clipped, mask),
                      0.5 * masked_mean((logps - old_logps).detach() ** 2, mask),
                      clip_low=masked_mean(low_clipped, mask), clip_high=masked_mean(high_clipped, mask))


def pair_preferences(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online DPO's pairs, two completions of one prompt in consecutive rows: (whether the first is preferred,
    whether the pair has a preference at all). Equal scores say nothing about which is better: such a pair is
    left out of the loss (TRL's trainer would train it with the first completion as chosen)."""
    first, second = scores.view(-1, 2).unbind(-1)
    return first > second, first != second


def online_dpo_loss(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, first_chosen: torch.Tensor,
                    beta: float, loss_type: str = "sigmoid", pair_normalizer: float | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO on pairs sampled from the policy (TRL's OnlineDPOTrainer): rows 2i and 2i+1 are one prompt's two
    completions, `first_chosen[i]` says which one the reward preferred. Each completion's log-probability is the
    sum over its tokens (`mask`); logits = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected);
    `sigmoid`: -log sigmoid(beta * logits); `ipo`: (logits - 1 / (2 beta))^2. Averaged over the pairs (or summed
    and divided by `pair_normalizer`, the pairs of the whole mini-batch over processes). Also the implicit rewards
    beta * (pi - ref) of chosen and rejected, their margin and accuracy, and the chosen/rejected log-probabilities."""
    sums, ref_sums = (logps * mask).sum(-1).view(-1, 2), (ref_logps * mask).sum(-1).view(-1, 2)
    order = torch.stack([~first_chosen, first_chosen], -1).long()  # column 0 -> chosen's row in the pair
    chosen, rejected = sums.gather(1, order[:, :1]).squeeze(1), sums.gather(1, order[:, 1:]).squeeze(1)
    ref_chosen = ref_sums.gather(1, order[:, :1]).squeeze(1)
    ref_rejected = ref_sums.gather(1, order[:, 1:]).squeeze(1)
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"online DPO takes pref_loss sigmoid or ipo, not '{loss_type}'")
    loss = losses.sum() / pair_normalizer if pair_normalizer else losses.mean()
    chosen_rewards = beta * (chosen - ref_chosen).detach()
    rejected_rewards = beta * (rejected - ref_rejected).detach()
    margin = chosen_rewards - rejected_rewards
    return loss, {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                  "rewards/margins": margin.mean(), "rewards/accuracies": (margin > 0).float().mean(),
                  "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
