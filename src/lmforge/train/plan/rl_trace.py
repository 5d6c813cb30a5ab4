"""ppo/grpo's step traced over fake tensors, as `trace.py` traces the Trainer stages': the step's completions
sampled with the KV cache (the HF backend), scored without gradients by the policy and the reference in mini-batches
(`scored_completions`), then the clipped updates over mini-batches and the optimizer step, through the loop's own
functions (`completion_logps`, the algorithm's loss, `Optimization`). Every prompt is `cutoff_len` tokens and every
completion `max_new_tokens`: the longest step the run can meet."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.config.schema import RunConfig
from lmforge.model.memory import peak_memory, peak_tracker
from lmforge.train.plan.trace import (
    TRACED_STEPS,
    PlanError,
    TracedStep,
    frozen,
    layer_sizes,
    quiet,
    reference,
    release_graphs,
    run_tokenizer,
    trained_model,
    untraceable,
)

RL_STAGES = ("ppo", "grpo")
# decoding steps the trace fills the KV cache with per forward: the cache the real loop builds one token at a time,
# in a few passes (a larger piece only holds more transient activations than a one-token step does)
CACHE_PIECE = 64


def rollout_rows(cfg: RunConfig, processes: int) -> int:
    """Completions each process samples per step: its share of the prompts, each `num_generations` times (GRPO)."""
    group = cfg.rl.num_generations if cfg.finetuning.stage == "grpo" else 1
    return max(cfg.rl.rollout_batch_size // max(processes, 1), 1) * group


def trace_online_rl(cfg: RunConfig, processes: int = 1) -> TracedStep:
    """The peak memory of one ppo/grpo step of `cfg` on one of `processes` devices, as planned."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lmforge.model.build import planned_architecture
    from lmforge.train.rl.algorithms import algorithm_of

    algorithm = algorithm_of(cfg)
    tokenizer = run_tokenizer(cfg)
    auto_class, config = planned_architecture(cfg.model, tokenizer)
    rows, prompt, new = rollout_rows(cfg, processes), cfg.data.cutoff_len, cfg.generation.max_new_tokens
    notes = [f"rollout: {rows} completions per device, prompts of {prompt:,} tokens and completions of {new:,}"]
    vllm = cfg.rl.rollout_backend == "vllm"
    if vllm:
        notes.append("rollouts by vLLM: its engine's memory is not traced (colocated: it takes "
                     f"vllm_gpu_memory_utilization = {cfg.rl.vllm_gpu_memory_utilization:.0%} of the device)")
    with FakeTensorMode(allow_non_fake_inputs=True), quiet():
        outcome = _traced(cfg, algorithm, tokenizer, auto_class, config, rows, prompt, new, notes)
        release_graphs()
    if isinstance(outcome, PlanError):
        raise outcome
    return outcome


def _traced(cfg: RunConfig, algorithm: Any, tokenizer: Any, auto_class: Any, config: Any, rows: int, prompt: int,
            new: int, notes: list[str]) -> TracedStep | PlanError:
    """`trace_online_rl` inside its FakeTensorMode (its figures, or why not: returned, as `trace._traced` does)."""
    from lmforge.model.build import count_parameters
    from lmforge.train.rl.optimization import Optimization
    from lmforge.train.setup import trainer_arguments

    try:
        policy = trained_model(cfg, auto_class, config)
        ref = reference(cfg, policy, tokenizer) if algorithm.needs_reference else None
        scorer = _reward_model(cfg)
    except PlanError as err:
        return PlanError(str(err))
    value_head = algorithm.value_head(policy)
    optim = Optimization(trainer_arguments(cfg), policy, value_head, None, torch.device("cpu"))
    total, trainable = count_parameters(policy)
    tracker = peak_tracker()
    tracker.track_external(policy, optim.optimizer, *[m for m in (ref, value_head, scorer) if m is not None])
    try:
        with tracker:
            for _ in range(TRACED_STEPS):
                with optim.autocast():
                    if cfg.rl.rollout_backend != "vllm":
                        _sample(policy, rows, prompt, new, config)
                    rollout, batch = _scored(cfg, algorithm, policy, ref, value_head, rows, prompt, new)
                _update(cfg, algorithm, optim, policy, value_head, rollout, batch)
    except Exception as err:  # noqa: BLE001 - an op fake tensors cannot run: say which, plan nothing
        return untraceable(config, err)
    reference_parameters = count_parameters(ref)[0] if ref is not None else 0
    layers = layer_sizes(policy)
    minibatch = min(cfg.training.per_device_train_batch_size, rows)
    return TracedStep(peak_memory(tracker), minibatch, prompt + new, total, trainable, reference_parameters, *layers,
                      config, notes, rollout_rows=rows)


