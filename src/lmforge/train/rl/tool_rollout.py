"""Multi-turn rollouts with tools (`env_funcs`, `max_turns`): the model's turns alternate with the tool results an
environment function returns, through the chat template, until the model answers without a call or `max_turns`
model turns are done.

Each model turn is sampled as any completion (`rollout.sample_completions`, one seeded generator per row and turn).
The conversation then takes the turn as the model wrote it (its raw text as the assistant content, so the template
reproduces those very characters) and the tool messages; the tokens between the end of the model's turn and the next
generation prompt are the template's rendering of the tool results, found by rendering the conversation and taking
what follows the text decoded so far. Those tokens join the sequence but carry no loss (`Rollout.trained_mask`); only
the model's own tokens are trained. If the template re-renders earlier text differently (so the decoded text is not
a prefix of the new rendering), that row's rollout ends there, counted as `tool_turns_cut`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lmforge.config.generation import GenerationArguments
from lmforge.data.template import render
from lmforge.data.tool_calls import parse_tool_calls
from lmforge.train.rl.rollout import Rollout, rollout_from_tokens, sample_completions

EnvFunction = Callable[..., list[dict]]


@dataclass
class _Row:
    ids: list[int]  # prompt and everything after it so far
    messages: list[dict]
    segments: list[tuple[list[int], bool]] = field(default_factory=list)  # (tokens, the model's own)
    calls: int = 0
    done: bool = False
    truncated: bool = False  # the last model turn hit max_new_tokens


def tool_messages(env: EnvFunction, calls: list[dict], messages: list[dict], **columns: Any) -> list[dict]:
    """The environment's answer to the calls, as tool messages (a plain string becomes one). A call the environment
    cannot handle (it raises: a malformed argument, an unknown tool) is answered with the error, as a tool would,
    and the model goes on."""
    try:
        out = env(calls, messages, **columns)
    except Exception as err:  # noqa: BLE001 - the model's call was bad, not the run
        out = [f"error: {type(err).__name__}: {err}"]
    if isinstance(out, dict | str):
        out = [out]
    result = []
    for item in out:
        message = {"role": "tool", "content": item} if isinstance(item, str) else dict(item)
        message.setdefault("role", "tool")
        if not isinstance(message.get("content"), str):
            message["content"] = json.dumps(message.get("content"), ensure_ascii=False)
        result.append(message)
    return result


@torch.no_grad()
def sample_with_tools(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                      conversations: list[list[dict]], tools: list[list | None], columns: list[dict],
                      env: EnvFunction, max_turns: int, gen: GenerationArguments, stop_ids: list[int],
                      seeds: list[int]) -> tuple[Rollout, list[list[dict]], dict[str, float]]:
    """Multi-turn completions of `prompts` (each row: its prompt messages, tools and reward columns); returns the
    rollout (whole sequences, `trained_mask` on the model's tokens), each row's conversation after the prompt, and
    counts (tool calls per completion, rows cut)."""
    pad = tokenizer.pad_token_id
    rows = [_Row(list(p), list(m)) for p, m in zip(prompts, conversations, strict=True)]
    cut = 0
    for turn in range(max_turns):
        active = [i for i, r in enumerate(rows) if not r.done]
        if not active:
            break
        part = sample_completions(model, [rows[i].ids for i in active], gen, pad, stop_ids,
                                  [seeds[i] * 31 + turn for i in active])
        for k, i in enumerate(active):
            row = rows[i]
            tokens = part.input_ids[k, part.prompt_width:][part.completion_mask[k].bool()].tolist()
            row.segments.append((tokens, True))
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            _, calls = parse_tool_calls(text)
            row.messages.append({"role": "assistant", "content": text})
            row.truncated = bool(part.truncated[k]) if part.truncated is not None else False
            if not calls or turn == max_turns - 1 or row.truncated:
                row.done = True
                continue
            row.calls += 1
            row.messages += tool_messages(env, calls, row.messages, **columns[i])
            so_far = tokenizer.decode(row.ids + tokens, skip_special_tokens=False)
            rendered = render(tokenizer, row.messages, tools[i], add_generation_prompt=True)
            if not rendered.startswith(so_far):
                row.done, cut = True, cut + 1
                continue
            tool_tokens = tokenizer(rendered[len(so_far):], add_special_tokens=False)["input_ids"]
            row.segments.append((tool_tokens, False))
            row.ids = row.ids + tokens + tool_tokens
    return _as_rollout(rows, prompts, pad, model), [r.messages[len(c):] for r, c in zip(
        rows, conversations, strict=True)], {"tool_calls": sum(r.calls for r in rows) / max(len(rows), 1),
                                             "tool_turns_cut": float(cut)}


def _as_rollout(rows: list[_Row], prompts: list[list[int]], pad: int, model: torch.nn.Module) -> Rollout:
    """[left-padded prompt | model and tool tokens, right-padded]: the tokens are all part of the completion (no
    stop token ends it: tool results are rendered with end-of-turn tokens), loss only on the model's own, truncated
    when the last model turn hit `max_new_tokens`."""
    device = next(model.parameters()).device
    tails = [[t for tokens, _ in r.segments for t in tokens] for r in rows]
    rollout = rollout_from_tokens(prompts, tails, pad, stop_ids=[], device=device)
    width = rollout.completion_mask.shape[1]
    trained = [[int(own) for tokens, own in r.segments for _ in tokens] for r in rows]
    trained_mask = torch.tensor([m + [0] * (width - len(m)) for m in trained], device=device)
    return replace(rollout, truncated=torch.tensor([r.truncated for r in rows], device=device),
                   trained_mask=trained_mask)
