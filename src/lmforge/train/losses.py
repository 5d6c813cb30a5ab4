"""Preference losses on per-sequence log-probabilities: DPO (sigmoid), SLiC (hinge), IPO, ORPO, SimPO and KTO.

Pure functions of tensors, so each is tested against a hand computation. The formulas and defaults follow the papers
as TRL and LLaMA-Factory implement them: sums of token log-probabilities for sigmoid/hinge (and KTO), per-token means
for IPO, ORPO and SimPO (their papers define them on length-normalised log-probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.data.collate import IGNORE_INDEX

PrefLoss = Literal["sigmoid", "hinge", "ipo", "orpo", "simpo"]
REFERENCE_FREE: tuple[str, ...] = ("orpo", "simpo")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of each sequence's labelled tokens, their count), per sequence.

    `labels` are aligned with the inputs (as for a causal-LM loss): the logits at position t predict labels[t + 1].
    The log-softmax is taken as logit - logsumexp in float32 without materialising a second vocabulary-sized tensor.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    targets = labels.masked_fill(~mask, 0)
    logits = logits.float()
    token_logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for large |x| (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class PairLogps:
    """Per-sequence log-probability sums and token counts of the chosen and rejected replies (batch of pairs)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class PreferenceLossOutput:
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # the implicit rewards the loss compares (detached)
    rejected_rewards: torch.Tensor


def preference_loss(kind: PrefLoss, policy: PairLogps, reference: PairLogps | None, beta: float,
                    label_smoothing: float = 0.0, simpo_gamma: float = 0.5) -> PreferenceLossOutput:
    """The per-pair loss of `kind`; `reference` is required except for the reference-free ORPO and SimPO."""
    if kind in REFERENCE_FREE:
        chosen, rejected = policy.means()
        if kind == "orpo":
            # ORPO: SFT loss on the chosen reply + beta * -log sigmoid(log odds(chosen) - log odds(rejected)),
            # odds(y) = p / (1 - p) with p the per-token mean probability.
            log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
            losses = -chosen - beta * F.logsigmoid(log_odds)
        else:
            # SimPO: -log sigmoid(beta * (mean logp(chosen) - mean logp(rejected)) - gamma)
            losses = -F.logsigmoid(beta * (chosen - rejected) - simpo_gamma)
        return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
    if reference is None:
        raise ValueError(f"pref_loss '{kind}' needs reference log-probabilities")
    if kind == "ipo":
        (chosen, rejected), (ref_chosen, ref_rejected) = policy.means(), reference.means()
    else:
        chosen, rejected = policy.chosen, policy.rejected
        ref_chosen, ref_rejected = reference.chosen, reference.rejected
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    margin = chosen_ratio - rejected_ratio
    if kind == "sigmoid":  # DPO; with label smoothing, conservative DPO (cDPO)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    elif kind == "hinge":
        losses = torch.relu(1 - beta * margin)
    elif kind == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown pref_loss {kind!r}")
    return PreferenceLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def kto_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLossOutput:
    """KTO (Ethayarajh et al. 2024): a desirable reply's loss is 1 - sigmoid(beta * (log ratio - KL)), an undesirable
    one's 1 - sigmoid(beta * (KL - log ratio)); KL is the (detached, non-negative) batch estimate of
    KL(policy || reference) from mismatched prompt/reply pairs. Returns the weighted loss of every example; the
    rewards are those of the desirable and the undesirable examples."""
    ratio = policy_logps - reference_logps
    kl = kl.detach().clamp(min=0)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    rewards = beta * ratio.detach()
    return PreferenceLossOutput(losses, rewards[desirable], rewards[~desirable])
