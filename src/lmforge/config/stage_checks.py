"""The rules a stage owns: each stage's registry entry (`config/stages.py`) lists its checks, and validation runs those
of the run's stage. Rules that cross stages (data, model, parallelism, LoRA keys) stay in `config/validate.py`.

A check takes the validated-so-far config and raises a ConfigError (through `fail`) naming the key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any, NoReturn

from lmforge.config.launch import process_count
from lmforge.device import installed
from lmforge.errors import ConfigError

# The config is typed loosely here: the schema imports the stage registry, which imports these checks.
RunConfig = Any
Check = Callable[[RunConfig], None]


def fail(cfg: Any, message: str) -> NoReturn:
    """A ConfigError naming the config's source (file or command line)."""
    raise ConfigError(f"Config error ({cfg.source}): {message}")


# ---- pt, sft, kd ----------------------------------------------------------------------------------------------------

def raw_text_only(cfg: RunConfig) -> None:
    """pt trains on packed blocks of raw text: the conversation keys do not apply."""
    sft_only = [k for k in ("template", "packing", "mask_history", "train_on_prompt") if getattr(cfg.data, k)]
    if sft_only:
        hint = " (pretraining blocks are already packed; 'neat_packing' masks across documents)" \
            if sft_only[0] == "packing" else ""
        fail(cfg, f"'{sft_only[0]}' applies to 'stage: sft', not 'stage: pt'{hint}.")


def conversations_read_whole(cfg: RunConfig) -> None:
    m, d = cfg.model, cfg.data
    if d.streaming:
        fail(cfg, "'streaming: true' is supported for 'stage: pt' only; SFT datasets are read whole.")
    if m.from_scratch and m.train_tokenizer:
        fail(cfg, "'stage: sft' starts from a trained model; train a tokenizer with 'stage: pt' first.")


def distillation(cfg: RunConfig) -> None:
    d, f = cfg.data, cfg.finetuning
    if not 0 <= f.kd_alpha <= 1 or not 0 <= f.kd_beta <= 1 or f.kd_temperature <= 0:
        fail(cfg, "'kd_alpha' and 'kd_beta' must be in [0, 1] and 'kd_temperature' positive.")
    if not f.teacher_model:
        fail(cfg, "'stage: kd' needs 'teacher_model': the directory (or hub id) of the model to learn from.")
    if f.kd_on_policy and (d.packing or d.neat_packing):
        fail(cfg, "'kd_on_policy' samples completions of each example's prompt: it does not work with "
             "'packing' (rows of several examples); set `packing: false`.")
    if not 0 <= f.lmbda <= 1:
        fail(cfg, f"'lmbda' must be in [0, 1], got {f.lmbda}.")


# ---- stages on whole examples from a trained model: rm, dpo, kto, ppo, grpo -----------------------------------------

def whole_examples(cfg: RunConfig) -> None:
    d, f = cfg.data, cfg.finetuning
    for key in ("packing", "neat_packing", "mask_history", "train_on_prompt", "streaming"):
        if getattr(d, key, False):
            fail(cfg, f"'{key}' applies to 'stage: sft' (or pt), not 'stage: {f.stage}': this stage trains "
                 "whole examples, one per row.")
    if cfg.model.from_scratch:
        fail(cfg, f"'stage: {f.stage}' starts from a trained model (usually the output of 'stage: sft'), not "
             "'from_scratch'.")
    if not 0 <= f.dpo_label_smoothing < 0.5:
        fail(cfg, f"'dpo_label_smoothing' must be in [0, 0.5), got {f.dpo_label_smoothing}.")
    if f.dpo_label_smoothing and f.pref_loss != "sigmoid":
        fail(cfg, "'dpo_label_smoothing' applies to 'pref_loss: sigmoid' only.")
    if f.pref_beta <= 0:
        fail(cfg, f"'pref_beta' must be positive, got {f.pref_beta}.")
    if min(f.kto_chosen_weight, f.kto_rejected_weight) < 0 or f.pref_ftx < 0:
        fail(cfg, "'kto_chosen_weight', 'kto_rejected_weight' and 'pref_ftx' must not be negative.")


def step_labels(cfg: RunConfig) -> None:
    """prm: each step needs a separator to carry its label."""
    if not cfg.data.step_separator:
        fail(cfg, "'step_separator' is empty: each step's label sits on the separator after it (e.g. \"\\n\" or a "
             "special token such as <extra_0>). In YAML quote it when it is a character YAML reads (| > # :).")


def reference_free_losses(cfg: RunConfig) -> None:
    f = cfg.finetuning
    if f.pref_loss in ("orpo", "simpo") and f.ref_model:
        fail(cfg, f"'pref_loss: {f.pref_loss}' uses no reference model; drop 'ref_model'.")


# ---- ppo, grpo -----------------------------------------------------------------------------------------------------

def ppo_rollouts(cfg: RunConfig) -> None:
    online_rl(cfg, group=1)


