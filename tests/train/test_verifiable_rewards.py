"""The reasoning rewards: `math_verify` scores answers in many surface forms as math-verify does (only the answer after
the reasoning, every comparison in a worker process with a timeout), `format` checks the reasoning layout, a reward
server is called with retries, and the rewards run side by side, weighted, with their columns and timings."""

from __future__ import annotations

import threading

import pytest
import torch

from lmforge.config.rl import RLArguments
from lmforge.config.stage_checks import REWARD_BUILTINS
from lmforge.errors import TrainingError
from lmforge.train.rl.losses import overlong_penalty, reinforce_pp_advantages, whiten
from lmforge.train.rl.rewards import BUILTINS, FormatReward, MathVerifyReward, Rewarder
from lmforge.verify.math_answers import MathVerifier, answer_part, check
from lmforge.verify.remote import RemoteReward
from tests.json_server import JsonServer

# (reference, completion, verified): the surface forms of math answers
SURFACE_FORMS = [
    ("1/2", "The answer is \\frac{1}{2}.", 1.0),
    ("0.5", "So we get $\\boxed{\\frac12}$", 1.0),
    ("\\frac{1}{2}", "so x = 0.5", 1.0),  # a LaTeX reference without delimiters
    ("72", "She earned 72 dollars in total.", 1.0),  # trailing text
    ("10", "The length is $\\boxed{10\\text{ cm}}$.", 1.0),  # units
    ("1000", "The total is 1,000.", 1.0),  # thousands separator
    ("0.5", "$\\boxed{50\\%}$", 1.0),  # percentage
    ("x=2", "$x = 2$", 1.0),
    ("(1,2]", "$\\boxed{(1, 2]}$", 1.0),  # interval
    ("\\sqrt{2}/2", "$\\frac{\\sqrt{2}}{2}$", 1.0),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "The answer is 72", 1.0),  # GSM8K's reference
    ("4", "\\boxed{3}", 0.0),
    ("4", "<think>maybe 3</think> The answer is 4", 1.0),
    ("3", "<think>maybe 3</think> The answer is 4", 0.0),  # a number in the reasoning is not the answer
    ("4", "<think>so the answer is 4", 0.0),  # the reasoning never ended
    ("4", "", 0.0),
]


@pytest.mark.parametrize("reference, completion, verified", SURFACE_FORMS)
def test_answers_in_many_surface_forms(reference, completion, verified):
    from math_verify import parse, verify

    assert check(completion, reference) == verified
    if "<think>" not in completion and completion:  # math-verify's own verdict (on the reference as LaTeX when
        gold = parse(reference) or parse(f"${reference}$")  # it cannot read it as text)
        assert float(verify(gold, parse(completion))) == verified


def test_the_answer_is_what_follows_the_reasoning():
    assert answer_part("<think>a</think>b") == "b"
    assert answer_part("<think>a") == ""
    assert answer_part("plain") == "plain"
    assert check("42", None) is None and check("42", "  ") is None


@pytest.fixture(scope="module")
def math_reward():
    reward = MathVerifyReward(workers=2, timeout=2)
    yield reward
    reward.close()


def test_math_verify_reward_checks_a_batch_in_worker_processes(math_reward):
    references = [r for r, _, _ in SURFACE_FORMS] + [None]  # a row without a reference
    completions = [c for _, c, _ in SURFACE_FORMS] + ["7"]
    scores = math_reward([""] * len(completions), completions, references)
    assert scores == [v for _, _, v in SURFACE_FORMS] + [0.0]
    assert math_reward.unreadable_references == 1


def test_a_comparison_that_runs_too_long_scores_zero_and_the_pool_recovers(math_reward):
    tower = "$\\boxed{9^{9^{9^{9}}}}$"  # sympy would evaluate this for ever
    assert math_reward([""] * 2, [tower, "2"], ["1", "2"]) == [0.0, 1.0]  # math-verify's own timeout, in a worker
    stuck = MathVerifier(workers=1, timeout=30)
    stuck.deadline = 1.0  # the worker's own timeout is longer: the pool is killed at the deadline
    try:
        assert stuck([tower, "2"], ["1", "2"]) == [0.0, 0.0]
        assert stuck.killed == 2 and stuck._pool is None
        assert stuck(["2"], ["2"]) == [1.0]  # a new pool
    finally:
        stuck.close()


@pytest.mark.parametrize("prompt, completion, expected", [
    ("Q", "<think>\nreasoning\n</think>\nThe answer is 4.", 1.0),
    ("Q", "<think></think>The answer is 4.", 0.0),  # empty reasoning
    ("Q", "<think>reasoning</think>", 0.0),  # no answer
    ("Q", "The answer is 4.", 0.0),
    ("Q", "<think>a</think><think>b</think> 4", 0.0),  # two blocks
    ("<|im_start|>assistant\n<think>\n", "reasoning\n</think>\n\nThe answer is 4.", 1.0),  # the template opened it
])
def test_format_reward_wants_one_reasoning_block_then_an_answer(prompt, completion, expected):
    assert FormatReward()([prompt], [completion]) == [expected]