def _reward_model(cfg: RunConfig) -> torch.nn.Module | None:
    """The reward model the rewards load (its weights; its scoring pass over the texts is not traced)."""
    import json
    import os

    from transformers import AutoModelForSequenceClassification

    path = cfg.rl.reward_model
    if not path:
        return None
    adapter = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter):  # a LoRA reward model: merged into its base as it loads
        with open(adapter, encoding="utf-8") as fh:
            path = json.load(fh).get("base_model_name_or_path") or path
    return frozen(cfg, path, None, AutoModelForSequenceClassification)


@torch.no_grad()
def _sample(policy: torch.nn.Module, rows: int, prompt: int, new: int, config: Any) -> None:
    """`sample_completions`' passes: the prefill (the last position's logits), then the KV cache filled to
    prompt + completion tokens, and the choice of the last token over the vocabulary."""
    from lmforge.model.kv_cache import cache_kwargs, last_logits_only, output_cache
    from lmforge.model.moe import no_router_outputs

    was_training = policy.training
    policy.eval()
    vocab = config.get_text_config().vocab_size
    ids = torch.zeros((rows, prompt), dtype=torch.long).random_(0, vocab)
    mask = torch.ones_like(ids)
    out = policy(input_ids=ids, attention_mask=mask, position_ids=torch.arange(prompt).expand(rows, -1),
                 use_cache=True, **no_router_outputs(policy), **last_logits_only(policy))
    filled = 0
    while filled < new - 1:
        piece = min(CACHE_PIECE, new - 1 - filled)
        mask = torch.cat([mask, mask.new_ones(rows, piece)], dim=1)
        positions = torch.arange(prompt + filled, prompt + filled + piece).expand(rows, -1)
        out = policy(input_ids=torch.zeros((rows, piece), dtype=torch.long), attention_mask=mask,
                     position_ids=positions, use_cache=True,
                     **cache_kwargs(policy, output_cache(out)), **last_logits_only(policy))
        filled += piece
    torch.softmax(out.logits[:, -1].float(), dim=-1)  # choose_next's probabilities
    policy.train(was_training)


def _scored(cfg: RunConfig, algorithm: Any, policy: torch.nn.Module, ref: torch.nn.Module | None,
            value_head: torch.nn.Module | None, rows: int, prompt: int, new: int) -> tuple[Any, dict]:
    """The rollout's old (and reference) log-probabilities as `make_rollout` computes them, and the batch of
    advantages its updates read (computed on real zeros: their values do not change the memory)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from lmforge.train.rl.rollout import Rollout, scored_completions

    vocab = policy.config.get_text_config().vocab_size
    ids = torch.zeros((rows, prompt + new), dtype=torch.long).random_(0, vocab)
    rollout = Rollout(ids, torch.ones_like(ids), torch.ones((rows, new), dtype=torch.long), prompt,
                      torch.zeros(rows, dtype=torch.bool))
    minibatch, temperature = cfg.training.per_device_train_batch_size, cfg.generation.temperature
    policy.eval()
    scored_completions(policy, rollout, minibatch, temperature, value_head)
    if ref is not None:
        scored_completions(ref, rollout, minibatch, temperature)
    elif algorithm.needs_reference:
        with policy.disable_adapter():
            scored_completions(policy, rollout, minibatch, temperature)
    with unset_fake_temporarily():
        mask = torch.ones((rows, new))
        batch = {"scores": torch.zeros(rows), "old_logps": torch.zeros(rows, new),
                 "ref_logps": torch.zeros(rows, new),
                 **({"old_values": torch.zeros(rows, new)} if value_head is not None else {})}
        algorithm.advantages(batch, mask, torch.zeros(rows), {})
    return rollout, batch


def _update(cfg: RunConfig, algorithm: Any, optim: Any, policy: torch.nn.Module,
            value_head: torch.nn.Module | None, rollout: Any, batch: dict) -> None:
    """`OnlineRL.update`'s mini-batches up to one optimizer step (at most two accumulated), then the step."""
    from lmforge.train.rl.rollout import completion_logps

    policy.train()
    minibatch = min(cfg.training.per_device_train_batch_size, rollout.input_ids.shape[0])
    new = rollout.completion_mask.shape[1]
    normalisers = {"tokens": float(minibatch * new), "rows": float(minibatch), "step_tokens": float(minibatch * new)}
    for _ in range(min(optim.accumulation, 2)):
        rows = torch.arange(minibatch)
        part = rollout.select(rows)
        with optim.autocast():
            logps, _, values, _ = completion_logps(policy, part, cfg.generation.temperature, value_head)
        optim.backward(algorithm.loss(logps, values, batch, rows, part.completion_mask.float(), normalisers).loss)
    if cfg.training.max_grad_norm and cfg.training.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(optim.params, cfg.training.max_grad_norm)
    optim.optimizer.step()
    optim.optimizer.zero_grad(set_to_none=True)

