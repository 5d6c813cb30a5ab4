"""Rewards for the online RL stages: reward functions (built-in or `module:function`), a reward model (or process
reward model), a reward server and (online DPO) a pairwise judge, summed.

A reward function follows TRL's convention, so functions written for TRL work unchanged:
`f(prompts: list[str], completions: list[str], **columns) -> list[float]`, where the columns are `reference` (the
dataset's answer, or None), `messages` (each prompt as chat messages) and the dataset's other columns (`tests`,
`solution`, ...). The built-ins, by name in `reward_funcs`:

- `exact_match`, `contains_reference`, `token_f1`: the completion against the reference as text;
- `math_verify`: the final answer against the reference, symbolically (`lmforge.verify.math_answers`);
- `code_exec`: the completion's program against the row's tests, sandboxed (`lmforge.verify.sandbox`);
- `format`: the completion's layout (`format_pattern`).

The functions run side by side on threads; `math_verify` and `code_exec` check `reward_workers` completions at once,
each in a process of its own, so neither sympy nor untrusted code ever runs in the training process.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmforge.config.rl import RLArguments
from lmforge.errors import ConfigError, DataError
from lmforge.verify.judge import PairwiseJudge
from lmforge.verify.math_answers import MathVerifier
from lmforge.verify.remote import RemoteReward
from lmforge.verify.sandbox import CodeTests, Limits, extract_code, row_tests, run_tests

RewardFunction = Callable[..., list[float]]
logger = logging.getLogger(__name__)


def exact_match(prompts: list[str], completions: list[str], reference: list[str | None], **_: Any) -> list[float]:
    """1.0 where the completion equals the reference answer (surrounding whitespace ignored), else 0.0."""
    return [float(ref is not None and c.strip() == ref.strip()) for c, ref in zip(completions, reference, strict=True)]


def contains_reference(prompts: list[str], completions: list[str], reference: list[str | None],
                       **_: Any) -> list[float]:
    """1.0 where the reference answer appears in the completion, else 0.0."""
    return [float(ref is not None and ref.strip() in c) for c, ref in zip(completions, reference, strict=True)]


def token_f1(prompts: list[str], completions: list[str], reference: list[str | None], **_: Any) -> list[float]:
    """Word-level F1 between the completion and the reference answer (partial credit, as in extractive QA)."""
    from collections import Counter

    scores = []
    for completion, ref in zip(completions, reference, strict=True):
        predicted, gold = completion.split(), (ref or "").split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        scores.append(0.0 if not common else 2 * common / (len(predicted) + len(gold)))
    return scores


class MathVerifyReward:
    """1.0 where the final answer (after the reasoning) equals the reference mathematically, else 0.0. A row whose
    reference math-verify cannot read scores 0: the first is named in a warning, and their count when the run ends."""

    def __init__(self, workers: int = 4, timeout: int = 5):
        self.verifier = MathVerifier(workers, timeout)
        self.unreadable_references = 0

    def __call__(self, prompts: list[str], completions: list[str], reference: list[str | None],
                 **_: Any) -> list[float]:
        checked = self.verifier(completions, reference)
        unreadable = [r for r, c in zip(reference, checked, strict=True) if c is None]
        if unreadable and not self.unreadable_references:
            logger.warning("math_verify: no answer could be read from the reference %r (a row without one scores 0; "
                           "their count is reported at the end)", unreadable[0])
        self.unreadable_references += len(unreadable)
        return [c or 0.0 for c in checked]

    def close(self) -> None:
        self.verifier.close()
        if self.unreadable_references:
            logger.warning("math_verify: %d completions scored 0 because their reference had no answer math-verify "
                           "could read", self.unreadable_references)


class CodeExecReward:
    """The share of the row's tests the completion's program passes (see `lmforge.verify.sandbox` for the test
    layouts and the limits); 0 without a program, or for a row without tests (`check_rows` says how many before the
    run starts, and refuses data where no row has any)."""

    def __init__(self, workers: int = 4, limits: Limits | None = None):
        self.workers, self.limits = max(1, int(workers)), limits or Limits()

    def check_rows(self, columns: list[dict[str, Any]]) -> None:
        missing = sum(row_tests(row) is None for row in columns)
        if columns and missing == len(columns):
            raise DataError("Data error: the `code_exec` reward needs each prompt's tests, in a column `tests` or "
                            "`test_list` (assert statements), `test` with `entry_point` (HumanEval) or "
                            "`input_output` (standard input/output pairs); no prompt has any of them.")
        if missing:
            logger.warning("code_exec: %d of %d prompts have no tests; their completions score 0", missing,
                           len(columns))

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        rows = [{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
                for i in range(len(completions))]
        suites = [row_tests(row) for row in rows]

        def score(completion: str, suite: CodeTests | None) -> float:
            return run_tests(extract_code(completion), suite, self.limits).score if suite else 0.0

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(score, completions, suites))


# one reasoning block with something in it, closed once, then an answer
DEFAULT_FORMAT = r"\s*<think>(?!.*<think>).*?\S.*?</think>(?!.*</think>)\s*\S.*"


class FormatReward:
    """1.0 where the whole completion matches `pattern` (DOTALL), else 0.0. The default wants a non-empty
    `<think>...</think>` block, then an answer. A prompt that ends by opening `<think>` (the template started the
    reasoning) counts as the completion's beginning."""

    def __init__(self, pattern: str | None = None):
        try:
            self.pattern = re.compile(pattern or DEFAULT_FORMAT, re.DOTALL)
        except re.error as err:
            raise ConfigError(f"Config error: format_pattern {pattern!r} is not a regular expression: {err}") from None

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        scores = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if prompt.rstrip().endswith("<think>") and "<think>" not in completion:
                completion = "<think>" + completion
            scores.append(float(self.pattern.fullmatch(completion) is not None))
        return scores


