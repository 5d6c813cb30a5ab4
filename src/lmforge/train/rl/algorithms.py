"""What PPO and GRPO do differently, each as one small object chosen once per run; the loop (`loop.py`) is theirs
in common.

- PPO: one completion per prompt, a value head (the critic), a per-token KL penalty folded into the rewards, GAE
  advantages (whitened), clipped policy and value losses.
- Online DPO: two completions per prompt, the one the reward (a reward model, a PRM, functions or a judge) prefers
  is chosen, and DPO's loss on the pair against the reference (no advantages, no clipping).
- GRPO: `num_generations` completions per prompt, advantages against the group's reward (`scale_rewards`,
  `advantage_estimator`; or REINFORCE++'s per-token returns with the KL in the reward instead of the loss), the
  family's token averaging (`loss_type`), clip-higher, a k3 KL term, and completions left out of the loss
  (`mask_truncated_completions`, `filter_zero_variance_groups`, `dynamic_sampling`).
"""

from __future__ import annotations

import torch

from lmforge.config.schema import RunConfig
from lmforge.train.rl.losses import (
    PolicyLoss,
    gae,
    group_advantages,
    grpo_loss,
    online_dpo_loss,
    pair_preferences,
    ppo_loss,
    ppo_rewards,
    reinforce_pp_advantages,
    whiten,
    zero_variance_rows,
)

Batch = dict[str, torch.Tensor]


class ValueHead(torch.nn.Module):
    """PPO's critic: a linear layer on the policy's last hidden states (the value of the state before each token)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.summary.weight, std=1 / (hidden_size + 1))
        torch.nn.init.zeros_(self.summary.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.summary.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden)


class ShuffledRows:
    def order(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """The order the rollout's rows are cut into mini-batches in: any (each completion stands alone)."""
        return torch.randperm(rows, generator=generator)


class PPO(ShuffledRows):
    group_size = 1
    # the statistics each mini-batch records (besides loss, policy_loss, clip_fraction, approx_kl, entropy)
    stats = ("value_loss",)

    def __init__(self, cfg: RunConfig):
        self.rl = cfg.rl
        self.temperature = cfg.generation.temperature  # the log-probabilities of the distribution that sampled

    @property
    def needs_reference(self) -> bool:
        return True  # the KL penalty is part of the reward

    def value_head(self, policy: torch.nn.Module) -> ValueHead | None:
        return ValueHead(policy.config.get_text_config().hidden_size)

    def advantages(self, batch: Batch, mask: torch.Tensor, truncated: torch.Tensor, stats: dict[str, float]) -> None:
        """Per-token rewards (score at the end, KL penalty on every token), then GAE over the critic's values."""
        rewards = ppo_rewards(batch["scores"], batch["old_logps"], batch["ref_logps"], mask, self.rl.kl_coef)
        advantages, returns = gae(rewards, batch["old_values"], mask, self.rl.gamma, self.rl.lam)
        batch.update(advantages=whiten(advantages, mask), returns=returns)

    def loss(self, logps: torch.Tensor, values: torch.Tensor | None, batch: Batch, rows: torch.Tensor,
             mask: torch.Tensor, normalisers: dict[str, float]) -> PolicyLoss:
        return ppo_loss(logps, batch["old_logps"][rows], batch["advantages"][rows], values, batch["old_values"][rows],
                        batch["returns"][rows], mask, self.rl.cliprange, self.rl.cliprange_value, self.rl.vf_coef,
                        token_normalizer=normalisers["tokens"])


