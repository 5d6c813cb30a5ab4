"""Training stages: one recipe module per stage, found through the stage registry (config/stages.py)."""

from collections.abc import Callable

from lmforge.config.schema import RunConfig
from lmforge.config.stages import STAGES


def stage_runner(stage: str) -> Callable[[RunConfig], dict]:
    """How a registered stage runs (imported lazily: stages pull in heavy libraries): its recipe's own `run(cfg)`
    (a loop of its own), or for a stage built on a Trainer the one runner they share (train/run.py)."""
    import functools
    import importlib

    recipe = importlib.import_module(STAGES[stage].recipe)
    if hasattr(recipe, "run"):
        return recipe.run
    from lmforge.train.run import run_trainer_stage

    return functools.partial(run_trainer_stage, recipe=recipe)


def stage_trainer_builder(stage: str) -> Callable | None:
    """`build_trainer(cfg, resume)` of a stage built on a transformers Trainer (None for a loop of its own)."""
    import importlib

    spec = STAGES[stage]
    return getattr(importlib.import_module(spec.recipe), "build_trainer", None) if spec.trainer else None
