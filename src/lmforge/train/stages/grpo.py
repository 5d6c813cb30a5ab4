"""Stage `grpo`: group-relative policy optimisation on prompts: `num_generations` completions per prompt, each
advantaged by its reward against its group's mean and spread (see `online_rl.py`)."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.train.stages.online_rl import run_online_rl


def run(cfg: RunConfig) -> dict:
    return run_online_rl(cfg, "grpo")
