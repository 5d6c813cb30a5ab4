"""Training stages; each stage is one recipe function taking a RunConfig."""

from collections.abc import Callable

from lmforge.config.schema import RunConfig


def stage_runner(stage: str) -> Callable[[RunConfig], dict]:
    """The recipe for a stage (imported lazily: stages pull in heavy libraries)."""
    if stage == "pt":
        from lmforge.train.pt import run_pt

        return run_pt
    if stage == "sft":
        from lmforge.train.sft import run_sft

        return run_sft
    raise ValueError(f"unknown stage {stage!r}")  # unreachable: the config's Literal type rejects it first
