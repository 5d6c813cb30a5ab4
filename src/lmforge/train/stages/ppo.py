"""Stage `ppo`: PPO on prompts, rewarded by a reward model and/or reward functions (policy + value head, KL penalty
to the reference, GAE, clipped policy and value losses; see `online_rl.py`)."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.train.stages.online_rl import run_online_rl


def run(cfg: RunConfig) -> dict:
    return run_online_rl(cfg, "ppo")
