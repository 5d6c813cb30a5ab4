"""Knowledge-distillation losses on a student's and a teacher's token distributions, computed in chunks of labelled
positions so that neither model's full-vocabulary logits for the whole batch ever exist.

Per trained position (the same positions SFT trains: the assistant's tokens), with temperature T:
- `forward_kl`: KL(teacher || student) (classic distillation, mode-covering);
- `reverse_kl`: KL(student || teacher) (mode-seeking);
- `jsd`: the generalised Jensen-Shannon divergence of GKD with `kd_beta`: beta * KL(teacher || m) +
  (1 - beta) * KL(student || m), m = beta * teacher + (1 - beta) * student (beta 0 is forward KL, 1 reverse KL), as
  TRL's `generalized_jsd_loss`.
The divergence is averaged over the trained positions (not scaled by T^2, as TRL's GKD), and mixed with the SFT
cross-entropy (at T = 1) as `alpha * KD + (1 - alpha) * CE`.

Why our own: TRL's GKDTrainer computes both models' full logits for the whole batch; at a 151k vocabulary that is the
largest memory of the step twice over. Each chunk here is recomputed in the backward pass (activation checkpointing)
instead of keeping its logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.model.chunked_loss import trained_rows

IGNORE_INDEX = -100
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
LOGITS_PER_CHUNK = 1 << 25  # float32 logits of one model held at once, whatever the vocabulary


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float = 0.5,
               temperature: float = 1.0) -> torch.Tensor:
    """Per-row divergence between the two models' distributions at `temperature` ([rows, vocab] -> [rows])."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "jsd" and beta == 0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1:
        kind = "reverse_kl"
    if kind == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "jsd":
        m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown kd_loss '{kind}' (one of {', '.join(KD_LOSSES)})")


@dataclass(frozen=True)
class LogitHead:
    """What a causal LM does to `hidden @ lm_head.T` before its loss (its own forward does the same): Gemma 2/3's
    final soft-capping (tanh(x / cap) * cap), Cohere's `logit_scale` (x * s), Granite's `logits_scaling` (x / s)."""

    softcap: float | None = None
    scale: float = 1.0

    @classmethod
    def of(cls, config: Any) -> LogitHead:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        scale = float(getattr(text, "logit_scale", None) or 1.0) / float(getattr(text, "logits_scaling", None) or 1.0)
        return cls(getattr(text, "final_logit_softcapping", None) or None, scale)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _chunk_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                teacher_weight: torch.Tensor, targets: torch.Tensor, kind: str, beta: float, temperature: float,
                alpha: float, student_head: LogitHead, teacher_head: LogitHead) -> torch.Tensor:
    """Summed (over the chunk's rows) alpha * KD + (1 - alpha) * CE."""
    student_logits = student_head(student_hidden.to(student_weight.dtype) @ student_weight.t())
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden.to(teacher_weight.dtype) @ teacher_weight.t())
    loss = alpha * divergence(student_logits, teacher_logits, kind, beta, temperature).sum()
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.float(), targets, reduction="sum")
    return loss


def distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                      teacher_weight: torch.Tensor, labels: torch.Tensor, kind: str = "forward_kl", beta: float = 0.5,
                      temperature: float = 1.0, alpha: float = 1.0,
                      num_items_in_batch: torch.Tensor | int | None = None, student_head: LogitHead = LogitHead(),
                      teacher_head: LogitHead = LogitHead()) -> torch.Tensor:
    """The loss at the positions `labels` trains (labels shifted by one inside, like a causal LM's loss), averaged over
    them (or divided by `num_items_in_batch`); both models' hidden states are [batch, seq, hidden], and each side's
    logits go through its model's `LogitHead`."""
    shift = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    (rows_s, rows_t), targets, trained = trained_rows(shift, student_hidden, teacher_hidden)
    count = num_items_in_batch if num_items_in_batch is not None else trained
    count = torch.as_tensor(count, dtype=torch.float32, device=student_hidden.device).clamp(min=1)
    chunk = max(1, LOGITS_PER_CHUNK // max(student_weight.shape[0], teacher_weight.shape[0]))
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_chunk_loss, rows_s[part], student_weight, rows_t[part], teacher_weight,
                                   targets[part], kind, beta, temperature, alpha, student_head, teacher_head,
                                   use_reentrant=False)
    return total / count
