"""What every lmforge Trainer adds to transformers': checkpoints that are never half-written (and a stream position
saved with them), a graceful stop on SIGTERM/SIGINT, and the non-finite step guard."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from lmforge.config.resilience import ResilienceArguments
from lmforge.config.secrets import MASK, is_secret
from lmforge.data.stream import STATE_FILE as STREAM_STATE_FILE
from lmforge.data.stream import BlockStream, load_position, save_position
from lmforge.model.moe import ExpertLoads, RouterLossTap, router_loss_coef
from lmforge.train.runtime.checkpoint import COMPLETE_MARKER, staging_root
from lmforge.train.runtime.guard import NonfiniteGuard
from lmforge.train.runtime.memory_probe import MemoryProbe
from lmforge.train.runtime.session import RunSession, needs_cast, record_dtype, saved_state_dict
from lmforge.train.runtime.signals import StopRequest, stop_agreed
from lmforge.train.runtime.split_checkpoint import (
    cast_saved_weights,
    is_split_model,
    load_saved_weights,
    load_split_state,
    save_split_state,
)

logger = logging.getLogger(__name__)


def blocks_per_step(args: Any) -> int:
    """Training rows one optimizer step consumes over all processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: foreach kernels
    if get_total_norm is not None:
        return get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


class _StopAtStepEnd(TrainerCallback):
    """At the end of each optimizer step: on a signal, or when the guard gives up, save a checkpoint and stop."""

    def __init__(self, trainer: SafeTrainingMixin) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if stop_agreed(trainer.stop_request.requested, args.device):
            trainer.stopped_by = trainer.stop_request.signal_name or "a signal on another process"
        elif trainer.guard is not None and trainer.guard.exhausted:
            trainer.stopped_by = "non-finite steps"
        if trainer.stopped_by:
            control.should_save = True
            control.should_training_stop = True
        return control


class _GuardBeforeStep(TrainerCallback):
    """The non-finite guard on the Trainer's public hook before each optimizer step."""

    def __init__(self, trainer: SafeTrainingMixin) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.check_step(self.trainer.model)
        return control


# The Trainer's private methods this mixin overrides, because no public hook can make a checkpoint atomic (the
# Trainer writes `checkpoint-N` in place) or save the final model in another dtype. A test pins them, so a
# transformers release that renames one fails loudly instead of silently skipping our code.
PRIVATE_TRAINER_METHODS = ("_save_checkpoint", "_get_output_dir", "_save", "_load_from_checkpoint",
                           "_load_optimizer_and_scheduler", "_save_rng_state")


