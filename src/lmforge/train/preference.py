"""Trainers for preference optimisation on our encoded examples: `PreferenceTrainer` (dpo and its variants) and
`KtoTrainer`.

Why not TRL's DPOTrainer/KTOTrainer: they tokenize prompt and completion strings themselves and train every token
after the prompt, whereas lmforge's examples are already encoded with labels derived from the chat template (the same
masks as SFT: exactly the reply and its end-of-turn token); and ORPO/SimPO live only in trl.experimental. The
losses are in `losses.py` (tested against hand computations); these classes run the forward passes, the reference
and the metrics.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from lmforge.model.moe import router_loss_coef, with_router_loss_added
from lmforge.train.losses import REFERENCE_FREE, PairLogps, kto_loss, preference_loss, sequence_logps
from lmforge.train.trainer import LoraPlusTrainer

_TEXT_INPUTS = {"input_ids", "attention_mask", "labels", "desirable"}


class ReferenceTrainer(LoraPlusTrainer):
    """Shared by the preference trainers: log-probabilities under the policy and the reference, and per-batch
    metrics (rewards, margins, KL) averaged over each logging interval.

    The reference is `ref_model` when given, otherwise the policy with its LoRA adapters switched off (no second
    copy of the weights in memory)."""

    signature_columns: list[str] = []

    def __init__(self, *args: Any, ref_model: torch.nn.Module | None = None, beta: float = 0.1, ftx: float = 0.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta, self.ftx = beta, ftx
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(ref_model.eval().requires_grad_(False),
                                                            evaluation_mode=True)
        # compute_loss returns a per-batch mean: the Trainer must scale it for gradient accumulation itself
        self.model_accepts_loss_kwargs = False
        self.router_coef = router_loss_coef(self.model)  # a mixture of experts' load-balancing loss (0: off)
        self.router_loss: torch.Tensor | None = None
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(self.signature_columns)

    def sequence_logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                       prefix: str = "", policy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities and trained-token counts per row; the policy's pass on the batch itself keeps
        the model's router loss (`router_loss`) for `with_router_loss`."""
        media = {} if prefix else {k: v for k, v in inputs.items() if k not in _TEXT_INPUTS and
                                   not k.startswith("kl_")}  # a vision-language model's pixel inputs
        outputs = model(input_ids=inputs[f"{prefix}input_ids"], attention_mask=inputs[f"{prefix}attention_mask"],
                        use_cache=False, **media)
        if policy and not prefix:
            self.router_loss = getattr(outputs, "aux_loss", None)
        return sequence_logps(outputs.logits, inputs[f"{prefix}labels"])

    @torch.no_grad()
    def reference_logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                        prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_model is not None:
            return self.sequence_logps(self.ref_model, inputs, prefix, policy=False)
        with self.accelerator.unwrap_model(model).disable_adapter():
            return self.sequence_logps(model, inputs, prefix, policy=False)

    def with_router_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The preference loss plus the policy's router load-balancing loss, as a causal LM's own loss adds it."""
        if self.router_coef and self.router_loss is not None:
            self.record("router_loss", self.router_loss)
        return with_router_loss_added(loss, self.router_loss, self.router_coef)

    def record(self, name: str, values: torch.Tensor) -> None:
        """Add a batch's values of a metric (averaged over all processes and the logging interval)."""
        mode = "train" if self.model.training else "eval"
        values = values.detach().float().reshape(-1)
        total = self.accelerator.gather(torch.stack([values.sum(), torch.tensor(float(values.numel()),
                                                                                device=values.device)]).unsqueeze(0))
        if total[:, 1].sum() > 0:  # every process gathers, even one whose batch had none of these values
            self._metrics[mode][name].append((total[:, 0].sum() / total[:, 1].sum()).item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)


class PreferenceTrainer(ReferenceTrainer):
    """DPO and its variants on chosen/rejected pairs (`PairCollator` batches: chosen rows, then rejected rows)."""

    signature_columns = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]

    def __init__(self, *args: Any, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 simpo_gamma: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_type, self.label_smoothing, self.simpo_gamma = loss_type, label_smoothing, simpo_gamma

    @staticmethod
    def _pairs(sums: torch.Tensor, counts: torch.Tensor) -> PairLogps:
        chosen, rejected = sums.chunk(2)
        chosen_tokens, rejected_tokens = counts.chunk(2)
        return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        policy = self._pairs(*self.sequence_logps(model, inputs))
        reference = None if self.loss_type in REFERENCE_FREE else self._pairs(*self.reference_logps(model, inputs))
        out = preference_loss(self.loss_type, policy, reference, self.beta, self.label_smoothing, self.simpo_gamma)
        loss = out.losses.mean()
        chosen_mean, _ = policy.means()
        if self.ftx:
            loss = loss + self.ftx * -chosen_mean.mean()
        self.record("rewards/chosen", out.chosen_rewards)
        self.record("rewards/rejected", out.rejected_rewards)
        self.record("rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).float())
        self.record("rewards/margins", out.chosen_rewards - out.rejected_rewards)
        self.record("logps/chosen", policy.chosen.detach())
        self.record("logps/rejected", policy.rejected.detach())
        loss = self.with_router_loss(loss)
        return (loss, {}) if return_outputs else loss


class KtoTrainer(ReferenceTrainer):
    """KTO on replies labelled desirable or not (`KtoCollator` batches, with the mismatched KL batch)."""

    signature_columns = ["input_ids", "labels", "kto_label"]

    def __init__(self, *args: Any, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        logps, tokens = self.sequence_logps(model, inputs)
        reference, _ = self.reference_logps(model, inputs)
        with torch.no_grad():
            kl_policy, _ = self.sequence_logps(model, inputs, "kl_", policy=False)
            kl_reference, _ = self.reference_logps(model, inputs, "kl_")
            kl = self.accelerator.gather((kl_policy - kl_reference).mean().unsqueeze(0)).mean()
        desirable = inputs["desirable"]
        out = kto_loss(logps, reference, desirable, kl, self.beta, self.desirable_weight, self.undesirable_weight)
        loss = out.losses.mean()
        if self.ftx and desirable.any():
            loss = loss + self.ftx * -(logps[desirable] / tokens[desirable].clamp(min=1)).mean()
        self.record("rewards/chosen", out.chosen_rewards)
        self.record("rewards/rejected", out.rejected_rewards)
        self.record("kl", kl.clamp(min=0).reshape(1))
        self.record("logps/chosen", logps[desirable].detach())
        self.record("logps/rejected", logps[~desirable].detach())
        loss = self.with_router_loss(loss)
        return (loss, {}) if return_outputs else loss