def format_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """The `format` built-in with the default pattern (for use outside a run, e.g. with TRL)."""
    return FormatReward()(prompts, completions, **columns)


def math_verify(prompts: list[str], completions: list[str], reference: list[str | None], **_: Any) -> list[float]:
    """The `math_verify` built-in with default settings (one pool of worker processes per Python process)."""
    global _MATH
    if _MATH is None:
        _MATH = MathVerifyReward()
    return _MATH(prompts, completions, reference)


def code_exec(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """The `code_exec` built-in with default limits."""
    return CodeExecReward()(prompts, completions, **columns)


_MATH: MathVerifyReward | None = None
# built-in rewards by the name `reward_funcs` gives them; those with settings are made per run (`make_builtin`)
BUILTINS: dict[str, RewardFunction] = {
    "exact_match": exact_match, "contains_reference": contains_reference, "token_f1": token_f1,
    "math_verify": math_verify, "code_exec": code_exec, "format": format_reward,
}


def make_builtin(name: str, rl: RLArguments | None = None) -> RewardFunction:
    """A built-in reward with the run's settings (the defaults without `rl`)."""
    rl = rl or RLArguments()
    if name == "math_verify":
        return MathVerifyReward(rl.reward_workers, rl.math_verify_timeout)
    if name == "code_exec":
        return CodeExecReward(rl.reward_workers, Limits(rl.code_exec_timeout, rl.code_exec_memory_mb))
    if name == "format":
        return FormatReward(rl.format_pattern)
    return BUILTINS[name]


def load_function(spec: str) -> RewardFunction:
    """`package.module:function` or `path/to/file.py:function`."""
    module_name, sep, name = spec.strip().rpartition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"Config error: reward function '{spec}' must be a built-in ({', '.join(BUILTINS)}) or "
                          "written 'module:function' or 'path/to/file.py:function'.")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ConfigError(f"Config error: reward function file '{module_name}' does not exist.")
            loader = importlib.util.spec_from_file_location(f"lmforge_reward_{abs(hash(module_name))}", module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"Config error: could not import the reward function module '{module_name}': {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"Config error: '{module_name}' has no function '{name}'.")
    return function


def reward_function(spec: str, rl: RLArguments | None = None) -> RewardFunction:
    """A `reward_funcs` entry: a built-in's name (with the run's settings) or a function to import."""
    return make_builtin(spec, rl) if spec in BUILTINS else load_function(spec)


class Rewarder:
    """The weighted sum of every configured reward for a batch of completions."""

    def __init__(self, reward_funcs: str | None, reward_model: str | None, device: Any = None,
                 rl: RLArguments | None = None):
        rl = rl or RLArguments()
        specs = [spec.strip() for spec in (reward_funcs or "").split(",") if spec.strip()]
        self.functions = [(spec.rpartition(":")[2], reward_function(spec, rl)) for spec in specs]
        # the weights were checked with the config (`stage_checks.reward_settings`)
        self.weights = [float(w) for w in rl.reward_weights.split(",")] if rl.reward_weights else [1.0] * len(specs)
        if rl.reward_url:
            self.functions.append(("remote", RemoteReward(rl.reward_url, rl.reward_url_timeout,
                                                          rl.reward_url_retries)))
            self.weights.append(1.0)
        if rl.judge_url:  # online DPO: a judge picks each pair's better completion (1 for it, 0 for the other)
            self.functions.append(("judge", PairwiseJudge(
                rl.judge_url, rl.judge_model or "", rl.judge_template, rl.judge_rubric,
                os.environ.get(rl.judge_api_key_env), rl.reward_url_timeout, rl.reward_url_retries,
                rl.reward_workers)))
            self.weights.append(1.0)
        self.scorer = None
        if reward_model:  # an outcome reward model, or a process reward model's steps reduced (`prm_reduction`)
            from lmforge.model.reward import reward_scorer

            self.scorer = reward_scorer(reward_model, device, rl.prm_reduction)
        self.threads = ThreadPoolExecutor(max(1, len(self.functions))) if self.functions else None

    def _timed(self, function: RewardFunction, **kwargs: Any) -> tuple[list[float], float]:
        started = time.perf_counter()
        return function(**kwargs), time.perf_counter() - started

    def __call__(self, prompts: list[str], completions: list[str], messages: list[list[dict]],
                 reference: list[str | None], conversation: list[list[dict]] | None = None,
                 columns: list[dict[str, Any]] | None = None) -> tuple[list[float], dict[str, float]]:
        """(total reward per completion, mean of each part: `reward/<name>`, and each function's seconds:
        `reward_seconds/<name>`). With tools, `conversation` is each completion's exchange after the prompt (model
        turns and tool results; the completion is its last turn). `columns`: each row's other dataset columns."""
        started = time.perf_counter()
        total = [0.0] * len(completions)
        parts: dict[str, float] = {}
        kwargs: dict[str, Any] = {"prompts": prompts, "completions": completions, "reference": reference,
                                  "messages": messages}
        if conversation is not None:
            kwargs["conversation"] = conversation
        for key in sorted({k for row in columns or [] for k in row} - set(kwargs)):
            kwargs[key] = [row.get(key) for row in columns]
        futures = [(name, weight, self.threads.submit(self._timed, function, **kwargs))
                   for (name, function), weight in zip(self.functions, self.weights, strict=True)]
        if self.scorer is not None:  # the reward model on this thread, while the functions run on theirs
            scored_at = time.perf_counter()
            scores = self.scorer.score_replies(messages, completions)
            parts["reward_seconds/model"] = time.perf_counter() - scored_at
            total = [t + s for t, s in zip(total, scores, strict=True)]
            parts["reward/model"] = sum(scores) / len(scores)
        for name, weight, future in futures:
            scores, seconds = future.result()
            if len(scores) != len(completions):
                raise ConfigError(f"Config error: reward function '{name}' returned {len(scores)} scores for "
                                  f"{len(completions)} completions.")
            scores = [float(s) for s in scores]
            total = [t + weight * s for t, s in zip(total, scores, strict=True)]
            mean = sum(scores) / len(scores)
            parts[f"reward/{name}"] = mean
            parts[f"reward/{name}_std"] = (sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
            parts[f"reward_seconds/{name}"] = seconds
        parts["reward_seconds"] = time.perf_counter() - started
        return total, parts

    def check_rows(self, columns: list[dict[str, Any]]) -> None:
        """Before the run: each reward that reads dataset columns checks the prompts have them (`code_exec`)."""
        for _, function in self.functions:
            if hasattr(function, "check_rows"):
                function.check_rows(columns)

    def close(self) -> None:
        """Stops the worker processes and threads."""
        for _, function in self.functions:
            if hasattr(function, "close"):
                function.close()
        if self.threads is not None:
            self.threads.shutdown(wait=False)
