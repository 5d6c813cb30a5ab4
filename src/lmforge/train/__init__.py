"""Training stages; each stage is one recipe function taking a RunConfig."""

from collections.abc import Callable

from lmforge.config.schema import RunConfig


def stage_runner(stage: str) -> Callable[[RunConfig], dict]:
    """The recipe for a stage (imported lazily: stages pull in heavy libraries)."""
    import importlib

    from lmforge.config.finetuning import STAGES

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")  # unreachable: the config's Literal type rejects it first
    return getattr(importlib.import_module(f"lmforge.train.{stage}"), f"run_{stage}")