class GRPO(ShuffledRows):
    stats = ("clip_fraction_low", "clip_fraction_high")

    def __init__(self, cfg: RunConfig):
        self.rl, self.max_new_tokens = cfg.rl, cfg.generation.max_new_tokens
        self.temperature = cfg.generation.temperature  # the log-probabilities of the distribution that sampled
        self.group_size = cfg.rl.num_generations
        self.kl_in_reward = cfg.rl.advantage_estimator.startswith("reinforce_plus_plus")

    @property
    def needs_reference(self) -> bool:
        return self.rl.kl_coef > 0  # `kl_coef: 0` drops the reference model

    def value_head(self, policy: torch.nn.Module) -> None:
        return None

    def advantages(self, batch: Batch, mask: torch.Tensor, truncated: torch.Tensor, stats: dict[str, float]) -> None:
        """Each completion against its group; `trained` marks the completions that carry loss."""
        group = self.group_size
        if self.kl_in_reward:  # REINFORCE++: per-token advantages with the KL penalty in the reward
            baseline = group if self.rl.advantage_estimator == "reinforce_plus_plus_baseline" else None
            batch["advantages"] = reinforce_pp_advantages(batch["scores"], batch["old_logps"], batch["ref_logps"],
                                                          mask, self.rl.kl_coef, baseline)
        else:
            batch["advantages"] = group_advantages(batch["scores"], group, self.rl.scale_rewards,
                                                   self.rl.advantage_estimator)
        trained = torch.ones_like(truncated)
        if self.rl.mask_truncated_completions:
            trained = trained * (1 - truncated)
        if self.rl.filter_zero_variance_groups:
            flat = zero_variance_rows(batch["scores"], group)
            trained = trained * (~flat).float()
            stats["zero_variance_groups"] = float(flat.sum().item() / group)
        batch["trained"] = trained

    def loss(self, logps: torch.Tensor, values: torch.Tensor | None, batch: Batch, rows: torch.Tensor,
             mask: torch.Tensor, normalisers: dict[str, float]) -> PolicyLoss:
        kl_coef = 0.0 if self.kl_in_reward else self.rl.kl_coef  # REINFORCE++ has it in the reward instead
        ref = batch["ref_logps"][rows] if kl_coef > 0 else None
        dapo = self.rl.loss_type == "dapo"  # averaged over the tokens of the whole optimizer step
        return grpo_loss(logps, batch["old_logps"][rows], ref, batch["advantages"][rows], mask, self.rl.cliprange,
                         kl_coef, self.rl.epsilon_high, self.rl.loss_type, self.max_new_tokens,
                         token_normalizer=normalisers["step_tokens" if dapo else "tokens"],
                         row_normalizer=normalisers["rows"],
                         importance_sampling_level=self.rl.importance_sampling_level)


class OnlineDPO:
    group_size = 2  # a pair per prompt, in consecutive rows (mini-batches keep pairs whole: `order`)
    stats = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
             "logps/rejected")
    temperature = 1.0  # DPO's log-probabilities are the model's own, whatever temperature sampled the pair
    needs_reference = True

    def __init__(self, cfg: RunConfig):
        self.beta, self.loss_type = cfg.finetuning.pref_beta, cfg.finetuning.pref_loss

    def value_head(self, policy: torch.nn.Module) -> None:
        return None

    def order(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """A random order of the pairs, each pair's two rows together."""
        pairs = torch.randperm(rows // 2, generator=generator)
        return torch.stack([2 * pairs, 2 * pairs + 1], -1).flatten()

    def advantages(self, batch: Batch, mask: torch.Tensor, truncated: torch.Tensor, stats: dict[str, float]) -> None:
        """Which completion of each pair is chosen; a pair whose two rewards are equal is not trained."""
        first_chosen, preferred = pair_preferences(batch["scores"])
        batch["first_chosen"] = first_chosen.repeat_interleave(2)
        batch["trained"] = preferred.float().repeat_interleave(2)
        chosen = torch.where(first_chosen, batch["scores"][0::2], batch["scores"][1::2])
        rejected = torch.where(first_chosen, batch["scores"][1::2], batch["scores"][0::2])
        stats["scores_margin"] = (chosen - rejected).mean().item()
        stats["tied_pairs"] = float((~preferred).sum().item())

    def loss(self, logps: torch.Tensor, values: torch.Tensor | None, batch: Batch, rows: torch.Tensor,
             mask: torch.Tensor, normalisers: dict[str, float]) -> PolicyLoss:
        trained = batch["trained"][rows].bool()
        first_chosen = batch["first_chosen"][rows][0::2]
        if not trained.any():  # only tied pairs in this share: nothing to learn, a zero that keeps the graph
            zero = (logps * 0).sum()
            return PolicyLoss(zero, zero.detach(), zero.detach(), zero.detach(),
                              extra={name: zero.detach() for name in self.stats})
        keep = trained.view(-1, 2)[:, 0]
        kept = trained.nonzero().flatten()
        loss, extra = online_dpo_loss(logps[kept], batch["ref_logps"][rows][kept], mask[kept], first_chosen[keep],
                                      self.beta, self.loss_type, normalisers["trained_rows"] / 2)
        approx_kl = 0.5 * ((logps - batch["ref_logps"][rows]).detach() ** 2 * mask).sum() / mask.sum().clamp(min=1)
        zero = loss.detach() * 0
        return PolicyLoss(loss, loss.detach(), zero, approx_kl, extra=extra)


Algorithm = PPO | GRPO | OnlineDPO
ALGORITHMS: dict[str, type[PPO] | type[GRPO] | type[OnlineDPO]] = {"ppo": PPO, "grpo": GRPO,
                                                                    "online_dpo": OnlineDPO}


def algorithm_of(cfg: RunConfig) -> Algorithm:
    """The algorithm of the run's stage (`ppo`, `grpo` or `online_dpo`)."""
    return ALGORITHMS[cfg.finetuning.stage](cfg)
