"""`lmforge bench GRPO_CONFIG --compare`: a GRPO step of lmforge against a step of TRL's `GRPOTrainer` at equal
settings, in one process, one after the other.

Equal settings: the same model directory, the same prompts (lmforge's encoded prompts, rendered with the chat
template, given to TRL as plain text so both tokenize the same string), `rollout_batch_size` prompts x
`num_generations` completions per step, `max_new_tokens`, sampling (temperature, top-p, top-k), the same stop tokens,
learning rate, clip range, KL coefficient (`beta`), loss type, the same reward functions, and the same updates per
rollout: `ppo_epochs` passes (TRL's `num_iterations`) in mini-batches of `per_device_train_batch_size` completions
(TRL's `steps_per_generation` mini-batches per generation). A "step" is one rollout and its updates: lmforge's
trainer_log.jsonl times it (`rollout_seconds` + `update_seconds`), TRL's is the wall time of its
`steps_per_generation x num_iterations` optimizer steps (a callback on step ends). The first `warmup` steps of each
are not timed.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any

from lmforge.config import load_config
from lmforge.errors import ConfigError


def _config(config: str | None, overrides: list[str], steps: int, warmup: int) -> Any:
    out = tempfile.mkdtemp(prefix="lmforge-bench-grpo-")
    forced = [f"max_steps={warmup + steps}", "save_strategy=no", "report_to=none", "logging_steps=1",
              "eval_strategy=no", "val_size=0", "eval_dataset=null", "sample_prompts=[]", "plot_loss=false",
              "disable_tqdm=true"]
    cfg = load_config(config, [f"output_dir={out}", *overrides, *forced])
    if cfg.finetuning.stage != "grpo":
        raise ConfigError(f"Config error: `lmforge bench --compare` on an online RL config compares GRPO with TRL's "
                          f"GRPOTrainer; this config is 'stage: {cfg.finetuning.stage}'.")
    if not cfg.rl.reward_funcs or cfg.rl.reward_model:
        raise ConfigError("Config error: the GRPO comparison with TRL runs reward functions only (`reward_funcs`), "
                          "the same ones on both sides; remove `reward_model`.")
    return cfg


def _lmforge_steps(cfg: Any, warmup: int) -> dict[str, float]:
    from lmforge.train.rl.recipe import run

    run(cfg)
    log = [json.loads(line) for line in open(os.path.join(cfg.training.output_dir, "trainer_log.jsonl"))]
    timed = [r for r in log if "rollout_seconds" in r][warmup:]
    return {"seconds_per_step": statistics.fmean(r["rollout_seconds"] + r["update_seconds"] for r in timed),
            "rollout_seconds": statistics.fmean(r["rollout_seconds"] for r in timed),
            "completion_length": statistics.fmean(r["completion_length"] for r in timed),
            "reward": statistics.fmean(r["reward"] for r in timed), "steps": len(timed)}


def _trl_steps(cfg: Any, warmup: int, steps: int) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lmforge.data.examples import build_examples
    from lmforge.data.template import stop_token_ids
    from lmforge.model.tokenizer import chat_tokenizer
    from lmforge.train.rl.rewards import reward_function

    r, t, g = cfg.rl, cfg.training, cfg.generation
    tokenizer, _ = chat_tokenizer(cfg)
    prompts = build_examples(cfg.data, tokenizer, t.seed, "prompt").train
    examples = [json.loads(c) for c in prompts["conversation"]]
    texts = tokenizer.batch_decode([list(ids) for ids in prompts["input_ids"]], skip_special_tokens=False)
    # the columns lmforge's reward functions get (`reference`, `messages`), passed by TRL as keyword arguments
    dataset = Dataset.from_dict({"prompt": texts, "reference": [e.get("reference") for e in examples],
                                 "messages": [e["messages"] for e in examples]})
    completions = r.rollout_batch_size * r.num_generations
    if completions % t.per_device_train_batch_size:
        raise ConfigError("Config error: for the comparison, rollout_batch_size x num_generations must be a multiple "
                          "of per_device_train_batch_size (TRL splits a generation into whole mini-batches).")
    per_generation = completions // t.per_device_train_batch_size
    out = tempfile.mkdtemp(prefix="lmforge-bench-trl-")
    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=t.per_device_train_batch_size, gradient_accumulation_steps=1,
        num_generations=r.num_generations, steps_per_generation=per_generation,
        num_iterations=r.ppo_epochs, max_completion_length=g.max_new_tokens, temperature=g.temperature,
        top_p=g.top_p, top_k=g.top_k, repetition_penalty=g.repetition_penalty, learning_rate=t.learning_rate,
        beta=r.kl_coef, epsilon=r.cliprange, epsilon_high=r.epsilon_high or r.cliprange, loss_type=r.loss_type,
        scale_rewards=r.scale_rewards, max_steps=(warmup + steps) * per_generation * r.ppo_epochs,
        logging_steps=1, save_strategy="no", report_to="none", seed=t.seed, bf16=bool(t.bf16),
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        generation_kwargs={"eos_token_id": stop_token_ids(tokenizer)})
    rewards = [reward_function(spec.strip(), r) for spec in r.reward_funcs.split(",") if spec.strip()]
    trainer = GRPOTrainer(model=cfg.model.model_name_or_path, reward_funcs=rewards, args=args,
                          train_dataset=dataset, processing_class=tokenizer)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    clock = StepTimes()
    trainer.add_callback(clock)
    started = time.perf_counter()
    trainer.train()
    ends = [started] + clock.ends
    cycle = per_generation * r.ppo_epochs  # TRL optimizer steps per rollout
    per_rollout = [ends[(i + 1) * cycle] - ends[i * cycle] for i in range(len(clock.ends) // cycle)][warmup:]
    # TRL logs a generation's metrics once, at the first log after it: one entry per rollout
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    reward = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"seconds_per_step": statistics.fmean(per_rollout), "steps": len(per_rollout),
            "completion_length": statistics.fmean(lengths[warmup:]) if lengths[warmup:] else float("nan"),
            "reward": statistics.fmean(reward[warmup:]) if reward[warmup:] else float("nan")}


def compare_grpo(config: str | None, overrides: list[str], steps: int, warmup: int) -> dict[str, Any]:
    cfg = _config(config, overrides, steps, warmup)
    ours = _lmforge_steps(cfg, warmup)
    trl = _trl_steps(_config(config, overrides, steps, warmup), warmup, steps)
    return {"lmforge": ours, "trl": trl, "speedup": trl["seconds_per_step"] / ours["seconds_per_step"],
            "settings": {"prompts_per_step": cfg.rl.rollout_batch_size, "num_generations": cfg.rl.num_generations,
                         "max_new_tokens": cfg.generation.max_new_tokens, "ppo_epochs": cfg.rl.ppo_epochs,
                         "per_device_train_batch_size": cfg.training.per_device_train_batch_size,
                         "loss_type": cfg.rl.loss_type, "kl_coef": cfg.rl.kl_coef}}


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"lmforge bench --compare (GRPO): {s['prompts_per_step']} prompts x {s['num_generations']} completions "
             f"per step, max_new_tokens {s['max_new_tokens']}, {s['ppo_epochs']} pass(es) in mini-batches of "
             f"{s['per_device_train_batch_size']}, loss_type {s['loss_type']}, kl_coef {s['kl_coef']}",
             f"  {'trainer':<22}{'s/step':>10}{'completion len':>16}{'reward':>10}{'timed steps':>13}"]
    for name, label in (("lmforge", "lmforge"), ("trl", "TRL GRPOTrainer")):
        r = result[name]
        lines.append(f"  {label:<22}{r['seconds_per_step']:>10.3f}{r['completion_length']:>16.1f}"
                     f"{r['reward']:>10.3f}{r['steps']:>13}")
    lines.append(f"  TRL / lmforge seconds per step: x{result['speedup']:.2f}")
    return "\n".join(lines)
