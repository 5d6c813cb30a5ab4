"""The online RL loop shared by `ppo`, `grpo` and `online_dpo`: rollout, reward, advantages (or preferences), policy
updates, checkpoints.

Why our own loop: the newest TRL no longer ships PPO, and GRPO shares everything but the advantages with it. Owning
one loop gives both the same prompt encoding and stop tokens as SFT (the chat template's end of turn ends a
completion), the same rewards, and checkpoints that resume the same run: the policy, value head, optimizer,
scheduler, RNG states and log are saved together, atomically, and the prompt order is a function of the step.

One step: take `rollout_batch_size` prompts (GRPO: each `num_generations` times), sample completions with the KV
cache, score them, compute the old/reference log-probabilities (and values), then `ppo_epochs` passes of clipped
updates in mini-batches of `per_device_train_batch_size` completions, one optimizer step per
`gradient_accumulation_steps` mini-batches.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmforge.config.schema import RunConfig
from lmforge.errors import TrainingError
from lmforge.jsonl import atomic_open
from lmforge.model.moe import ExpertLoads, router_loss_coef, with_router_loss_added
from lmforge.runlog import append_record, cut_log
from lmforge.train.rl.algorithms import Algorithm
from lmforge.train.rl.distributed import (
    any_process,
    average_gradients,
    barrier,
    gather,
    mean_over_processes,
    merge_rollouts,
    world,
)
from lmforge.train.rl.losses import PolicyLoss, masked_mean, overlong_penalty, zero_variance_rows
from lmforge.train.rl.optimization import Optimization
from lmforge.train.rl.rewards import Rewarder, load_function
from lmforge.train.rl.rollout import (
    Rollout,
    completion_logps,
    rollout_from_tokens,
    sample_completions,
    scored_completions,
)
from lmforge.train.rl.tool_rollout import sample_with_tools
from lmforge.train.runtime.checkpoint import COMPLETE_MARKER, RL_STATE_FILE, VALUE_HEAD_FILE
from lmforge.train.runtime.console import StepProgress, lines_above_the_bar, metrics_line
from lmforge.train.runtime.session import RunSession, record_dtype, saved_state_dict
from lmforge.train.runtime.signals import stopped_message
from lmforge.train.runtime.split_checkpoint import is_split_model, load_saved_weights
from lmforge.train.runtime.tracking import LoopTrackers
from lmforge.train.setup import enable_gradient_checkpointing
from lmforge.train.stage_data import ChatStage

logger = logging.getLogger(__name__)


class OnlineRL:
    def __init__(self, cfg: RunConfig, stage: ChatStage, policy: torch.nn.Module, ref: torch.nn.Module | None,
                 rewarder: Rewarder, algorithm: Algorithm):
        self.cfg, self.args, self.rl = cfg, cfg.training, cfg.rl
        self.stage, self.policy, self.ref, self.rewarder, self.algorithm = stage, policy, ref, rewarder, algorithm
        self.device = self.args.device
        # resume, checkpoints, the final model and its dtype, the guard and the stop: the services every run shares
        self.session = RunSession(self.args.output_dir, policy, self.main_process, cfg.resilience,
                                  cfg.finetuning.save_dtype, self.args.save_total_limit)
        self.guard, self.stop_request = self.session.guard, self.session.stop_request
        self.stopped_by: str | None = None
        self.policy.to(self.device)
        if self.ref is not None:
            self.ref.to(self.device)
        self.value_head = algorithm.value_head(policy)
        if self.value_head is not None:
            self.value_head.to(self.device)
        if self.args.gradient_checkpointing:
            enable_gradient_checkpointing(policy, self.args.gradient_checkpointing_kwargs)
        self.prompts = stage.data.train
        self.examples = [json.loads(c) for c in self.prompts["conversation"]]
        self.eval_prompts = stage.data.eval
        self.eval_examples = ([json.loads(c) for c in self.eval_prompts["conversation"]]
                              if self.eval_prompts is not None else [])
        rewarder.check_rows([e.get("columns") or {} for e in self.examples])  # before any time is spent
        self.env = load_function(self.rl.env_funcs) if self.rl.env_funcs else None  # multi-turn tool use
        self.vllm = None
        if self.rl.rollout_backend == "vllm":
            from lmforge.train.rl.vllm_rollout import VLLMRollouts

            self.vllm = VLLMRollouts(cfg, policy, cfg.model.model_name_or_path, *world())
        self.optim = Optimization(self.args, policy, self.value_head, self.guard, self.device)
        # `data_shard_size`: the policy was sharded with FSDP2 as it loaded; saving and sampling are collective
        self.sharded = is_split_model(policy)
        self.router_coef = router_loss_coef(policy)  # a mixture of experts' load-balancing loss (0: off)
        self.expert_loads = ExpertLoads.attach(policy)
        # what the optimizer trains, by parameter name: its sharded state is gathered and scattered through it
        self.sharded_modules = torch.nn.ModuleDict(
            {"policy": policy, **({"value_head": self.value_head} if self.value_head is not None else {})}
        ) if self.sharded else None
        self.trackers = LoopTrackers(self.args, cfg.tracking, policy, stage.tokenizer, self.optim.optimizer,
                                     self.optim.scheduler)
        # `memory_report`: what a step holds besides the policy (the reference, value head and reward model)
        self.trackers.track_memory_of(ref, self.value_head, rewarder.scorer.model if rewarder.scorer else None)
        self.step = 0
        self.log_history: list[dict] = []
        self.progress = StepProgress(self.args.max_steps, 0, enabled=False, stage=cfg.finetuning.stage)

    # ---- data -------------------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """The prompts of `step`: consecutive slices of per-epoch permutations seeded by the epoch (so the order
        depends only on the step, and a resumed run takes the same prompts)."""
        n, size = len(self.prompts), self.rl.rollout_batch_size
        out = []
        for position in range(step * size, (step + 1) * size):
            epoch, offset = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch))
            out.append(int(order[offset]))
        return out

    # ---- one step ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logps(self, rollout: Rollout) -> torch.Tensor:
        temperature, rows = self.algorithm.temperature, self.args.per_device_train_batch_size
        if self.ref is not None:
            return scored_completions(self.ref, rollout, rows, temperature)[0]
        with self.policy.disable_adapter():
            return scored_completions(self.policy, rollout, rows, temperature)[0]

    def row_seed(self, step: int, row: int, purpose: int = 0) -> int:
        """The seed of one completion: a function of the run's seed, the step and the row's place in the step's
        global rollout only (see `rollout.sample_completions`)."""
        return (self.args.seed * 1_000_003 + step * 65_537 + row * 257 + purpose) % (2**63)

    def sample_and_score(self, dataset: Any, examples: list[dict], indices: list[int], seeds: list[int],
                         group: int = 1) -> tuple[Rollout, torch.Tensor, dict[str, float]]:
        """Completions of the prompts at `indices` (row i drawn with `seeds[i]`; rows in runs of `group` copies of
        a prompt) and their rewards."""
        prompts = [dataset[i]["input_ids"] for i in indices]
        tokenizer = self.stage.tokenizer
        chosen = [examples[i] for i in indices]
        turns: list[list[dict]] | None = None
        counts: dict[str, float] = {}
        with self.optim.autocast():
            if self.vllm is not None:
                completions_ids = self.vllm.generate(prompts, group, list(self.stage.stop_ids), seeds)
                rollout = rollout_from_tokens(prompts, completions_ids, tokenizer.pad_token_id,
                                              list(self.stage.stop_ids), self.device)
            elif self.env is not None:  # multi-turn: the model's turns and the environment's tool results
                rollout, turns, counts = sample_with_tools(
                    self.policy, tokenizer, prompts, [e["messages"] for e in chosen], [e.get("tools") for e in chosen],
                    [{"reference": e.get("reference")} for e in chosen], self.env, self.rl.max_turns,
                    self.cfg.generation, list(self.stage.stop_ids), seeds)
            else:
                rollout = sample_completions(self.policy, prompts, self.cfg.generation, tokenizer.pad_token_id,
                                             list(self.stage.stop_ids), seeds, lockstep=self.sharded)
        if turns is not None:  # what the model finally answered; the rewards also see the whole exchange
            completions = [t[-1]["content"] if t else "" for t in turns]
        else:
            completions = tokenizer.batch_decode(
                [row[mask.bool()] for row, mask in zip(rollout.input_ids[:, rollout.prompt_width:],
                                                       rollout.completion_mask, strict=True)],
                skip_special_tokens=True)
        prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=False)
        self.progress.phase("scoring")
        scores, parts = self.rewarder(prompt_texts, completions, [e["messages"] for e in chosen],
                                      [e.get("reference") for e in chosen], turns,
                                      columns=[e.get("columns") or {} for e in chosen])
        scores = torch.tensor(scores, device=self.device, dtype=torch.float32)
        if self.rl.overlong_buffer:  # DAPO's soft overlong punishment, by the completion's length in tokens
            penalty = overlong_penalty(rollout.completion_mask.sum(-1).float(), self.cfg.generation.max_new_tokens,
                                       self.rl.overlong_buffer, self.rl.overlong_penalty)
            scores = scores + penalty
            parts["reward/overlong"] = penalty.mean().item()
        if self.rl.missing_eos_penalty and rollout.truncated is not None:  # cut without ending its turn
            penalty = -self.rl.missing_eos_penalty * rollout.truncated.float()
            scores = scores + penalty
            parts["reward/missing_eos"] = penalty.mean().item()
        return rollout, scores, {**parts, **counts}

    def extra_indices(self, step: int, round_: int) -> list[int]:
        """`dynamic_sampling`'s further prompts for `step`: a permutation seeded by the step and the round (a
        function of the step, so a resumed run draws the same)."""
        n = len(self.prompts)
        seed = (self.args.seed * 7_919 + step * 131 + round_) % (2**63)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return [int(order[i % n]) for i in range(self.rl.rollout_batch_size)]

    def sample_piece(self, step: int, slots: list[int], round_: int = 0) -> dict[str, Any]:
        """The prompts `slots` (each `group_size` times) sampled and scored, with their old/reference
        log-probabilities (and values): each process samples its share (whole groups), then on several processes
        everything is gathered (`distributed.py`), so what follows is computed on the whole rollout everywhere."""
        group = self.algorithm.group_size
        rank, size = world()
        share = len(slots) // size
        first = rank * share
        indices = [i for i in slots[first: first + share] for _ in range(group)]
        purpose = 0 if round_ == 0 else 1 + round_  # 1: evaluation
        seeds = [self.row_seed(step, first * group + j, purpose) for j in range(len(indices))]
        rollout, scores, parts = self.sample_and_score(self.prompts, self.examples, indices, seeds, group)
        with torch.no_grad(), self.optim.autocast():
            self.policy.eval()
            old_logps, old_values = scored_completions(self.policy, rollout, self.args.per_device_train_batch_size,
                                                       self.algorithm.temperature, self.value_head)
            ref_logps = self.reference_logps(rollout) if self.algorithm.needs_reference else old_logps
        piece = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
                 "completion_mask": rollout.completion_mask, "prompt_width": rollout.prompt_width,
                 **({"trained_mask": rollout.trained_mask} if rollout.trained_mask is not None else {}),
                 "truncated": rollout.truncated, "scores": scores, "parts": parts, "old_logps": old_logps,
                 "ref_logps": ref_logps, **({"old_values": old_values} if old_values is not None else {})}
        if size > 1:
            cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in piece.items()}
            merged = merge_rollouts(gather(cpu), self.stage.tokenizer.pad_token_id)
            piece = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in merged.items()}
        return piece

    def dynamic_pieces(self, step: int, first: dict[str, Any], stats: dict[str, float]) -> list[dict[str, Any]]:
        """DAPO's dynamic sampling: the groups of `first` whose rewards differ, and of further rounds of prompts
        until `rollout_batch_size` such groups are gathered or `max_sampling_rounds` are drawn."""
        group, wanted = self.algorithm.group_size, self.rl.rollout_batch_size
        pieces, kept, round_, piece = [], 0, 0, first
        while True:
            informative = ~zero_variance_rows(piece["scores"], group)
            rows = informative.nonzero().flatten()[: (wanted - kept) * group]
            if len(rows):
                pieces.append({k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in piece.items()})
                kept += len(rows) // group
            round_ += 1
            if kept >= wanted or round_ >= self.rl.max_sampling_rounds:
                break
            piece = self.sample_piece(step, self.extra_indices(step, round_), round_)
        stats.update(sampling_rounds=float(round_), kept_groups=float(kept))
        return pieces

    def make_rollout(self, step: int) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
        """The step's rollout (`sample_piece`; with `dynamic_sampling`, the informative groups of several rounds),
        its statistics and the algorithm's advantages."""
        piece = self.sample_piece(step, self.batch_indices(step))
        sampled = {"reward": piece["scores"].mean().item(), "reward_std": piece["scores"].std().item()
                   if len(piece["scores"]) > 1 else 0.0, **piece["parts"]}  # of everything the first round drew
        if self.rl.dynamic_sampling:
            # no group with a signal in any round: the first round's (zero advantages, nothing to learn)
            pieces = self.dynamic_pieces(step, piece, sampled) or [piece]
            piece = pieces[0] if len(pieces) == 1 else merge_rollouts(pieces, self.stage.tokenizer.pad_token_id)
        rollout = Rollout(piece["input_ids"], piece["attention_mask"], piece["completion_mask"],
                          piece["prompt_width"], piece["truncated"].bool(), piece.get("trained_mask"))
        old_logps = piece["old_logps"]
        batch: dict[str, torch.Tensor] = {"scores": piece["scores"], "old_logps": old_logps,
                                          "ref_logps": piece["ref_logps"],
                                          **({"old_values": piece["old_values"]} if "old_values" in piece else {})}
        mask = rollout.loss_mask.float()
        lengths = mask.sum(-1)
        truncated = rollout.truncated.float() if rollout.truncated is not None else torch.zeros_like(lengths)
        stats = {**sampled, "completion_length": lengths.mean().item(), "completion_length_max": lengths.max().item(),
                 "truncated_fraction": truncated.mean().item()}
        self.algorithm.advantages(batch, mask, truncated, stats)
        stats["kl"] = ((old_logps - batch["ref_logps"]) * mask).sum(-1).mean().item()
        return rollout, batch, stats

    def evaluate(self) -> dict[str, float]:
        """Mean reward (and each reward's part) of one completion per held-out prompt. The RNG states are put back
        afterwards, so evaluating does not change the training run (or its exact resume)."""
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        examples = self.eval_examples
        self.progress.phase("eval")
        size, totals, count = self.args.per_device_eval_batch_size, defaultdict(float), 0
        try:
            for start in range(0, len(examples), size):
                indices = list(range(start, min(start + size, len(examples))))
                seeds = [self.row_seed(self.step, i, purpose=1) for i in indices]
                _, scores, parts = self.sample_and_score(self.eval_prompts, examples, indices, seeds)
                for key, value in {"reward": scores.mean().item(), **parts}.items():
                    totals[key] += value * len(indices)
                count += len(indices)
        finally:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state_all(rng[1])
        return {f"eval_{k}": v / max(count, 1) for k, v in totals.items()}

    def should_evaluate(self) -> bool:
        if self.eval_prompts is None:
            return False
        if self.step == self.args.max_steps:
            return True
        strategy = getattr(self.args.eval_strategy, "value", self.args.eval_strategy)
        every = int(self.args.eval_steps or self.args.logging_steps or 0)
        return strategy == "steps" and every > 0 and self.step % every == 0

    def update(self, rollout: Rollout, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """`ppo_epochs` passes over the rollout in global mini-batches of `per_device_train_batch_size` x processes
        completions (each process trains its slice); an optimizer step every `gradient_accumulation_steps`
        mini-batches (and at the end of each pass), after the gradients are averaged over the processes."""
        self.policy.train()
        if "trained" in batch and not bool(batch["trained"].any()):  # every group filtered: nothing to learn
            self.optim.scheduler.step()
            return {"skipped_updates": 1.0}
        rank, processes = world()
        per_process, every = self.args.per_device_train_batch_size, self.optim.accumulation
        trained = rollout.loss_mask.float()
        if "trained" in batch:
            trained = trained * batch["trained"].unsqueeze(-1)
        generator = torch.Generator().manual_seed(self.args.seed * 100_003 + step)
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(self.rl.ppo_epochs):
            minibatches = self.algorithm.order(rollout.input_ids.shape[0], generator).split(per_process * processes)
            tokens = [float(trained[rows].sum()) for rows in minibatches]
            rows_trained = [float(batch["trained"][rows].sum()) if "trained" in batch else float(len(rows))
                            for rows in minibatches]
            finite = True
            for position, global_rows in enumerate(minibatches):
                start = position - position % every  # the optimizer step this mini-batch belongs to
                normalisers = {"tokens": tokens[position] / processes, "rows": len(global_rows) / processes,
                               "trained_rows": rows_trained[position] / processes,
                               "step_tokens": sum(tokens[start: start + every]) / (every * processes)}
                rows = global_rows[rank * per_process: (rank + 1) * per_process].to(self.device)
                result = self.minibatch_loss(rollout, batch, rows, trained[rows], normalisers) if len(rows) else None
                if result is not None:
                    self.optim.backward(result[0].loss)
                    finite = finite and bool(torch.isfinite(result[0].loss.detach()))
                self.record(stats, result)
                if (position + 1) % every == 0 or position + 1 == len(minibatches):
                    average_gradients(self.optim.params)
                    stats["grad_norm"].append(self.optim.step(step + 1, not any_process(not finite)))
                    finite = True
        self.optim.scheduler.step()
        if self.vllm is not None:
            self.vllm.updated()
        return mean_over_processes({k: sum(v) / len(v) for k, v in stats.items()})

    def minibatch_loss(self, rollout: Rollout, batch: dict[str, torch.Tensor], rows: torch.Tensor,
                       mask: torch.Tensor, normalisers: dict[str, float]) -> tuple[PolicyLoss, torch.Tensor]:
        """This process's rows of a mini-batch: their loss, normalised for the whole mini-batch (see
        `distributed.py`), and their entropy."""
        part = rollout.select(rows)
        with self.optim.autocast():
            logps, entropy, values, router = completion_logps(self.policy, part, self.algorithm.temperature,
                                                              self.value_head)
        out = self.algorithm.loss(logps, values, batch, rows, mask, normalisers)
        # the model's own load-balancing loss, weighted by these rows' share of the mini-batch as the policy loss is
        out.loss = with_router_loss_added(out.loss, router, self.router_coef, len(rows) / normalisers["rows"])
        return out, masked_mean(entropy, mask)

    def record(self, stats: dict[str, list[float]], result: tuple[PolicyLoss, torch.Tensor] | None) -> None:
        """A mini-batch's statistics (zeros for a process whose share of it was empty, so that the averages over
        processes stay those of the whole mini-batch)."""
        names = ["loss", "policy_loss", "clip_fraction", "approx_kl", "entropy", *self.algorithm.stats]
        if result is None:
            for name in names:
                stats[name].append(0.0)
            return
        out, entropy = result
        values = {"loss": out.loss, "policy_loss": out.policy_loss, "clip_fraction": out.clip_fraction,
                  "approx_kl": out.approx_kl, "entropy": entropy, "value_loss": out.value_loss,
                  "clip_fraction_low": out.clip_low, "clip_fraction_high": out.clip_high, **out.extra}
        for name in names:
            stats[name].append(float(values[name].detach()))

    # ---- loop -------------------------------------------------------------------------------------------------
    @property
    def main_process(self) -> bool:
        """The process that writes logs, checkpoints and the final model (the others wait for it)."""
        return world()[0] == 0

    def train(self, resume: str | None = None) -> dict[str, float]:
        self.session.begin(resume)
        if resume:
            self.load_checkpoint(resume)
        if self.main_process:
            self.rewrite_log()
            self.trackers.begin(self.step)
        barrier()
        self.progress = StepProgress(self.args.max_steps, self.step, self.main_process and not self.args.disable_tqdm,
                                     self.cfg.finetuning.stage)
        try:
            with lines_above_the_bar():
                if self.step == 0 and self.eval_prompts is not None and self.args.eval_on_start:
                    self.log(self.evaluate())  # the starting point the later evaluations are compared with
                with self.stop_request.installed():
                    last = self.loop()
        finally:
            self.progress.close()
            if self.main_process:
                self.trackers.end()
        if self.stopped_by:
            return last
        self.save_final()
        return last

    def loop(self) -> dict[str, float]:
        """Steps until max_steps, or until a signal or the non-finite guard stops the run (with a checkpoint)."""
        pending: dict[str, list[float]] = defaultdict(list)
        last: dict[str, float] = {}
        while self.step < self.args.max_steps:
            started = time.perf_counter()
            if self.main_process:
                self.trackers.step_begin(self.step)
            self.progress.phase("rollout")
            rollout, batch, rollout_stats = self.make_rollout(self.step)
            rolled = time.perf_counter()
            self.progress.phase("update")
            update_stats = self.update(rollout, batch, self.step)
            if self.main_process:
                self.trackers.step_end(self.step + 1)
            tokens = float(rollout.completion_mask.sum())
            update_stats.update(rollout_seconds=rolled - started, update_seconds=time.perf_counter() - rolled,
                                rollout_tokens_per_second=tokens / max(rolled - started, 1e-9))
            self.step += 1
            self.progress.advance()
            for key, value in {**rollout_stats, **update_stats}.items():
                pending[key].append(value)
            if self.step % max(int(self.args.logging_steps), 1) == 0 or self.step == self.args.max_steps:
                last = {k: sum(v) / len(v) for k, v in pending.items()}
                self.log({**last, "learning_rate": self.optim.scheduler.get_last_lr()[0]})
                pending.clear()
            if self.should_evaluate():
                last = {**last, **self.evaluate()}
                self.log({k: v for k, v in last.items() if k.startswith("eval_")})
            strategy = getattr(self.args.save_strategy, "value", self.args.save_strategy)
            save_every = int(self.args.save_steps) if strategy != "no" else 0
            if self.guard is not None and self.guard.exhausted:
                raise TrainingError(self.guard.message(self.save_checkpoint()))
            if any_process(self.stop_request.requested):  # every process stops at the same step
                self.stopped_by = self.stop_request.signal_name or "a signal to another process"
                checkpoint = self.save_checkpoint()
                logger.warning(stopped_message(self.stopped_by, self.step, self.args.max_steps, checkpoint))
                return last
            if save_every and self.step % save_every == 0 and self.step < self.args.max_steps:
                self.save_checkpoint()
        return last

    def log(self, values: dict[str, float]) -> None:
        if self.expert_loads is not None and "loss" in values:  # a mixture of experts: its routers' loads
            values = {**values, **self.expert_loads.read()}
        record = {"step": self.step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}}
        if self.expert_loads is not None and self.expert_loads.last and "loss" in values:
            record["expert_load"] = self.expert_loads.last
        self.log_history.append(record)
        logger.info(metrics_line(self.step, self.args.max_steps, values))
        if self.main_process:
            append_record(self.args.output_dir, record)
            self.trackers.log(self.step, values)

    def rewrite_log(self) -> None:
        """The log file as the run stands at its (resumed) step: later lines of an interrupted run are dropped."""
        cut_log(self.args.output_dir, self.step)

    # ---- saving -----------------------------------------------------------------------------------------------
    def save_model(self, directory: str, dtype: torch.dtype | None = None) -> None:
        """The policy (and value head, tokenizer) into `directory`: by the first process, or with a sharded policy by
        every process (they gather the weights together; the first writes)."""
        main = self.main_process
        self.policy.save_pretrained(directory, state_dict=saved_state_dict(self.policy, dtype), is_main_process=main)
        if not main:
            return
        record_dtype(self.policy, directory, dtype)
        self.stage.tokenizer.save_pretrained(directory)
        if self.value_head is not None:
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()},
                      os.path.join(directory, VALUE_HEAD_FILE))

    def save_checkpoint(self) -> str:
        """`checkpoint-<step>` appears complete or not at all: written to a staging directory, then renamed (by the
        main process; the others wait until it is there)."""
        self.progress.phase("saving")
        tmp, final = self.session.checkpoint_paths(f"checkpoint-{self.step}")
        optimization = self.optim.state_dict(self.sharded_modules)  # collective if sharded
        if self.sharded:
            barrier()
            if self.main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            barrier()
            self.save_model(tmp)
        if not self.main_process:
            barrier()
            return final
        with self.session.writing(tmp):
            if not self.sharded:
                shutil.rmtree(tmp, ignore_errors=True)
                self.save_model(tmp)
            torch.save({"step": self.step, **optimization, "log_history": self.log_history,
                        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                "numpy": np.random.get_state()}}, os.path.join(tmp, RL_STATE_FILE))
            self.write_state(tmp)
        self.session.publish_checkpoint(tmp, final)
        logger.info("Saved %s", final)
        barrier()
        return final

    def load_checkpoint(self, path: str) -> None:
        state_path = os.path.join(path, RL_STATE_FILE)
        if not os.path.isfile(state_path):
            from lmforge.errors import ConfigError

            raise ConfigError(f"Config error: '{path}' is not a {self.cfg.finetuning.stage} checkpoint (no "
                              f"{RL_STATE_FILE}).")
        state = torch.load(state_path, weights_only=False)
        load_saved_weights(self.policy, path)
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(os.path.join(path, VALUE_HEAD_FILE)))
        self.optim.load_state_dict(state, self.sharded_modules)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        self.step, self.log_history = state["step"], state["log_history"]
        logger.info("Resumed from %s at step %d", path, self.step)

    def save_final(self) -> None:
        """The final model, written beside output_dir and moved in file by file (each whole), as the Trainer
        stages save theirs."""
        staged = self.session.final_staging()
        barrier()
        with self.session.writing(staged):
            if self.main_process or self.sharded:
                self.save_model(staged, self.session.save_dtype)
            if self.main_process:
                self.write_state(staged)
        if self.main_process:
            self.session.publish_final(staged)
        barrier()

    def write_state(self, directory: str) -> None:
        """trainer_state.json, as the Trainer writes it (last: it marks a checkpoint complete)."""
        with atomic_open(os.path.join(directory, COMPLETE_MARKER)) as fh:
            json.dump({"global_step": self.step, "log_history": self.log_history}, fh, indent=1)
