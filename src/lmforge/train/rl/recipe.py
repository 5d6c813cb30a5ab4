"""The recipe of the online RL stages `ppo`, `grpo` and `online_dpo`: prompts, policy (and reference), rewards, the
loop, the final report. The stage names its algorithm (`algorithms.py`); everything else is shared."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.train.rl.algorithms import algorithm_of
from lmforge.train.rl.loop import OnlineRL
from lmforge.train.rl.rewards import Rewarder
from lmforge.train.runtime.checkpoint import resolve_resume
from lmforge.train.runtime.session import join_sample_generation, report, save_run_config
from lmforge.train.runtime.split_checkpoint import is_split_model
from lmforge.train.runtime.tracking import finish_trackers, log_samples


def run(cfg: RunConfig) -> dict:
    from transformers import set_seed

    from lmforge.model.parallel import load_kwargs, run_layout
    from lmforge.model.reference import reference_model
    from lmforge.train.shared_setup import policy_model, prepare_chat_stage

    algorithm = algorithm_of(cfg)
    resume = resolve_resume(cfg.training.output_dir, cfg.training.resume_from_checkpoint)
    stage = prepare_chat_stage(cfg, resume)
    policy = policy_model(cfg, stage)
    split = load_kwargs(run_layout(cfg)) if is_split_model(policy) else None
    ref = reference_model(cfg, policy, stage.tokenizer, split) if algorithm.needs_reference else None
    rewarder = Rewarder(cfg.rl.reward_funcs, cfg.rl.reward_model, device=cfg.training.device, rl=cfg.rl)
    set_seed(cfg.training.seed)
    loop = OnlineRL(cfg, stage, policy, ref, rewarder, algorithm)
    if loop.main_process:
        save_run_config(cfg)
    try:
        metrics = loop.train(resume)
    finally:
        rewarder.close()
    if loop.main_process:
        if not loop.stopped_by:
            samples = report(cfg, policy, stage.tokenizer, chat=True, stop_ids=stage.stop_ids)
            if samples:
                log_samples(loop.trackers.callbacks, loop.step, samples)
        finish_trackers(loop.trackers.callbacks)
    elif not loop.stopped_by:
        join_sample_generation(cfg, policy, stage.tokenizer, True, stage.stop_ids)
    return {**metrics, "stopped_at_step": loop.step} if loop.stopped_by else metrics
