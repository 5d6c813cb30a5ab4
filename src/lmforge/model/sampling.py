"""Per-sequence sampling settings and the next-token choice for a batch whose rows each have their own (the
serving engine's requests, RL rollouts).

`model.generate` takes one set of sampling settings per call; a server batches requests that each set their own
temperature, top-p, top-k, penalties and seed, so the choice is made here, one row at a time where it must be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.config.generation import GenerationArguments

# Below this temperature a row is decoded greedily (vLLM's floor): dividing logits by less overflows float32 and the
# softmax of the result is nan, which `torch.multinomial` refuses for the whole batch.
MIN_TEMPERATURE = 1e-5


class SamplingError(ValueError):
    """One row's scores are no distribution to sample from (nan from the model, every token filtered out): that row's
    request ends with this message, the others in the batch go on."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI's)

    @classmethod
    def from_generation(cls, gen: GenerationArguments, **changes) -> SamplingParams:
        """The config's decoding settings (what a request does not set), with `changes` applied."""
        values = {"max_tokens": gen.max_new_tokens, "temperature": gen.temperature if gen.do_sample else 0.0,
                  "top_p": gen.top_p, "top_k": gen.top_k, "repetition_penalty": gen.repetition_penalty}
        return cls(**{**values, **changes})

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def _penalised(logits: torch.Tensor, params: SamplingParams, generated: list[int], prompt: list[int]) -> torch.Tensor:
    """OpenAI's logit bias and presence/frequency penalties over the completion so far, and the multiplicative
    repetition penalty of transformers (over prompt and completion)."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device, dtype=torch.long)
        logits[ids] += torch.tensor(list(params.logit_bias.values()), device=logits.device, dtype=logits.dtype)
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(generated)), device=logits.device, dtype=torch.long)
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / params.repetition_penalty, scores * params.repetition_penalty)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.numel())
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def _filtered(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order transformers applies them)."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already hold top_p of the mass; the first one always stays, even
        # for a top_p that rounds to 0 in float32
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        drop[0] = False
        logits = logits.scatter(0, order[drop], float("-inf"))
    return logits


def choose_one(logits: torch.Tensor, params: SamplingParams, prompt: list[int], generated: list[int],
               generator: torch.Generator) -> int:
    """The next token of one row: `logits` [vocab] (float32, last position), the row's settings, prompt ids,
    completion ids so far and random generator. Raises `SamplingError` when there is nothing to choose from."""
    row = _penalised(logits.clone(), params, generated, prompt)
    if torch.isnan(row).any():
        raise SamplingError("the model's next-token scores for this sequence are not numbers (nan)")
    if params.greedy:
        return int(row.argmax())
    # an overflow to +inf (huge logits over a small temperature) stays the most likely token instead of a nan
    scores = _filtered(row, params).clamp(max=torch.finfo(row.dtype).max)
    probs = scores.softmax(-1)
    if not torch.isfinite(probs).all() or not probs.sum() > 0:
        raise SamplingError("no token is left to sample from (every score is -inf after the penalties and filters)")
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def choose_next(logits: torch.Tensor, rows: list[tuple[SamplingParams, list[int], list[int], torch.Generator]]
                ) -> list[int]:
    """The next token of each row: `logits` [rows, vocab] (last position), `rows` = (params, prompt ids,
    completion ids so far, the row's random generator)."""
    logits = logits.float()
    return [choose_one(logits[i], *row) for i, row in enumerate(rows)]