def grpo_rollouts(cfg: RunConfig) -> None:
    online_rl(cfg, group=cfg.rl.num_generations, grouped=True)


def online_dpo_pairs(cfg: RunConfig) -> None:
    online_rl(cfg, group=2)
    f, r = cfg.finetuning, cfg.rl
    if f.pref_loss not in ("sigmoid", "ipo"):
        fail(cfg, f"'stage: online_dpo' takes 'pref_loss: sigmoid' or 'ipo' (TRL's online DPO losses), not "
             f"'{f.pref_loss}'.")
    if f.pref_beta <= 0:
        fail(cfg, f"'pref_beta' must be positive, got {f.pref_beta}.")
    if cfg.training.per_device_train_batch_size % 2:
        fail(cfg, f"'per_device_train_batch_size' must be even with 'stage: online_dpo' (each process trains whole "
             f"pairs), got {cfg.training.per_device_train_batch_size}.")
    if r.judge_url is not None:
        if not str(r.judge_url).startswith(("http://", "https://")):
            fail(cfg, f"'judge_url' must be an http(s) URL (an OpenAI-compatible base, e.g. "
                 f"http://localhost:8000/v1), got {r.judge_url!r}.")
        if not r.judge_model:
            fail(cfg, "'judge_url' needs 'judge_model' (the model name sent with each request).")
        for field in ("prompt", "a", "b"):
            if "{" + field + "}" not in r.judge_template:
                fail(cfg, f"'judge_template' must contain {{{field}}} (fields: rubric, prompt, a, b).")


def online_rl(cfg: RunConfig, group: int, grouped: bool = False) -> None:
    """What ppo and grpo need: a reward, max_steps, sizes that split over the processes; `group`: completions
    sampled per prompt (`grouped`: GRPO, which compares them)."""
    r, t, stage = cfg.rl, cfg.training, cfg.finetuning.stage
    if not (r.reward_model or r.reward_funcs or r.reward_url or (stage == "online_dpo" and r.judge_url)):
        fail(cfg, f"'stage: {stage}' needs a reward: set 'reward_model' (a 'stage: rm' or 'stage: prm' output "
             "directory), 'reward_funcs' (built-ins such as math_verify, or module:function) and/or 'reward_url'"
             + (" (or 'judge_url')." if stage == "online_dpo" else "."))
    reward_settings(cfg)
    if t.max_steps is None or t.max_steps <= 0:
        fail(cfg, f"'stage: {stage}' needs 'max_steps' (each step is one rollout and its update).")
    for key in ("rollout_batch_size", "num_generations", "ppo_epochs"):
        if getattr(r, key) < 1:
            fail(cfg, f"'{key}' must be at least 1, got {getattr(r, key)}.")
    if grouped and r.num_generations < 2 and r.advantage_estimator != "reinforce_plus_plus":
        fail(cfg, "'num_generations' must be at least 2: GRPO compares completions of the same prompt (only "
             "'advantage_estimator: reinforce_plus_plus' has no group baseline).")
    if r.dynamic_sampling and r.max_sampling_rounds < 1:
        fail(cfg, f"'max_sampling_rounds' must be at least 1, got {r.max_sampling_rounds}.")
    if r.dynamic_sampling and cfg.parallelism.data_shard_size > 1:
        fail(cfg, "'dynamic_sampling' does not run with 'data_shard_size' yet: the rows a step keeps vary, and "
             "FSDP2 needs every process in every mini-batch.")
    if r.overlong_buffer < 0 or r.overlong_buffer >= cfg.generation.max_new_tokens:
        fail(cfg, f"'overlong_buffer' ({r.overlong_buffer}) must be between 0 and 'max_new_tokens' "
             f"({cfg.generation.max_new_tokens}): the penalty starts that many tokens before the limit.")
    if r.kl_coef < 0 or not 0 < r.cliprange < 1:
        fail(cfg, "'kl_coef' must not be negative and 'cliprange' must be in (0, 1).")
    if r.env_funcs and r.max_turns < 1:
        fail(cfg, f"'max_turns' must be at least 1, got {r.max_turns}.")
    if r.epsilon_high is not None and r.epsilon_high <= 0:
        fail(cfg, f"'epsilon_high' must be positive (the upper clip range, e.g. 0.28), got {r.epsilon_high}.")
    for key in ("eval_strategy", "save_strategy", "logging_strategy"):
        if getattr(getattr(t, key), "value", getattr(t, key)) == "epoch":
            fail(cfg, f"'{key}: epoch' has no meaning in 'stage: {stage}' (a step is a rollout, there are no "
                 "epochs): use 'steps'.")
    if r.rollout_backend == "vllm":
        vllm_rollouts(cfg)
    if cfg.parallelism.data_shard_size > 1:
        minibatch = cfg.training.per_device_train_batch_size * process_count(cfg.launch)
        rows = r.rollout_batch_size * group
        if rows % minibatch:
            fail(cfg, f"with 'data_shard_size', every process must take part in every mini-batch (FSDP2 gathers "
                 f"the weights collectively): the {rows} completions of a step must be a multiple of "
                 f"'per_device_train_batch_size' x processes ({minibatch}).")
        if r.env_funcs:
            fail(cfg, "'env_funcs' (multi-turn tool use) does not run with 'data_shard_size' yet: the processes' "
                 "conversations end after different numbers of turns.")
    processes = process_count(cfg.launch)
    if r.rollout_batch_size % processes:
        fail(cfg, f"'rollout_batch_size' ({r.rollout_batch_size}) must be a multiple of the number of processes "
             f"({processes}): each process samples an equal share of a step's prompts.")


