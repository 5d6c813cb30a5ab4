"""Trainer subclasses shared by the stages: the LoRA+ optimizer, perplexity for language-modelling stages, TRL's
reward trainer; all with lmforge's checkpointing, graceful stop and guard (lmforge.train.runtime.resilience)."""

from __future__ import annotations

from typing import Any

from transformers import Trainer
from trl import RewardTrainer

from lmforge.model.chunked_loss import use_chunked_loss
from lmforge.train.optimizers import allow_resuming, build_optimizer
from lmforge.train.runtime.log_callback import perplexity
from lmforge.train.runtime.resilience import SafeTrainingMixin


class LoraPlusTrainer(SafeTrainingMixin, Trainer):
    """A Trainer that builds the LoRA+ optimizer when `loraplus_lr_ratio` is set, or a memory-light one
    (`optimizer: muon | adam_mini | badam`, train/optimizers.py)."""

    def __init__(self, *args: Any, loraplus_lr_ratio: float | None = None, optimizer_settings: Any = None,
                 **kwargs: Any):
        # optimizer_settings: the run's FinetuningArguments (`optimizer` and its options)
        self.loraplus_lr_ratio, self.optimizer_settings = loraplus_lr_ratio, optimizer_settings
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None):
        if self.optimizer is None and getattr(self.optimizer_settings, "optimizer", None):
            self.optimizer = build_optimizer(self.optimizer_settings, self.model, self.args)
            return self.optimizer
        if self.optimizer is None and self.loraplus_lr_ratio:
            # LoRA+ gives the B matrices a larger learning rate; peft builds the parameter groups.
            from peft.optimizers import create_loraplus_optimizer

            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = create_loraplus_optimizer(
                self.model, optimizer_cls, lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
                loraplus_weight_decay=self.args.weight_decay, **optimizer_kwargs)
            return self.optimizer
        optimizer = super().create_optimizer(model)
        allow_resuming(optimizer)
        return optimizer


class LanguageModelTrainer(LoraPlusTrainer):
    """pt/sft: the chunked loss (unless off, or Liger's is used), perplexity (exp of the loss) in evaluation."""

    def __init__(self, *args: Any, chunked_loss: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.chunked_loss = chunked_loss and not self.args.use_liger_kernel and use_chunked_loss(self.model)

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        for key in [k for k in output.metrics if k.endswith("_loss")]:
            output.metrics[key[: -len("loss")] + "perplexity"] = perplexity(output.metrics[key])
        return output


class RewardModelTrainer(SafeTrainingMixin, RewardTrainer):
    """TRL's RewardTrainer with lmforge's checkpointing, graceful stop and guard."""