class SafeTrainingMixin:
    """Put before a transformers Trainer class. Why not the Trainer's own saving: it writes `checkpoint-N` in place
    (a kill mid-save leaves a damaged checkpoint that resume picks up) and save_total_limit may delete the
    checkpoint a run resumed from. The guard and the graceful stop use public callbacks; the checkpoint staging
    needs the private methods of `PRIVATE_TRAINER_METHODS`."""

    def __init__(self, *args: Any, resilience: ResilienceArguments | None = None,
                 save_dtype: str | None = None, **kwargs: Any) -> None:
        # A model split as it loaded: the Trainer would refuse to checkpoint its optimizer, so it saves the model and
        # trainer state only and `split_checkpoint` adds the optimizer, scheduler and RNG (see there).
        self._split_model = is_split_model(kwargs.get("model"))
        if self._split_model and kwargs.get("args") is not None:
            kwargs["args"] = copy.copy(kwargs["args"])  # the Trainer's own arguments, not the validated config
            kwargs["args"].save_only_model = True
        super().__init__(*args, **kwargs)
        # fp16 loss scaling and DeepSpeed skip overflowing steps themselves (and hide the gradients from us).
        self.session = RunSession(self.args.output_dir, self.accelerator.unwrap_model(self.model),
                                  self.args.should_save, resilience, save_dtype, self.args.save_total_limit,
                                  guarded=not self.args.fp16 and not self.is_deepspeed_enabled)
        self._loss_finite: torch.Tensor | None = None
        self._writing_checkpoint = False
        # a mixture of experts: its routers' loads, logged with each training log (`log`, the run log callback)
        self.expert_loads = ExpertLoads.attach(self.accelerator.unwrap_model(self.model))
        # a mixture-of-experts classifier (rm, cls): the router loss its classification head drops
        self.router_tap = RouterLossTap.attach(self.accelerator.unwrap_model(self.model))
        self.add_callback(_StopAtStepEnd(self))
        if self.guard is not None:
            self.add_callback(_GuardBeforeStep(self))

    # the session's services, as the callbacks and the run's end read them
    @property
    def guard(self) -> NonfiniteGuard | None:
        return self.session.guard

    @property
    def stop_request(self) -> StopRequest:
        return self.session.stop_request

    @property
    def stopped_by(self) -> str | None:
        return self.session.stopped_by

    @stopped_by.setter
    def stopped_by(self, reason: str | None) -> None:
        self.session.stopped_by = reason

    @property
    def resumed_from(self) -> str | None:
        return self.session.resumed_from

    # ---- the run ------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None, *args: Any, **kwargs: Any):
        self.session.begin(resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None)
        if self.resumed_from and self._nothing_left(self.resumed_from):
            return self._finish_without_training(self.resumed_from)
        if self.resumed_from and isinstance(self.train_dataset, BlockStream):
            self._resume_stream(self.resumed_from)
        for probe in (c for c in self.callback_handler.callbacks if isinstance(c, MemoryProbe)):
            # the frozen models a stage runs beside the trained one (dpo/kto's reference, kd's teacher)
            probe.also_track(getattr(self, "ref_model", None), getattr(self, "teacher", None))
        with self.stop_request.installed():
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def _nothing_left(self, checkpoint: str) -> bool:
        """Whether `checkpoint` is already at max_steps (a run killed while saving its final model). The Trainer
        would train one more step before it checks max_steps; the epoch loop has no such gap."""
        saved = TrainerState.load_from_json(os.path.join(checkpoint, COMPLETE_MARKER))
        return self.args.max_steps > 0 and saved.global_step >= self.args.max_steps

    def _finish_without_training(self, checkpoint: str) -> TrainOutput:
        """The checkpoint's weights and state as the finished run's, so the final save and report follow."""
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, COMPLETE_MARKER))
        self._load_from_checkpoint(checkpoint)
        logger.warning("%s is at step %d of max_steps=%d: nothing is left to train; the final model is saved from it.",
                       checkpoint, self.state.global_step, self.args.max_steps)
        return TrainOutput(self.state.global_step, 0.0, {"train_runtime": 0.0, "trained_steps": 0,
                                                        "epoch": self.state.epoch})

    def _resume_stream(self, checkpoint: str) -> None:
        position = load_position(checkpoint)
        if position is None:
            logger.warning("%s has no stream position (%s): the stream is re-read from its start and the rows "
                           "already trained on are skipped.", checkpoint, STREAM_STATE_FILE)
            return
        self.train_dataset.restore(position)
        # the stream continues where the checkpoint was: nothing to skip (the Trainer's own arguments, a copy of the
        # validated config: train/setup.trainer_arguments)
        self.args.ignore_data_skip = True

    # ---- the non-finite guard ----------------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        if self.guard is not None:
            finite = torch.isfinite(loss.detach()).all()
            self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        return loss

    def check_step(self, model: torch.nn.Module) -> None:
        """Before `optimizer.step()`: a step whose loss (on any rank) or gradients are not finite has its gradients
        dropped, so the optimizer leaves the weights and its state as they were."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2: this rank's shards
        # one fused norm over all gradients (non-finite iff some gradient is), one sync
        finite = not grads or bool(torch.isfinite(_total_norm(grads)))
        finite = finite and (self._loss_finite is None or bool(self._loss_finite))
        self._loss_finite = None
        bad = stop_agreed(not finite, self.args.device)
        if bad:
            model.zero_grad(set_to_none=True)
        self.guard.record(not bad, self.state.global_step + 1)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        loss = self._router_loss_once(loss, outputs, num_items_in_batch)
        if self.router_tap is not None:
            loss = self.router_tap.added_to(loss)
        return (loss, outputs) if return_outputs else loss

    def _router_loss_once(self, loss: torch.Tensor, outputs: Any, num_items_in_batch: Any) -> torch.Tensor:
        """The router loss a mixture of experts adds inside its forward, at `router_aux_loss_coef` x the mean over
        the micro-batches of the step, whatever the processes and accumulation steps.

        Why: when the loss is a share of a sum over the whole step's tokens (`num_items_in_batch`), the Trainer
        neither divides a micro-batch's loss by the accumulation steps nor leaves it per process: it multiplies it
        by the number of processes (whose gradients are averaged). The router loss is a per-micro-batch mean, so N
        processes x K accumulation steps would train (and log) it at N x K x the coefficient."""
        aux = getattr(outputs, "aux_loss", None)
        coef = router_loss_coef(self.accelerator.unwrap_model(self.model)) if aux is not None else 0.0
        if not coef or num_items_in_batch is None or not (self.model_accepts_loss_kwargs or self.compute_loss_func):
            return loss  # the Trainer averages this loss over the accumulation steps itself
        tensor_parallel = getattr(self, "get_tp_size", lambda: 1)()  # (transformers 5.x)
        processes = (self.accelerator.num_processes // tensor_parallel
                     if self.args.average_tokens_across_devices and self.args.n_gpu <= 1 else 1)
        steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        return loss - (processes - 1 / steps) * coef * aux.to(loss.device, loss.dtype)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.guard is not None and self.guard.total and "loss" in logs:
            logs = {**logs, "nonfinite_steps": self.guard.total}
        if self.expert_loads is not None and "loss" in logs:
            logs = {**logs, **self.expert_loads.read()}
        super().log(logs, *args, **kwargs)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return staging_root(run_dir) if self._writing_checkpoint else run_dir

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, written under the staging directory, then renamed into place."""
        run_dir = super()._get_output_dir(trial)
        staged, final = self.session.checkpoint_paths(f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        with self.session.writing(staged):
            self._write_checkpoint(model, trial, staged)
            if self.args.should_save:
                self._complete_checkpoint(run_dir, staged)
        if self.args.should_save:
            self.session.publish_checkpoint(staged, final, [self.state.best_model_checkpoint])
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(self, model: Any, trial: Any, staged: str) -> None:
        """The Trainer's own checkpoint files into `staged` (and a split model's optimizer state)."""
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False
        if self._split_model:
            self.accelerator.wait_for_everyone()
            save_split_state(self, staged)
        self.accelerator.wait_for_everyone()  # every rank's shards are written

    def _complete_checkpoint(self, run_dir: str, staged: str) -> None:
        """What lmforge adds to a staged checkpoint before it is published."""
        best = self.state.best_model_checkpoint
        if best and os.path.dirname(os.path.normpath(best)) == staging_root(run_dir):
            # the Trainer looked for the best checkpoint inside the staging dir: it lives beside it
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            self.state.save_to_json(os.path.join(staged, COMPLETE_MARKER))
        if isinstance(self.train_dataset, BlockStream):
            save_position(self.train_dataset, self.state.global_step * blocks_per_step(self.args), staged)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """A full model's weights come back in the layout it holds them (the Trainer's own resume loads a mixture of
        experts' per-expert files into fused expert weights as "unexpected keys" and goes on with the old
        experts); adapters and DeepSpeed/FSDP engines resume the Trainer's way."""
        plain = not (hasattr(self.model, "peft_config") or self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if not (self._split_model or (plain and model is None)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_saved_weights(self.model, resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not (self._split_model and checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_split_state(self, checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The final model: written beside output_dir, then moved in file by file (each file whole)."""
        target = output_dir or self.args.output_dir
        if _internal_call or os.path.abspath(target) != os.path.abspath(self.args.output_dir):
            return super().save_model(output_dir, _internal_call)
        staged = self.session.final_staging()
        self.accelerator.wait_for_everyone()
        with self.session.writing(staged):
            super().save_model(staged, _internal_call)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.session.publish_final(staged)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The final model in `save_dtype` (its config saying so); checkpoints keep the training precision. The
        saved training arguments never hold a secret (hub_token)."""
        output_dir = output_dir or self.args.output_dir
        dtype = self.session.save_dtype if self.session.is_final(output_dir) else None
        model = self.accelerator.unwrap_model(self.model)
        super()._save(output_dir, saved_state_dict(model, dtype, state_dict))
        if self.args.should_save:
            if self._split_model and needs_cast(model, dtype):
                cast_saved_weights(output_dir, dtype)
            record_dtype(model, output_dir, dtype)
        self._mask_saved_arguments(output_dir)

    def _mask_saved_arguments(self, output_dir: str) -> None:
        secrets = [f.name for f in dataclasses.fields(self.args) if is_secret(f.name) and getattr(self.args, f.name)]
        path = os.path.join(output_dir, TRAINING_ARGS_NAME)
        if secrets and self.args.should_save and os.path.isfile(path):
            safe = copy.copy(self.args)
            for name in secrets:
                setattr(safe, name, MASK)
            torch.save(safe, path)
