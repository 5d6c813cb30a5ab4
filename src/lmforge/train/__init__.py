"""Training stages: one recipe module per stage, found through the stage registry (config/stages.py)."""

from collections.abc import Callable

from lmforge.config.schema import RunConfig
from lmforge.config.stages import STAGES


def stage_runner(stage: str) -> Callable[[RunConfig], dict]:
    """The recipe of a registered stage (imported lazily: stages pull in heavy libraries)."""
    import importlib

    return importlib.import_module(STAGES[stage].recipe).run


def stage_trainer_builder(stage: str) -> Callable | None:
    """`build_trainer(cfg, resume)` of a stage built on a transformers Trainer (None for a loop of its own)."""
    import importlib

    spec = STAGES[stage]
    return getattr(importlib.import_module(spec.recipe), "build_trainer", None) if spec.trainer else None