REWARD_BUILTINS = ("math_verify", "code_exec", "format", "exact_match", "contains_reference", "token_f1")


def reward_settings(cfg: RunConfig) -> None:
    """Reward names, weights and limits, checked before any model loads."""
    r = cfg.rl
    specs = [s.strip() for s in (r.reward_funcs or "").split(",") if s.strip()]
    for spec in specs:
        if ":" not in spec and spec not in REWARD_BUILTINS:
            close = difflib.get_close_matches(spec, REWARD_BUILTINS, n=1)
            fail(cfg, f"'reward_funcs': '{spec}' is not a built-in reward ({', '.join(REWARD_BUILTINS)})"
                 + (f"; did you mean '{close[0]}'?" if close else "") + " Your own: 'module:function' or "
                 "'path/to/file.py:function'.")
    if r.reward_weights is not None:
        try:
            weights = [float(w) for w in str(r.reward_weights).split(",")]
        except ValueError:
            fail(cfg, f"'reward_weights' must be comma-separated numbers, got {r.reward_weights!r}.")
        if len(weights) != len(specs):
            fail(cfg, f"'reward_weights' has {len(weights)} weights for the {len(specs)} 'reward_funcs'.")
    if r.reward_url is not None and not str(r.reward_url).startswith(("http://", "https://")):
        fail(cfg, f"'reward_url' must be an http(s) address, got {r.reward_url!r}.")
    for key in ("reward_workers", "math_verify_timeout", "code_exec_timeout", "code_exec_memory_mb",
                "reward_url_timeout"):
        if getattr(r, key) <= 0:
            fail(cfg, f"'{key}' must be positive, got {getattr(r, key)}.")
    if r.reward_url_retries < 0:
        fail(cfg, f"'reward_url_retries' must not be negative, got {r.reward_url_retries}.")
    if "format" in specs and r.format_pattern is None and not cfg.data.enable_thinking:
        fail(cfg, "the 'format' reward's default layout wants a <think>...</think> block, but 'enable_thinking: "
             "false' has the template close the reasoning before the completion starts (Qwen3 writes an empty "
             "block): set 'format_pattern' to the layout you want, or drop 'format'.")
    if r.format_pattern is not None:
        try:
            re.compile(r.format_pattern)
        except re.error as err:
            fail(cfg, f"'format_pattern' is not a regular expression: {err}.")


def vllm_rollouts(cfg: RunConfig) -> None:
    """`rollout_backend: vllm`: vLLM installed, a CUDA GPU where it runs in the training processes (and for the NCCL
    weight push to a server), and the features its rollouts do not cover refused by name."""
    r = cfg.rl
    if not installed("vllm"):
        fail(cfg, "'rollout_backend: vllm' needs vLLM installed (`pip install vllm`, CUDA GPUs only); "
             "'rollout_backend: hf' samples with the training model on any device.")
    from lmforge.device import cuda_available

    if not cuda_available():
        where = ("runs vLLM inside the training processes" if r.vllm_mode == "colocate"
                 else "pushes the weights to the rollout server over NCCL")
        fail(cfg, f"'vllm_mode: {r.vllm_mode}' {where} and needs CUDA GPUs, and this machine has none; "
             "use 'rollout_backend: hf'.")
    if r.env_funcs:
        fail(cfg, "'env_funcs' (multi-turn tool use) rolls out with 'rollout_backend: hf' only: each turn is "
             "rendered with the chat template between model turns.")
    if cfg.finetuning.use_dora:
        fail(cfg, "'use_dora' with 'rollout_backend: vllm': a DoRA adapter's merged weights are not the base plus "
             "its update, so they are not synced to vLLM; use plain LoRA or 'rollout_backend: hf'.")
    if not 0 < r.vllm_gpu_memory_utilization <= 1:
        fail(cfg, f"'vllm_gpu_memory_utilization' must be in (0, 1], got {r.vllm_gpu_memory_utilization}.")
    if not r.vllm_server_base_url.startswith(("http://", "https://")):
        fail(cfg, f"'vllm_server_base_url' must be an http(s) URL, got '{r.vllm_server_base_url}'.")
