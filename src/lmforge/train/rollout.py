"""Rollouts for online RL: sample completions of prompts with the KV cache, then score their tokens.

Sequences are laid out [left-padded prompt | completion, right-padded], so one forward pass scores a whole batch;
position ids come from the attention mask, exactly as `generate` numbered the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.config.generation import GenerationArguments


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [batch, prompt_width + completion tokens]
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # [batch, completion tokens]: 1 up to and including the stop token
    prompt_width: int
    truncated: torch.Tensor | None = None  # [batch] bool: cut at max_new_tokens without a stop token

    def select(self, rows: torch.Tensor) -> Rollout:
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.completion_mask[rows], self.prompt_width,
                       self.truncated[rows] if self.truncated is not None else None)


@torch.no_grad()
def sample_completions(model: torch.nn.Module, prompts: list[list[int]], gen: GenerationArguments, pad_id: int,
                       stop_ids: list[int]) -> Rollout:
    """One sampled completion per prompt (temperature/top-p/top-k/repetition_penalty from `gen`), ending at a stop
    token or at `max_new_tokens`."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    was_training = model.training
    model.eval()
    output = model.generate(input_ids=input_ids, attention_mask=prompt_mask, max_new_tokens=gen.max_new_tokens,
                            do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                            repetition_penalty=gen.repetition_penalty, pad_token_id=pad_id, eos_token_id=stop_ids,
                            use_cache=True)
    model.train(was_training)
    completion = output[:, width:]
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=device))
    # valid: every token up to and including the first stop token
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0
    completion_mask = (~after_stop).long()
    return Rollout(output, torch.cat([prompt_mask, completion_mask], dim=1), completion_mask, width,
                   truncated=~is_stop.any(-1))


def completion_logps(model: torch.nn.Module, rollout: Rollout, temperature: float = 1.0,
                     value_head: torch.nn.Module | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per completion token: log-probability under `model` (logits / temperature, the distribution sampled from),
    entropy, and the value head's estimate of the state before the token."""
    position_ids = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=position_ids,
                use_cache=False, output_hidden_states=value_head is not None)
    start = rollout.prompt_width - 1
    logits = out.logits[:, start:-1].float() / temperature
    targets = rollout.input_ids[:, rollout.prompt_width:]
    normaliser = torch.logsumexp(logits, dim=-1)
    logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    entropy = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, start:-1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logps, entropy.detach(), values
