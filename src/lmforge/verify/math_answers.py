"""Is a completion's final answer the reference's, mathematically? (`math_verify` reward.)

Hugging Face's math-verify does the work: it finds the answer (`\\boxed{}`, "the final answer is", LaTeX or a plain
expression, the last one otherwise), normalises it (units, `\\text`, thousands separators, percentages) and compares
it symbolically with the reference through sympy (fractions, decimals, equations, sets, intervals, matrices). What
lmforge adds:

- only the answer is read: the text after the reasoning (`</think>`), and nothing from a completion whose reasoning
  never ended (a number in the middle of a thought is not an answer);
- a reference math-verify cannot find as text is tried again as LaTeX (`\\frac{1}{2}` written without `$`);
- sympy can run for minutes (or forever) on hostile input, and math-verify's timeouts are `signal.alarm`s that work
  only on a main thread: so every comparison runs in a pool of worker processes (`MathVerifier`), each with
  math-verify's own per-call timeout, and a worker that still hangs past a deadline is killed with its pool (its
  answers score 0). Nothing runs in the training process.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)


def answer_part(completion: str) -> str:
    """What follows the reasoning; empty when a `<think>` block was opened and never closed."""
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    if "<think>" in completion:
        return ""
    return completion


def _parse_reference(reference: str, timeout: int) -> list:
    from math_verify import parse

    gold = parse(reference, parsing_timeout=timeout)
    if not gold and "$" not in reference and "\\(" not in reference:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
    return gold


def check(completion: str, reference: str | None, timeout: int = 5) -> float | None:
    """1.0 when the completion's final answer equals the reference, 0.0 when not, None when the reference has no
    answer math-verify can read. Runs on the calling thread (which must be a main thread for the timeout)."""
    from math_verify import parse, verify

    if reference is None or not str(reference).strip():
        return None
    gold = _parse_reference(str(reference), timeout)
    if not gold:
        return None
    answer = answer_part(completion)
    if not answer.strip():
        return 0.0
    predicted = parse(answer, parsing_timeout=timeout)
    if not predicted:
        return 0.0
    return float(verify(gold, predicted, timeout_seconds=timeout))


def _check_safely(args: tuple[str, str | None, int]) -> float | None:
    """`check` in a worker: whatever goes wrong (a timeout included) is a wrong answer, never a dead pool."""
    try:
        return check(*args)
    except Exception:  # noqa: BLE001 - math-verify raises many things on odd input; the answer is then not verified
        return 0.0


def _warm_up() -> None:
    import math_verify  # noqa: F401 - the first call should not pay for sympy's import


class MathVerifier:
    """A pool of `workers` processes checking answers; `deadline` seconds per answer before its worker is killed."""

    def __init__(self, workers: int = 4, timeout: int = 5):
        try:
            import math_verify  # noqa: F401
        except ImportError as err:
            from lmforge.errors import ConfigError

            raise ConfigError("Config error: the `math_verify` reward needs Hugging Face's math-verify "
                              f"(`pip install math-verify`): {err}") from None
        self.workers, self.timeout = max(1, int(workers)), max(1, int(timeout))
        self.deadline = 3 * self.timeout + 5.0  # parse the answer, parse the reference, compare, plus a margin
        self._pool = None
        self._lock = threading.Lock()
        self.killed = 0  # answers whose worker had to be killed

    def _get_pool(self) -> Any:
        if self._pool is None:
            # spawn: a fresh interpreter (a fork of a training process with threads and CUDA is unsafe)
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_warm_up)
        return self._pool

    def __call__(self, completions: list[str], references: list[str | None]) -> list[float | None]:
        with self._lock:  # one batch at a time: a killed pool must not take another caller's answers with it
            pool = self._get_pool()
            pending = [pool.apply_async(_check_safely, ((c, r, self.timeout),))
                       for c, r in zip(completions, references, strict=True)]
            # every worker gets `deadline` per answer it holds; past the batch's end the rest score 0
            end = time.monotonic() + self.deadline * -(-len(pending) // self.workers)
            out: list[float | None] = []
            late = 0
            for result in pending:
                try:
                    out.append(result.get(timeout=max(0.0, end - time.monotonic())))
                except multiprocessing.TimeoutError:
                    out.append(0.0)
                    late += 1
            if late:
                self.killed += late
                logger.warning("math_verify: %d answer(s) were still being checked after %.0f s each; their workers "
                               "were killed and they score 0", late, self.deadline)
                self.close()
            return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
