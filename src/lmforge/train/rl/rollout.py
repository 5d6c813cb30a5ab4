"""Rollouts for online RL: sample completions of prompts with the KV cache, then score their tokens.

Sequences are laid out [left-padded prompt | completion, right-padded], so one forward pass scores a whole batch;
position ids come from the attention mask, exactly as `generate` numbered the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.config.generation import GenerationArguments
from lmforge.model.kv_cache import cache_kwargs, last_logits_only, output_cache
from lmforge.model.moe import no_router_outputs
from lmforge.model.sampling import SamplingParams, choose_next
from lmforge.train.rl.distributed import any_process


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [batch, prompt_width + completion tokens]
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # [batch, completion tokens]: 1 up to and including the stop token
    prompt_width: int
    truncated: torch.Tensor | None = None  # [batch] bool: cut at max_new_tokens without a stop token
    # [batch, completion tokens]: the tokens that carry loss when not all of the completion is the model's (tool
    # results in a multi-turn rollout); None: all of completion_mask
    trained_mask: torch.Tensor | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.trained_mask if self.trained_mask is not None else self.completion_mask

    def select(self, rows: torch.Tensor) -> Rollout:
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.completion_mask[rows], self.prompt_width,
                       self.truncated[rows] if self.truncated is not None else None,
                       self.trained_mask[rows] if self.trained_mask is not None else None)


@torch.no_grad()
def sample_completions(model: torch.nn.Module, prompts: list[list[int]], gen: GenerationArguments, pad_id: int,
                       stop_ids: list[int], seeds: list[int], lockstep: bool = False) -> Rollout:
    """One sampled completion per prompt (temperature/top-p/top-k/repetition_penalty from `gen`), ending at a stop
    token or at `max_new_tokens`.

    Each row draws from its own generator (`seeds[i]`), so a completion depends on its prompt and seed only, not on
    which other prompts share its batch or process: a run on several processes samples exactly what one process
    sampling the whole rollout would (and a resumed run what the uninterrupted one did). The decoding is the KV-cache
    loop `generate` runs; the choice of each token is `model.sampling.choose_next`, as in the serving engine.
    `lockstep`: the processes decode until all of them are done (a model FSDP2 shards runs its forward passes
    together)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    params = SamplingParams(max_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                            top_k=gen.top_k, repetition_penalty=gen.repetition_penalty)
    rows = [(params, list(p), [], torch.Generator().manual_seed(seed)) for p, seed in zip(prompts, seeds,
                                                                                          strict=True)]
    stops = set(stop_ids)
    was_training = model.training
    model.eval()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **no_router_outputs(model), **last_logits_only(model))
    done = [False] * len(prompts)
    last = positions[:, -1]
    for step in range(gen.max_new_tokens):
        tokens = choose_next(out.logits[:, -1], rows)
        for i, token in enumerate(tokens):
            if done[i]:
                tokens[i] = pad_id
                continue
            rows[i][2].append(token)
            done[i] = token in stops
        finished = all(done) if not lockstep else not any_process(not all(done))
        if finished or step == gen.max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        last = last + 1
        out = model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=mask,
                    position_ids=last[:, None], use_cache=True, **cache_kwargs(model, output_cache(out)))
    model.train(was_training)
    return rollout_from_tokens(prompts, [r[2] for r in rows], pad_id, stop_ids, device)


def rollout_from_tokens(prompts: list[list[int]], completions: list[list[int]], pad_id: int, stop_ids: list[int],
                        device: torch.device | str = "cpu") -> Rollout:
    """Prompts and their sampled completions (token lists, by whatever engine) laid out as a Rollout: each
    completion is valid up to and including its first stop token; one without a stop token was truncated."""
    width = max(len(p) for p in prompts)
    length = max(1, max(len(c) for c in completions))
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    completion = torch.tensor([list(c) + [pad_id] * (length - len(c)) for c in completions], device=device,
                              dtype=torch.long).reshape(len(completions), length)
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=device, dtype=torch.long))
    # valid: every token up to and including the first stop token
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0
    completion_mask = (~after_stop).long() * torch.tensor(
        [[1] * len(c) + [0] * (length - len(c)) for c in completions], device=device).reshape(len(completions),
                                                                                              length)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return Rollout(torch.cat([input_ids, completion], dim=1), torch.cat([prompt_mask, completion_mask], dim=1),
                   completion_mask, width, truncated=~(is_stop & completion_mask.bool()).any(-1))


def completion_logps(model: torch.nn.Module, rollout: Rollout, temperature: float = 1.0,
                     value_head: torch.nn.Module | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per completion token: log-probability under `model` (logits / temperature, the distribution sampled from),
    entropy, and the value head's estimate of the state before the token; and the router's load-balancing loss of
    a mixture of experts whose config asks for it (None otherwise)."""
    position_ids = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    start = rollout.prompt_width - 1
    kept = rollout.input_ids.shape[1] - start  # the positions that predict a completion token (and the last)
    out = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=position_ids,
                use_cache=False, output_hidden_states=value_head is not None, **last_logits_only(model, kept))
    logits = out.logits[:, -kept:-1].float() / temperature
    targets = rollout.input_ids[:, rollout.prompt_width:]
    normaliser = torch.logsumexp(logits, dim=-1)
    logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    entropy = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, start:-1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logps, entropy.detach(), values, getattr(out, "aux_loss", None)


@torch.no_grad()
def scored_completions(model: torch.nn.Module, rollout: Rollout, rows_at_once: int, temperature: float = 1.0,
                       value_head: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`completion_logps` (and values) of the whole rollout without gradients, `rows_at_once` rows per forward:
    scoring never holds more float32 logits than a training mini-batch does (the whole rollout at once held
    [rows, completion tokens, vocabulary] several times over, the step's peak with a large vocabulary)."""
    logps, values = [], []
    for rows in torch.arange(rollout.input_ids.shape[0], device=rollout.input_ids.device).split(rows_at_once):
        part_logps, _, part_values, _ = completion_logps(model, rollout.select(rows), temperature, value_head)
        logps.append(part_logps)
        values.append(part_values)
    return torch.cat(logps), torch.cat(values) if value_head is not None else None
