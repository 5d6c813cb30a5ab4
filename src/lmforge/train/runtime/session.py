"""One training run's services, defined once for both engines (the transformers Trainer, through the thin
`SafeTrainingMixin`, and the PPO/GRPO loop of `train/rl/`): where the run resumes from, the leftovers it clears,
checkpoints staged and published whole and rotated, the final model staged and moved in, the dtype it is saved in
(and the cast), the non-finite guard and the graceful stop, the saved run config, and the end-of-run report.

An engine says only "save a checkpoint of this step here" and "save the final model here": it writes its own state
into the directory the session hands it (the Trainer its files, the RL loop its policy, value head and optimizer
state), and the session makes that directory appear complete or not at all (torchtitan's checkpointer and loop split
the work the same way). It takes the model, the run's config and whether this process writes; never a trainer type.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import yaml

from lmforge.config.resilience import ResilienceArguments
from lmforge.config.schema import RunConfig
from lmforge.config.secrets import masked
from lmforge.jsonl import atomic_open
from lmforge.model.precision import DTYPES, cast_state_dict, config_dtype, record_saved_dtype
from lmforge.runlog import read_log
from lmforge.train.runtime.checkpoint import (
    clear_leftovers,
    final_staging,
    publish,
    replace_files,
    rotate,
    staged_write,
    staging_root,
)
from lmforge.train.runtime.guard import NonfiniteGuard
from lmforge.train.runtime.output_dir import CONFIG_FILE
from lmforge.train.runtime.plots import EXPERT_LOAD_CURVES, plot_curves, stage_curves
from lmforge.train.runtime.signals import StopRequest
from lmforge.train.runtime.split_checkpoint import is_split_model
from lmforge.train.samples import generate_samples, write_samples

logger = logging.getLogger(__name__)


def final_dtype(model: torch.nn.Module, requested: str | None) -> torch.dtype | None:
    """The dtype the final model is saved in: `save_dtype` when set, else the checkpoint's own (float32 master
    weights of a bf16 checkpoint are saved as bf16); None for a LoRA adapter, saved as it trained. Read before
    training: every save rewrites the config's dtype."""
    if hasattr(model, "peft_config"):
        return None
    return DTYPES.get(requested or "auto") or config_dtype(model)


def needs_cast(model: torch.nn.Module, dtype: torch.dtype | None) -> bool:
    return dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point())


