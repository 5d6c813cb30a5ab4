"""Log-probabilities of many prompts at once, computing shared prefixes once and reusing their KV cache.

Multiple-choice prompts repeat themselves: every question of a subject starts with the same few-shot examples, and
every option of a question starts with the same question. The plain path runs each full sequence. The reuse path
runs, per group of questions, their longest common token prefix once (batch 1); then per question the part its
options share; then each option's own tail, with the cached keys/values gathered to the rows that need them. Padding
inside the cache is masked through a 2-D attention mask and positions are given explicitly, so every token sees
exactly the tokens and positions it sees in the plain path: the scores are equal up to floating-point rounding.

Prefixes are found on token ids, not text, so a tokenizer that merges across a text boundary only shortens the
shared part; it never changes what is scored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmforge.model.kv_cache import cache_kwargs, output_cache


@dataclass
class Request:
    """One sequence to score: the log-probs of its last `n_target` tokens (an option's text), and/or of each of
    `candidates` as the token after the whole sequence (choice letters)."""

    ids: list[int]
    n_target: int = 0
    candidates: list[int] | None = None

    @property
    def free(self) -> int:
        """How many leading tokens may be cached: every position whose logits are read must be run."""
        return len(self.ids) - 1 - self.n_target


@dataclass
class Score:
    target_logps: list[float]  # per scored token
    candidate_logps: list[float]  # per candidate


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the sequences."""
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for other in sequences[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n


class _Rows:
    """A batch forward over left-padded rows that continue a cache: rows[i] starts at position offsets[i]."""

    def __init__(self, model: torch.nn.Module, pad_id: int):
        self.model, self.pad_id = model, pad_id

    @torch.no_grad()
    def forward(self, rows: list[list[int]], offsets: list[int], cache=None, past_mask: torch.Tensor | None = None,
                keep: int = 1):
        device = self.model.device
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + torch.tensor(offsets, device=device)[:, None]
        if past_mask is not None:
            mask = torch.cat([past_mask, mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=keep, **cache_kwargs(self.model, cache))
        return out.logits, output_cache(out), mask


def _scores(logits: torch.Tensor, requests: list[Request], tails: list[list[int]]) -> list[Score]:
    """Read each request's scores from the last positions of its (left-padded, so right-aligned) logits row."""
    logps = logits.float().log_softmax(-1)
    scores = []
    for row, (request, tail) in enumerate(zip(requests, tails, strict=True)):
        n = request.n_target
        rows = logps[row, logps.shape[1] - n - 1:]  # n rows predicting the targets, then the next-token row
        targets = torch.tensor(tail[len(tail) - n:], device=rows.device) if n else None
        target_logps = rows[:-1].gather(-1, targets[:, None]).squeeze(-1).tolist() if n else []
        candidate_logps = rows[-1, request.candidates].tolist() if request.candidates else []
        scores.append(Score(target_logps, candidate_logps))
    return scores


def _select(cache, past_mask: torch.Tensor, index: list[int], copy_cache: bool):
    cache = copy.deepcopy(cache) if copy_cache else cache
    rows = torch.tensor(index, device=past_mask.device)
    cache.batch_select_indices(rows)
    return cache, past_mask[rows]


def score_plain(model: torch.nn.Module, requests: list[Request], batch_size: int, pad_id: int) -> list[Score]:
    """Every request run in full (longest first, `batch_size` rows per forward)."""
    runner = _Rows(model, pad_id)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    scores: list[Score | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = [requests[i] for i in order[start: start + batch_size]]
        tails = [r.ids for r in chunk]
        logits, _, _ = runner.forward(tails, [0] * len(chunk), keep=max(r.n_target for r in chunk) + 1)
        for i, score in zip(order[start: start + batch_size], _scores(logits, chunk, tails), strict=True):
            scores[i] = score
    return scores  # type: ignore[return-value]


def score_group(model: torch.nn.Module, questions: list[list[Request]], batch_size: int, pad_id: int,
                progress: Callable[[int], object] | None = None) -> list[list[Score]]:
    """Scores of a group of questions (each a list of requests) that likely share a prefix, with the prefix, and
    each question's shared part, computed once."""
    runner = _Rows(model, pad_id)
    flat = [r for q in questions for r in q]
    prefix = min(common_prefix([r.ids for r in flat]), min(r.free for r in flat))
    cache, past_mask = None, None
    if prefix > 0:
        _, cache, past_mask = runner.forward([flat[0].ids[:prefix]], [0])
    # Longest questions first, so a batch pads its rows to similar lengths; results go back in the given order.
    order = sorted(range(len(questions)), key=lambda i: -max(len(r.ids) for r in questions[i]))
    results: list[list[Score]] = []
    for chunk in _question_chunks([questions[i] for i in order], batch_size):
        own = [_shared_part(q, prefix) for q in chunk]
        # A row of pure padding with nothing before it would attend to nothing (NaN under sdpa): skip the stage.
        if any(own) and (prefix > 0 or min(own) > 0):
            stage_cache, stage_mask = (None, None)
            if cache is not None:
                stage_cache, stage_mask = _select(cache, past_mask, [0] * len(chunk), copy_cache=True)
            rows = [q[0].ids[prefix: prefix + n] for q, n in zip(chunk, own, strict=True)]
            _, stage_cache, stage_mask = runner.forward(rows, [prefix] * len(chunk), stage_cache, stage_mask)
            owner = [i for i, q in enumerate(chunk) for _ in q]
            row_cache, row_mask = _select(stage_cache, stage_mask, owner, copy_cache=False)
        else:
            own = [0] * len(chunk)
            row_cache, row_mask = (None, None)
            if cache is not None:
                row_cache, row_mask = _select(cache, past_mask, [0] * sum(len(q) for q in chunk), copy_cache=True)
        requests = [r for q in chunk for r in q]
        starts = [prefix + n for q, n in zip(chunk, own, strict=True) for _ in q]
        tails = [r.ids[s:] for r, s in zip(requests, starts, strict=True)]
        logits, _, _ = runner.forward(tails, starts, row_cache, row_mask, keep=max(r.n_target for r in requests) + 1)
        scores = iter(_scores(logits, requests, tails))
        results += [[next(scores) for _ in q] for q in chunk]
        if progress:
            progress(len(chunk))
    in_order: list[list[Score]] = [[] for _ in questions]
    for i, scores_of_question in zip(order, results, strict=True):
        in_order[i] = scores_of_question
    return in_order


def _shared_part(question: list[Request], prefix: int) -> int:
    """Tokens after `prefix` that all of a question's requests share (0 for a single request: nothing to share)."""
    if len(question) < 2:
        return 0
    return max(0, min(common_prefix([r.ids for r in question]), min(r.free for r in question)) - prefix)


def _question_chunks(questions: list[list[Request]], batch_size: int):
    """Consecutive questions with at most `batch_size` requests in all (at least one question)."""
    chunk: list[list[Request]] = []
    for question in questions:
        if chunk and sum(len(q) for q in chunk) + len(question) > batch_size:
            yield chunk
            chunk = []
        chunk.append(question)
    if chunk:
        yield chunk


def score_questions(model: torch.nn.Module, questions: list[list[Request]], batch_size: int, pad_id: int,
                    reuse: bool = True, progress: Callable[[int], object] | None = None) -> list[list[Score]]:
    """Questions (each a list of requests) that likely share a prefix, scored with (`reuse`) or without prefix
    caching."""
    if reuse:
        return score_group(model, questions, batch_size, pad_id, progress)
    scores = iter(score_plain(model, [r for q in questions for r in q], batch_size, pad_id))
    results = [[next(scores) for _ in q] for q in questions]
    if progress:
        progress(len(questions))
    return results
