"""Perplexity of a corpus with a sliding window: every token is scored once, with up to `window` tokens of context.

Documents are tokenized as pretraining sees them (BOS where the tokenizer adds one, EOS after each) and joined into
one stream. The window's end advances by `stride` tokens; a window scores only the tokens the previous one did not
(the first scores all but the stream's first token), so a smaller stride gives each token more context at more
compute, and a stride close to the window is the fast, pessimistic estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Window:
    start: int
    end: int
    scored: int  # the last `scored` tokens of the window are scored


def windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows of at most `window` tokens whose ends advance by `stride`; together they score tokens 1..n-1 once
    each (with `stride == window`, the first token of each window has no context and is left out)."""
    result, scored_until, end = [], 1, min(window, n_tokens)
    while scored_until < n_tokens:
        start = max(0, end - window)
        first = max(scored_until, start + 1)
        result.append(Window(start, end, end - first))
        scored_until, end = end, min(end + stride, n_tokens)
    return result


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 1000) -> list[int]:
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for start in range(0, len(texts), batch_size):
        for ids in tokenizer(texts[start: start + batch_size])["input_ids"]:
            stream += ids + eos
    return stream


@torch.no_grad()
def perplexity(model: PreTrainedModel, stream: list[int], window: int, stride: int,
               batch_size: int = 8) -> dict[str, float]:
    """Mean negative log-likelihood (nats per token) and perplexity of `stream`."""
    spans = windows(len(stream), window, stride)
    nll, count = 0.0, 0
    for first in tqdm(range(0, len(spans), batch_size), desc="perplexity", unit="batch"):
        batch = spans[first: first + batch_size]
        width = max(w.end - w.start for w in batch)
        keep = max(w.scored for w in batch) + 1
        # Right-aligned rows (left padding) so that the scored tokens of every row are the last positions.
        ids = torch.tensor([[0] * (width - (w.end - w.start)) + stream[w.start: w.end] for w in batch],
                           device=model.device)
        mask = torch.tensor([[0] * (width - (w.end - w.start)) + [1] * (w.end - w.start) for w in batch],
                            device=model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        for row, w in enumerate(batch):
            predicting = logits[row, keep - 1 - w.scored: keep - 1].float()
            targets = ids[row, width - w.scored:]
            nll += torch.nn.functional.cross_entropy(predicting, targets, reduction="sum").item()
            count += w.scored
    loss = nll / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "windows": len(spans)}
