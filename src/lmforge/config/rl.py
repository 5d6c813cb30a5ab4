"""Online RL stages (ppo, grpo): where rewards come from, rollouts, and the policy-gradient settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option
from lmforge.config.synth import DEFAULT_JUDGE_TEMPLATE, DEFAULT_RUBRIC

ONLINE_STAGES = ("ppo", "grpo", "online_dpo")  # the stages that sample from the policy as they train


@dataclass
class RLArguments:
    env_funcs: str | None = option(
        None, "With `grpo`: multi-turn tool use. A Python function `module:function` (or `path/to/file.py:function`) "
        "called as `f(tool_calls, messages, **columns) -> list of tool messages` (or strings) with the calls a model "
        "turn wrote (`<tool_call>` JSON, OpenAI's format) and the conversation so far; its results are rendered "
        "with the chat template and the model continues, until it answers without a call or `max_turns`. Only the "
        "model's tokens carry loss; reward functions also get `conversation` (the exchange after the prompt). "
        "Prompts may carry `tools`.", stages=("grpo",))
    max_turns: int = option(3, "With `env_funcs`: the most model turns per completion.", stages=("grpo",))
    reward_model: str | None = option(
        None, "With `ppo`/`grpo`: a reward model directory saved by `stage: rm` (or any one-output "
        "sequence-classification model): each prompt + completion is rendered with its chat template and scored; "
        "or a process reward model saved by `stage: prm`, which scores each step (`prm_reduction`).",
        stages=ONLINE_STAGES)
    prm_reduction: Literal["min", "last", "mean", "prod"] = option(
        "min", "With a process reward model (`stage: prm`) as `reward_model`: how a completion's step scores (each "
        "step's probability of being correct; the completion is split at the separator the PRM was trained with) "
        "become its reward: the weakest step (`min`), the last step, their mean or their product.",
        stages=ONLINE_STAGES)
    missing_eos_penalty: float | None = option(
        None, "With `ppo`/`grpo`/`online_dpo`: subtracted from the reward of a completion cut at `max_new_tokens` "
        "without ending its turn (TRL's `missing_eos_penalty`): a nudge towards finishing. Logged as "
        "`reward/missing_eos`.", stages=ONLINE_STAGES)
    judge_url: str | None = option(
        None, "With `online_dpo`: an OpenAI-compatible endpoint (base URL, e.g. http://host:8000/v1) whose model "
        "judges each pair: it is asked `judge_template` with the prompt and the two completions (in a random "
        "order, against position bias) and answers A or B; the preferred completion is chosen. Instead of, or "
        "besides, the rewards (a pair the judge cannot decide is not trained; see `tied_pairs`).",
        stages=("online_dpo",))
    judge_model: str | None = option(None, "With `judge_url`: the model name sent with each request.",
                                     stages=("online_dpo",))
    judge_api_key_env: str = option(
        "LMFORGE_JUDGE_API_KEY", "With `judge_url`: the environment variable holding its API key (if it needs one).",
        stages=("online_dpo",))
    judge_rubric: str = option(
        DEFAULT_RUBRIC, "With `judge_url`: the criterion the judge compares by.", stages=("online_dpo",))
    judge_template: str = option(
        DEFAULT_JUDGE_TEMPLATE, "With `judge_url`: the request (fields: rubric, prompt, a, b), as `lmforge synth`'s "
        "judge task asks it.", stages=("online_dpo",))
    reward_funcs: str | None = option(
        None, "With `ppo`/`grpo`: comma-separated reward functions: built-ins by name (`math_verify`: the final "
        "answer checked symbolically against `reference` by math-verify; `code_exec`: the completion's Python run "
        "against the row's tests in a sandbox, scoring the share passed; `format`: the completion follows "
        "`format_pattern`; `exact_match`, `contains_reference`, `token_f1`), or your own `module:function` / "
        "`path/to/file.py:function`, called as TRL calls them: `f(prompts, completions, **columns) -> list[float]` "
        "(columns: `reference`, `messages` and the dataset's other columns, e.g. `tests`). Summed with "
        "`reward_weights`, with the reward model's and `reward_url`'s scores.", stages=ONLINE_STAGES)
    reward_weights: str | None = option(
        None, "With `reward_funcs`: comma-separated weights, one per function in the same order (default all 1; "
        "e.g. `1.0,0.2` for `math_verify,format`).", stages=ONLINE_STAGES)
    reward_url: str | None = option(
        None, "With `ppo`/`grpo`: a reward server: each batch is POSTed as JSON (`prompts`, `completions`, "
        "`references`, `messages` and the dataset's other columns, one entry per completion) and answered with "
        "`{\"rewards\": [...]}`. Added to the other rewards.", stages=ONLINE_STAGES)
    reward_url_timeout: float = option(
        60.0, "With `reward_url`: seconds to wait for each answer.", stages=ONLINE_STAGES)
    reward_url_retries: int = option(
        3, "With `reward_url`: retries after a connection error, a timeout or a 5xx answer (with growing pauses) "
        "before the run stops.", stages=ONLINE_STAGES)
    reward_workers: int = option(
        4, "Workers that score completions concurrently: the reward functions run side by side, and "
        "`math_verify` and `code_exec` check this many completions at once, each in a process of its own. Each "
        "function's time is logged (`reward_seconds/<name>`).", stages=ONLINE_STAGES)
    math_verify_timeout: int = option(
        5, "With the `math_verify` reward: seconds math-verify may spend parsing or comparing one answer (longer: "
        "scored 0).", stages=ONLINE_STAGES)
    code_exec_timeout: float = option(
        10.0, "With the `code_exec` reward: wall-clock (and CPU) seconds for one program's run; then its process "
        "group is killed and the tests it had not passed fail.", stages=ONLINE_STAGES)
    code_exec_memory_mb: int = option(
        1024, "With the `code_exec` reward: the memory (address space) one program may take.", stages=ONLINE_STAGES)
    format_pattern: str | None = option(
        None, "With the `format` reward: a regular expression the whole completion must match (DOTALL) for 1.0. "
        "Default: a `<think>...</think>` block, then a non-empty answer. When the prompt already opened "
        "`<think>` (templates that start the reasoning), the completion is matched as if it began with it.",
        stages=ONLINE_STAGES)
    rollout_batch_size: int = option(
        16, "Prompts per optimisation step (PPO); GRPO samples `num_generations` completions for each.",
        stages=ONLINE_STAGES)
    num_generations: int = option(4, "With `grpo`: completions sampled per prompt (the group).", stages=("grpo",))
    ppo_epochs: int = option(
        2, "Passes over each rollout, in mini-batches of `per_device_train_batch_size` completions.",
        stages=ONLINE_STAGES)
    kl_coef: float = option(
        0.05, "Weight of the KL divergence from the reference model: a per-token reward penalty (ppo) or a loss "
        "term (grpo; 0 skips the reference model).", stages=("ppo", "grpo"))
    cliprange: float = option(
        0.2, "Clip range of the policy probability ratio (TRL's `epsilon`): [1 - cliprange, 1 + cliprange].",
        stages=("ppo", "grpo"))
    epsilon_high: float | None = option(
        None, "With `grpo`: the upper clip range instead of `cliprange` (DAPO's clip-higher, e.g. 0.28), so "
        "unlikely tokens with a positive advantage can gain more.", stages=("grpo",))
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = option(
        "dapo", "With `grpo`: how per-token losses are averaged. `grpo`: over each completion's tokens, then over "
        "completions (DeepSeekMath; favours short completions); `bnpo`: over the tokens of each mini-batch; `dapo`: "
        "over the tokens of all the mini-batches of one optimizer step (DAPO; TRL's default); `dr_grpo`: summed and "
        "divided by completions x `max_new_tokens` (Dr. GRPO: no length bias).", stages=("grpo",))
    importance_sampling_level: Literal["token", "sequence"] = option(
        "token", "With `grpo`: the policy ratio per token (GRPO), or per completion (`sequence`: GSPO, the geometric "
        "mean of its tokens' ratios, clipped as one; steadier for mixtures of experts, whose routing moves token "
        "ratios; pair it with `loss_type: grpo` as the GSPO paper does).", stages=("grpo",))
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "With `grpo`: advantages are divided by the reward standard deviation of their group (`group`), of "
        "the whole rollout (`batch`), or not at all (`none`, Dr. GRPO).", stages=("grpo",))
    advantage_estimator: Literal["grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"] = option(
        "grpo", "With `grpo`: how rewards become advantages. `grpo`: minus its group's mean; `rloo`: minus the "
        "mean of the other completions of its group (leave-one-out; unbiased); `reinforce_plus_plus` "
        "(REINFORCE++): the KL penalty `kl_coef` goes into each token's reward, each token's return is the sum of the "
        "rewards after it, and the returns are whitened over the whole batch (no group baseline, so "
        "`num_generations: 1` works); `reinforce_plus_plus_baseline`: the reward minus its group's mean, then the "
        "same per-token KL reward and whitening over the batch. `scale_rewards` applies to `grpo` and `rloo`.",
        stages=("grpo",))
    mask_truncated_completions: bool = option(
        False, "With `grpo`: completions cut at `max_new_tokens` (no end-of-turn token) carry no loss (DAPO's "
        "overlong filtering).", stages=("grpo",))
    filter_zero_variance_groups: bool = option(
        False, "With `grpo`: groups whose completions all got the same reward (zero advantage: no signal) are left "
        "out of the update; how many is logged as `zero_variance_groups`. See `dynamic_sampling` to draw more "
        "instead.", stages=("grpo",))
    dynamic_sampling: bool = option(
        False, "With `grpo`: DAPO's dynamic sampling. Groups whose completions all got the same reward are dropped "
        "and more prompts are drawn (the next ones of the data order) until `rollout_batch_size` groups with a "
        "signal are gathered, or `max_sampling_rounds` rounds were drawn (the step then trains on what it has; "
        "`sampling_rounds` and `kept_groups` are logged).", stages=("grpo",))
    max_sampling_rounds: int = option(
        3, "With `dynamic_sampling`: the most rounds of `rollout_batch_size` prompts one step draws.", stages=("grpo",))
    overlong_buffer: int = option(
        0, "With `ppo`/`grpo`: DAPO's overlong reward shaping. A completion longer than `max_new_tokens` - "
        "`overlong_buffer` tokens loses reward linearly, up to `overlong_penalty` at `max_new_tokens` (0: off). "
        "Logged as `reward/overlong`.", stages=ONLINE_STAGES)
    overlong_penalty: float = option(
        1.0, "With `overlong_buffer`: the penalty of a completion that reaches `max_new_tokens`.",
        stages=ONLINE_STAGES)
    rollout_backend: Literal["hf", "vllm"] = option(
        "hf", "What samples the completions: `hf`, the training model itself with the KV cache (any device, one seeded "
        "generator per completion: the same completions on any number of processes); `vllm`, a vLLM engine (CUDA; "
        "`pip install vllm`) holding a copy of the policy that gets its weights after every update (a LoRA adapter "
        "merged into them). See `vllm_mode`.", stages=ONLINE_STAGES)
    vllm_mode: Literal["colocate", "server"] = option(
        "colocate", "With `rollout_backend: vllm`: `colocate` runs vLLM inside each training process on its GPU "
        "(share the memory with `vllm_gpu_memory_utilization`, free it during the update with "
        "`vllm_enable_sleep_mode`); `server` sends the prompts over HTTP to `lmforge rollout-server MODEL` running "
        "on other GPUs (`vllm_server_base_url`), the first process pushing the weights to it over NCCL.",
        stages=ONLINE_STAGES)
    vllm_gpu_memory_utilization: float = option(
        0.3, "With `vllm_mode: colocate`: the fraction of each GPU's memory vLLM takes for its copy of the weights "
        "and its KV cache (the rest is the training's).", stages=ONLINE_STAGES)
    vllm_enable_sleep_mode: bool = option(
        False, "With `vllm_mode: colocate`: vLLM releases its weights and KV cache while the policy is updated and "
        "takes them back for the next rollout (the common answer to out-of-memory with vLLM on the training GPU).",
        stages=ONLINE_STAGES)
    vllm_max_model_len: int | None = option(
        None, "With `vllm_mode: colocate`: vLLM's context length (default `cutoff_len` + `max_new_tokens`; a smaller "
        "one leaves more memory for the KV cache).", stages=ONLINE_STAGES)
    vllm_server_base_url: str = option(
        "http://127.0.0.1:8000", "With `vllm_mode: server`: the address of `lmforge rollout-server`.",
        stages=ONLINE_STAGES)
    vllm_server_timeout: float = option(
        240.0, "With `vllm_mode: server`: seconds to wait for the rollout server to answer at the start.",
        stages=ONLINE_STAGES)
    vllm_group_port: int = option(
        51216, "With `vllm_mode: server`: the port of the NCCL group the weights are pushed over.",
        stages=ONLINE_STAGES)
    cliprange_value: float = option(0.2, "With `ppo`: clip range of the value update.", stages=("ppo",))
    vf_coef: float = option(0.1, "With `ppo`: weight of the value loss.", stages=("ppo",))
    gamma: float = option(1.0, "With `ppo`: discount factor.", stages=("ppo",))
    lam: float = option(0.95, "With `ppo`: GAE lambda.", stages=("ppo",))