def test_format_pattern_is_configurable():
    reward = FormatReward(r"<reasoning>.+</reasoning>\s*<answer>.+</answer>")
    assert reward(["", ""], ["<reasoning>r</reasoning> <answer>4</answer>", "<answer>4</answer>"]) == [1.0, 0.0]


def test_format_and_math_rewards_on_qwen3s_own_template_and_tokenizer():
    """The loop decodes prompts with their special tokens and completions without: on Qwen3's real tokenizer the
    reasoning tags survive that, and its thinking template leaves the completion to open the block."""
    from transformers import AutoTokenizer

    from tests.real_models import REAL_MODELS

    if not (REAL_MODELS / "qwen3" / "tokenizer.json").is_file():
        pytest.skip(f"no qwen3 tokenizer in {REAL_MODELS}")
    tokenizer = AutoTokenizer.from_pretrained(REAL_MODELS / "qwen3")
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}],
                                               add_generation_prompt=True, tokenize=True, enable_thinking=True)
    prompt_ids = prompt_ids if isinstance(prompt_ids, list) else prompt_ids["input_ids"]
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    sampled = tokenizer("<think>\nThree plus four.\n</think>\n\nThe answer is $\\boxed{7}$.<|im_end|>",
                        add_special_tokens=False)["input_ids"]
    completion = tokenizer.decode(sampled, skip_special_tokens=True)
    assert completion.startswith("<think>") and not completion.endswith("<|im_end|>")
    assert FormatReward()([prompt], [completion]) == [1.0]
    assert check(completion, "7") == 1.0 and check(completion, "3") == 0.0


def RewardServer(script: list) -> JsonServer:  # noqa: N802 - reads as the server it starts
    """A reward server on loopback: answers the rewards of `script` in turn (an int is an HTTP error status)."""
    script = list(script)

    def answer(body: dict) -> tuple[int, object]:
        reply = script.pop(0) if script else {"rewards": [0.0] * len(body["completions"])}
        if isinstance(reply, int):
            return reply, b"busy" if reply >= 500 else b"bad request: no prompts"
        return 200, reply

    return JsonServer(answer, "/score")


def test_reward_server_gets_the_batch_and_its_columns_and_is_retried():
    server = RewardServer([503, 502, {"rewards": [0.5, 1.0]}])
    try:
        reward = RemoteReward(server.url, timeout=5, retries=3, backoff=0.01)
        scores = reward(["p1", "p2"], ["c1", "c2"], reference=["r1", None], tests=[["t"], []])
        assert scores == [0.5, 1.0]
        assert len(server.requests) == 3
        assert server.requests[-1] == {"prompts": ["p1", "p2"], "completions": ["c1", "c2"],
                                       "references": ["r1", None], "tests": [["t"], []]}
    finally:
        server.close()


@pytest.mark.parametrize("script, message", [
    ([400], "answered 400: bad request"),
    ([503, 503], "did not answer after 2 attempts"),
    ([{"scores": [1]}], "answered something other than"),
    ([{"rewards": [1.0]}], "returned 1 rewards for 2 completions"),
])
def test_reward_server_failures_stop_the_run_with_what_it_said(script, message):
    server = RewardServer(script)
    try:
        with pytest.raises(TrainingError, match=message):
            RemoteReward(server.url, timeout=5, retries=1, backoff=0.01)(["a", "b"], ["c", "d"])
    finally:
        server.close()


def test_an_unreachable_reward_server_is_named():
    with pytest.raises(TrainingError, match=r"127\.0\.0\.1:9/score did not answer after 1 attempts .*refused"):
        RemoteReward("http://127.0.0.1:9/score", timeout=2, retries=0)(["a"], ["b"])


def test_the_built_in_names_are_the_ones_the_config_accepts():
    assert set(BUILTINS) == set(REWARD_BUILTINS)