def tied_duplicates(model: torch.nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (a tied output layer: `lm_head.weight` is the input
    embedding). transformers saves such a weight once; a state dict passed to it explicitly (a cast, the gathered
    weights of a model split over processes) must leave them out itself."""
    first: dict[int, str] = {}
    duplicates = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            duplicates.add(name)
        else:
            first[id(param)] = name
    return duplicates


def saved_state_dict(model: torch.nn.Module, dtype: torch.dtype | None,
                     state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """What to save of `model` in `dtype`: its (or the given) state dict, cast where needed and with each tied weight
    once; None where the model saves itself as it is."""
    if not needs_cast(model, dtype) and state_dict is None:
        return None
    state = state_dict if state_dict is not None else model.state_dict()
    if needs_cast(model, dtype):
        state = cast_state_dict(state, dtype)
    duplicates = tied_duplicates(model)
    return {name: tensor for name, tensor in state.items() if name not in duplicates}


def record_dtype(model: torch.nn.Module, directory: str, dtype: torch.dtype | None) -> None:
    """The saved config says the dtype the weights were cast to."""
    if needs_cast(model, dtype):
        record_saved_dtype(model, directory, dtype)


class RunSession:
    """The services of one run in `output_dir`. `writes`: this process writes logs, checkpoints and the final model
    (the first process; the others wait for it)."""

    def __init__(self, output_dir: str, model: torch.nn.Module, writes: bool,
                 resilience: ResilienceArguments | None = None, save_dtype: str | None = None,
                 save_total_limit: int | None = None, guarded: bool = True) -> None:
        self.output_dir, self.writes, self.save_total_limit = output_dir, writes, save_total_limit
        self.save_dtype = final_dtype(model, save_dtype)
        resilience = resilience or ResilienceArguments()
        # `guarded` False: an engine that skips overflowing steps itself (fp16 loss scaling, DeepSpeed)
        on = guarded and resilience.skip_nonfinite_steps
        self.guard = NonfiniteGuard(resilience.max_nonfinite_steps) if on else None
        self.stop_request = StopRequest()
        self.stopped_by: str | None = None
        self.resumed_from: str | None = None

    # ---- the start ------------------------------------------------------------------------------------------
    def begin(self, resume: str | None) -> None:
        """A run (re)starts: what an interrupted one left half-written goes."""
        self.resumed_from = resume
        if self.writes:
            clear_leftovers(self.output_dir)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint_paths(self, name: str) -> tuple[str, str]:
        """(where checkpoint `name` is written, where it is published)."""
        return os.path.join(staging_root(self.output_dir), name), os.path.join(self.output_dir, name)

    @contextmanager
    def writing(self, staged: str) -> Iterator[None]:
        """Around everything written into `staged`: a full disk removes it and says so (the published checkpoints
        stay as they were)."""
        with staged_write(staged, self.output_dir):
            yield

    def publish_checkpoint(self, staged: str, final: str, protected: list[str | None] = ()) -> None:
        """A fully written checkpoint appears under its name (whole or not at all); older ones beyond
        `save_total_limit` go, never the one this run resumed from nor those `protected`."""
        with self.writing(staged):
            publish(staged, final)
        rotate(self.output_dir, self.save_total_limit, [self.resumed_from, final, *protected])

    # ---- the final model ------------------------------------------------------------------------------------
    def final_staging(self) -> str:
        """A fresh directory beside output_dir for the final model (by the writing process)."""
        staged = final_staging(self.output_dir)
        if self.writes:
            shutil.rmtree(staged, ignore_errors=True)
        return staged

    def publish_final(self, staged: str) -> None:
        """The final model's files moved into output_dir, each replacing its namesake whole."""
        with self.writing(staged):
            replace_files(staged, self.output_dir)

    def is_final(self, directory: str) -> bool:
        return os.path.abspath(directory) == os.path.abspath(final_staging(self.output_dir))


# ---- the run's record and report ---------------------------------------------------------------------------------

def save_run_config(cfg: RunConfig) -> None:
    """The run's config as it was given (secrets masked) beside its outputs."""
    with atomic_open(os.path.join(cfg.training.output_dir, CONFIG_FILE)) as fh:
        yaml.safe_dump(masked(cfg.raw), fh, sort_keys=False, allow_unicode=True)


def report(cfg: RunConfig, model: Any, tokenizer: Any, chat: bool = False,
           stop_ids: list[int] | None = None) -> list[dict]:
    """After training (first process): plot the stage's curves, generate the sample prompts; returns the samples."""
    args = cfg.training
    if cfg.finetuning.plot_loss:
        plot_curves(args.output_dir, read_log(args.output_dir),
                    (*stage_curves(cfg.finetuning.stage), *EXPERT_LOAD_CURVES))
    samples = []
    if cfg.generation.sample_prompts:
        samples = generate_samples(model, tokenizer, cfg.generation, args.seed, chat, stop_ids)
        path = write_samples(args.output_dir, samples)
        for s in samples:
            logger.info("Sample ▸ %s ▸ %s", s["prompt"], s["completion"])
        logger.info("Samples written to %s", path)
    logger.info("Model and tokenizer saved to %s", args.output_dir)
    return samples


def join_sample_generation(cfg: RunConfig, model: Any, tokenizer: Any, chat: bool,
                           stop_ids: list[int] | None) -> None:
    """On the other processes while the first writes its report: a model split over the processes generates the
    samples with all of them (each holds a part of every layer), the same seeds giving the same tokens."""
    if is_split_model(model) and cfg.generation.sample_prompts:
        generate_samples(model, tokenizer, cfg.generation, cfg.training.seed, chat, stop_ids)