def test_rewards_run_side_by_side_weighted_with_the_rows_columns_and_timed(tmp_path):
    # each function waits for the other: they finish only if they run at the same time
    both = threading.Barrier(2, timeout=10)
    (tmp_path / "side.py").write_text(
        "import threading\n"
        "def first(prompts, completions, tests, **_):\n"
        "    BARRIER.wait()\n"
        "    return [float(len(t)) for t in tests]\n"
        "def second(prompts, completions, reference, **_):\n"
        "    BARRIER.wait()\n"
        "    return [1.0 if c == r else 0.0 for c, r in zip(completions, reference)]\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("side", tmp_path / "side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.BARRIER = both
    import sys

    sys.modules["side_rewards"] = module
    try:
        rewarder = Rewarder("side_rewards:first,side_rewards:second", None, rl=RLArguments(reward_weights="2.0,0.5"))
        total, parts = rewarder(["p", "q"], ["a", "b"], [[], []], ["a", "z"],
                                columns=[{"tests": [1, 2, 3]}, {"tests": []}])
        rewarder.close()
    finally:
        del sys.modules["side_rewards"]
    assert total == [2.0 * 3 + 0.5 * 1, 0.0]
    assert parts["reward/first"] == 1.5 and parts["reward/second"] == 0.5
    assert {"reward_seconds/first", "reward_seconds/second", "reward_seconds"} <= set(parts)


# ---- REINFORCE++ and overlong shaping against the published formulas -------------------------------------------

def verl_masked_whiten(values, mask):
    """verl's `masked_whiten` (verl/utils/torch_functional.py): unbiased masked variance, shift_mean=True."""
    mean = (values * mask).sum() / mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / mask.sum()
    var = var * mask.sum() / (mask.sum() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def verl_reinforce_pp(token_level_rewards, response_mask, gamma):
    """verl's `compute_reinforce_plus_plus_outcome_advantage`."""
    returns = torch.zeros_like(token_level_rewards)
    running_return = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        running_return = token_level_rewards[:, t] + gamma * running_return
        returns[:, t] = running_return
        running_return = running_return * response_mask[:, t]
    return verl_masked_whiten(returns, response_mask) * response_mask


def verl_reinforce_pp_baseline(token_level_rewards, response_mask, index):
    """verl's `compute_reinforce_plus_plus_baseline_outcome_advantage`."""
    scores = token_level_rewards.sum(dim=-1)
    groups: dict = {}
    for i, key in enumerate(index):
        groups.setdefault(key, []).append(scores[i])
    means = {k: torch.mean(torch.stack(v)) if len(v) > 1 else torch.tensor(0.0) for k, v in groups.items()}
    scores = torch.stack([scores[i] - means[key] for i, key in enumerate(index)])
    scores = scores.unsqueeze(-1).tile([1, token_level_rewards.shape[-1]]) * response_mask
    return verl_masked_whiten(scores, response_mask) * response_mask


def verl_kl_in_reward(scores, logps, ref_logps, mask, beta):
    """verl's `apply_kl_penalty` with `kl_penalty: kl`: the score on the last valid token, minus beta * (log pi -
    log ref) on every token."""
    token_scores = torch.zeros_like(logps)
    last = mask.sum(-1).long() - 1
    token_scores[torch.arange(len(scores)), last] = scores
    return token_scores - beta * (logps - ref_logps) * mask


@pytest.fixture
def rollout_tensors():
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    logps = -torch.rand(4, 4, generator=generator) * mask
    ref_logps = -torch.rand(4, 4, generator=generator) * mask
    return torch.tensor([1.0, 0.0, 0.5, 2.0]), logps, ref_logps, mask


def test_reinforce_plus_plus_equals_the_published_formula(rollout_tensors):
    scores, logps, ref_logps, mask = rollout_tensors
    token_rewards = verl_kl_in_reward(scores, logps, ref_logps, mask, 0.1)
    ours = reinforce_pp_advantages(scores, logps, ref_logps, mask, kl_coef=0.1)
    assert torch.allclose(ours, verl_reinforce_pp(token_rewards, mask, 1.0), atol=1e-6)
    assert torch.allclose(reinforce_pp_advantages(scores, logps, ref_logps, mask, 0.1, gamma=0.9),
                          verl_reinforce_pp(token_rewards, mask, 0.9), atol=1e-6)


def test_reinforce_plus_plus_baseline_equals_the_published_formula(rollout_tensors):
    scores, logps, ref_logps, mask = rollout_tensors
    token_rewards = verl_kl_in_reward(scores, logps, ref_logps, mask, 0.05)
    ours = reinforce_pp_advantages(scores, logps, ref_logps, mask, kl_coef=0.05, group_size=2)
    assert torch.allclose(ours, verl_reinforce_pp_baseline(token_rewards, mask, [0, 0, 1, 1]), atol=1e-6)


def test_whitening_uses_the_unbiased_variance_as_trl_and_verl(rollout_tensors):
    _, logps, _, mask = rollout_tensors
    assert torch.allclose(whiten(logps, mask), verl_masked_whiten(logps, mask) * mask, atol=1e-6)


def test_overlong_penalty_equals_trls_soft_overlong_punishment():
    from trl.rewards import get_soft_overlong_punishment

    trl_reward = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    lengths = [10, 80, 81, 90, 99, 100]
    expected = trl_reward([[1] * n for n in lengths])
    assert overlong_penalty(torch.tensor(lengths), 100, 20).tolist() == pytest.approx(expected)
    assert overlong_penalty(torch.tensor([90]), 100, 20, factor=0.5).tolist() == pytest.approx([-0.25])
