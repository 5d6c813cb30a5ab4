"""Stages ppo and grpo end to end on a tiny model: both raise the mean of a simple programmatic reward, PPO resumes
an interrupted run exactly, rewards can come from a reward model, and bad settings are clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.train.runtime.checkpoint import STAGING_DIR, list_checkpoints
from tests.conftest import write_jsonl
from tests.train.test_resume import start_training, wait_for_step

TIMINGS = ("rollout_seconds", "update_seconds", "rollout_tokens_per_second")


def without_timings(record: dict) -> dict:
    """A log record without its wall-clock figures (the phases' and each reward's seconds)."""
    return {k: v for k, v in record.items() if k not in TIMINGS and "reward_seconds" not in k}

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

VOWELS = '''
def vowel_share(prompts, completions, **columns):
    """The share of the completion's characters that are lowercase vowels."""
    assert len(columns["reference"]) == len(completions) and isinstance(columns["messages"][0], list)
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rewards") / "vowels.py"
    path.write_text(VOWELS)
    return f"{path}:vowel_share"


def rl_args(stage: str, model_dir: str, out, **extra) -> list[str]:
    args = {"stage": stage, "model_name_or_path": model_dir, "template": "chatml",
            "dataset": "lmforge_sft_quickstart", "max_samples": 400, "cutoff_len": 64, "output_dir": str(out),
            "per_device_train_batch_size": 16, "rollout_batch_size": 16, "learning_rate": 1e-2, "max_steps": 30,
            "logging_steps": 5, "save_steps": 10, "report_to": "none", "disable_tqdm": True, "seed": 1,
            "max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    args.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


def rewards(out) -> list[float]:
    return [json.loads(line)["reward"] for line in open(out / "trainer_log.jsonl")]


def rise(curve: list[float]) -> float:
    """How much the mean reward rose: the last two logged means (the last ten steps) against the first (five steps).
    Two means rather than the last one: a single logged mean rides on one stretch of the trajectory."""
    return sum(curve[-2:]) / 2 - curve[0]


# The learning tests' budget (40 steps) and bar, measured on the 2-core CPU machine (torch 2.13 CPU, transformers
# 5.25, trl 1.16) over seeds 1-8 of these tests: the rise was at least 0.46 (dapo), 0.65 (grpo), 0.30 (dr_grpo),
# 0.47 (bnpo) and 0.51 (ppo). An unchanged policy (learning rate 1e-12) rises by -0.005..0.01, so the bar of 0.12
# is 2.5x below the slowest variant's worst seed and still ten times the noise. (At the former 30 steps and a bar of
# 0.2 on the last logged mean, dr_grpo rose 0.17-0.21 and PPO 0.11-0.55 over seeds: a release that moved one
# sampled token could turn CI red.)
RISE = 0.12


@pytest.mark.parametrize("variant", [
    {"loss_type": "dapo"},
    {"loss_type": "grpo", "scale_rewards": "batch"},
    # unscaled advantages and a constant normaliser make smaller steps: a larger learning rate
    {"loss_type": "dr_grpo", "scale_rewards": "none", "advantage_estimator": "rloo", "learning_rate": 1.5e-2},
    {"loss_type": "bnpo", "epsilon_high": 0.28, "filter_zero_variance_groups": True},
    {"loss_type": "dapo", "advantage_estimator": "reinforce_plus_plus_baseline", "kl_coef": 0.01},
], ids=lambda v: v.get("advantage_estimator", v["loss_type"]))
def test_grpo_raises_the_mean_reward(tiny_model_dir, reward_file, tmp_path, variant):
    out = tmp_path / "grpo"
    settings = {"learning_rate": 5e-3, **variant}
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, reward_funcs=reward_file, rollout_batch_size=8,
                                   num_generations=4, plot_loss=True, max_steps=40, **settings)]) == 0
    curve = rewards(out)
    assert rise(curve) > RISE, curve
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    assert {"kl", "entropy", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "reward/vowel_share",
            "reward/vowel_share_std",
            "reward_std", "completion_length", "completion_length_max", "truncated_fraction", "rollout_seconds",
            "update_seconds", "rollout_tokens_per_second"} <= set(log[-1])
    if variant.get("filter_zero_variance_groups"):
        assert all("zero_variance_groups" in r for r in log if "reward" in r)
    assert (out / "training_reward.png").exists() and (out / "training_kl.png").exists()
    assert (out / "model.safetensors").exists() and (out / "checkpoint-30").is_dir()


HALF_FLAT = '''
def half_flat(prompts, completions, **_):
    """No signal for prompts of odd length (every completion scores 0); the completion's length mod 3 otherwise."""
    return [0.0 if len(p) % 2 else float(len(c) % 3) for p, c in zip(prompts, completions)]
'''


def test_dynamic_sampling_draws_groups_until_the_batch_has_a_signal(tiny_model_dir, tmp_path):
    (tmp_path / "flat.py").write_text(HALF_FLAT)
    out = tmp_path / "dynamic"
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, reward_funcs=f"{tmp_path / 'flat.py'}:half_flat",
                                   rollout_batch_size=4, num_generations=4, max_steps=3, logging_steps=1,
                                   per_device_train_batch_size=8, dynamic_sampling=True, max_sampling_rounds=4,
                                   save_strategy="no")]) == 0
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    assert len(log) == 3 and all(1 <= r["sampling_rounds"] <= 4 and r["kept_groups"] <= 4 for r in log)
    assert any(r["sampling_rounds"] > 1 for r in log), log  # about half of the first round's groups are flat
    assert all(r["kept_groups"] == 4 for r in log if r["sampling_rounds"] < 4)  # it stops once the batch is full


def test_grpo_with_verifiable_rewards_reinforce_plus_plus_and_overlong_shaping(tiny_model_dir, tmp_path):
    """TRL's layout (a `prompt` column, the answer in `solution`) with extra columns the rewards read: the logged
    reward is the weighted sum of its parts, and each part's time is logged."""
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "solution": str(a + b),
             "test_list": [f"assert add({a}, {b}) == {a + b}"]} for a in range(4) for b in range(3)]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    out = tmp_path / "verified"
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, dataset=str(data), max_samples=100,
                                   reward_funcs="math_verify,format,code_exec", reward_weights="1.0,0.5,2.0",
                                   advantage_estimator="reinforce_plus_plus", num_generations=2, overlong_buffer=4,
                                   rollout_batch_size=4, per_device_train_batch_size=8, max_steps=2,
                                   logging_steps=1, reward_workers=2, code_exec_timeout=2.0,
                                   save_strategy="no")]) == 0
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    for record in log:
        parts = (record["reward/math_verify"] + 0.5 * record["reward/format"] + 2.0 * record["reward/code_exec"]
                 + record["reward/overlong"])
        assert record["reward"] == pytest.approx(parts, abs=1e-5)
        assert record["reward/overlong"] <= 0 and record["reward_seconds"] > 0
        assert {"reward_seconds/math_verify", "reward_seconds/format", "reward_seconds/code_exec"} <= set(record)


def test_grpo_masks_truncated_completions(tiny_model_dir, reward_file, tmp_path):
    """Every completion is cut at max_new_tokens=2 here: with mask_truncated_completions none carries loss, so the
    policy does not move (and the log says so)."""
    out = tmp_path / "masked"
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, reward_funcs=reward_file, rollout_batch_size=4,
                                   num_generations=2, max_new_tokens=2, max_steps=2, logging_steps=1,
                                   mask_truncated_completions=True, kl_coef=0.0, save_strategy="no")]) == 0
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    # a step whose completions were all cut is skipped (a rare completion that ends within 2 tokens trains)
    assert any(r["truncated_fraction"] == 1.0 for r in log), log
    assert all(r.get("skipped_updates") == 1.0 and "loss" not in r for r in log if r["truncated_fraction"] == 1.0)
    if all(r["truncated_fraction"] == 1.0 for r in log):
        before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(out / "model.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_ppo_raises_the_mean_reward(tiny_model_dir, reward_file, tmp_path):
    out = tmp_path / "ppo"
    assert main(["train", *rl_args("ppo", tiny_model_dir, out, reward_funcs=reward_file, kl_coef=0.01,
                                   max_steps=40)]) == 0
    curve = rewards(out)
    assert rise(curve) > RISE, curve
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    assert {"value_loss", "kl", "entropy", "clip_fraction"} <= set(log[-1])
    assert (out / "value_head.safetensors").exists()


def test_ppo_resumed_after_an_interruption_continues_the_same_run(tiny_model_dir, reward_file, tmp_path):
    straight = tmp_path / "straight"
    args = dict(reward_funcs=reward_file, max_steps=6, save_steps=3, logging_steps=1, kl_coef=0.01)
    assert main(["train", *rl_args("ppo", tiny_model_dir, straight, **args)]) == 0
    # the interrupted run: only checkpoint-3 survived, plus a half-written checkpoint that must be ignored
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    (resumed / STAGING_DIR / "checkpoint-6").mkdir(parents=True)
    write_jsonl(resumed / "trainer_log.jsonl", [json.loads(line) for line in open(straight / "trainer_log.jsonl")][:5])
    assert main(["train", *rl_args("ppo", tiny_model_dir, resumed, resume_from_checkpoint="true", **args)]) == 0
    a = [json.loads(line) for line in open(straight / "trainer_log.jsonl")]
    b = [json.loads(line) for line in open(resumed / "trainer_log.jsonl")]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):  # everything but the wall-clock timings
        assert without_timings(x) == pytest.approx(without_timings(y), rel=1e-5), (x, y)
    final_a, final_b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)


def test_sigterm_stops_an_rl_run_with_a_checkpoint_it_resumes_from(tiny_model_dir, reward_file, tmp_path):
    out = tmp_path / "grpo"
    args = rl_args("grpo", tiny_model_dir, out, reward_funcs=reward_file, rollout_batch_size=4, num_generations=2,
                   max_steps=5000, logging_steps=1, save_steps=10000)
    proc = start_training(args)
    wait_for_step(out, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    [checkpoint] = list_checkpoints(str(out))[0]
    step = int(checkpoint.rsplit("-", 1)[1])
    assert f"Stopped by SIGTERM after step {step} of 5000" in stderr
    assert not (out / "model.safetensors").exists()
    resume = [a for a in args if not a.startswith("max_steps=")]
    resume += [f"max_steps={step + 2}", "resume_from_checkpoint=true"]
    assert main(["train", *resume]) == 0
    assert [r["step"] for r in map(json.loads, open(out / "trainer_log.jsonl"))] == list(range(1, step + 3))


def test_grpo_with_a_reward_model_and_a_builtin_reward(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": f"Say {w}", "chosen": w, "rejected": "no"}
                                                   for w in ("red", "blue", "cat", "dog", "sun", "sea")])
    rm = tmp_path / "rm"
    assert main(["train", "stage=rm", f"model_name_or_path={tiny_model_dir}", "template=chatml",
                 f"dataset={pairs}", f"output_dir={rm}", "max_steps=2", "report_to=none"]) == 0
    out = tmp_path / "grpo"
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, reward_model=str(rm), max_steps=2, logging_steps=1,
                                   reward_funcs="lmforge.rewards:exact_match", rollout_batch_size=2,
                                   kl_coef=0.0)]) == 0
    record = json.loads(open(out / "trainer_log.jsonl").readline())
    assert record["reward"] == pytest.approx(record["reward/model"] + record["reward/exact_match"], abs=1e-5)


@pytest.mark.parametrize("stage, extra, message", [
    ("ppo", {}, "needs a reward: set 'reward_model'"),
    ("grpo", {"reward_funcs": "nocolon"}, "'nocolon' is not a built-in reward (math_verify, code_exec"),
    ("grpo", {"reward_funcs": "math_verfy"}, "did you mean 'math_verify'?"),
    ("grpo", {"reward_funcs": "math_verify,format", "reward_weights": "1"}, "'reward_weights' has 1 weights for the "
     "2 'reward_funcs'"),
    ("grpo", {"reward_funcs": "format", "format_pattern": "(<think>"}, "'format_pattern' is not a regular "
     "expression"),
    ("grpo", {"reward_url": "localhost:8000"}, "'reward_url' must be an http(s) address"),
    ("grpo", {"reward_funcs": "code_exec"}, "the `code_exec` reward needs each prompt's tests"),
    ("grpo", {"reward_funcs": "format", "enable_thinking": False}, "the 'format' reward's default layout wants"),
    ("grpo", {"reward_funcs": "format", "overlong_buffer": 8}, "'overlong_buffer' (8) must be between 0 and "
     "'max_new_tokens' (8)"),
    ("grpo", {"reward_funcs": "format", "num_generations": 1, "advantage_estimator": "reinforce_plus_plus_baseline"},
     "'num_generations' must be at least 2"),
    ("grpo", {"reward_funcs": "/nonexistent/r.py:f"}, "reward function file '/nonexistent/r.py' does not exist"),
    ("grpo", {"reward_funcs": "lmforge.rewards:nope"}, "'lmforge.rewards' has no function 'nope'"),
    ("grpo", {"reward_funcs": "lmforge.rewards:exact_match", "num_generations": 1}, "'num_generations' must be at "
     "least 2"),
    ("ppo", {"reward_funcs": "lmforge.rewards:exact_match", "max_steps": -1}, "needs 'max_steps'"),
    ("grpo", {"reward_funcs": "lmforge.rewards:exact_match", "vf_coef": 0.5}, "'vf_coef' does not apply to "
     "'stage: grpo'"),
    ("grpo", {"reward_funcs": "lmforge.rewards:exact_match", "num_train_epochs": 3}, "'num_train_epochs' has no "
     "effect in 'stage: grpo'"),
    ("ppo", {"reward_funcs": "lmforge.rewards:exact_match", "torch_compile": True}, "'torch_compile' has no effect "
     "in 'stage: ppo'"),
    ("grpo", {"reward_funcs": "lmforge.rewards:exact_match", "eval_strategy": "epoch"}, "'eval_strategy: epoch' has "
     "no meaning"),
])
def test_rl_settings_that_cannot_work_are_clear_errors(tiny_model_dir, tmp_path, capsys, stage, extra, message):
    assert main(["train", *rl_args(stage, tiny_model_dir, tmp_path / "x", **extra)]) == 2
    assert message in capsys.readouterr().err


def test_builtin_rewards_compare_with_the_reference():
    from lmforge.train.rl.rewards import contains_reference, exact_match, token_f1

    completions, reference = [" three ", "red fox", "a b", "x"], ["three", "red fox kite", "b a", None]
    assert exact_match([], completions, reference) == [1.0, 0.0, 0.0, 0.0]
    assert contains_reference([], completions, reference) == [1.0, 0.0, 0.0, 0.0]
    assert token_f1([], completions, reference) == pytest.approx([1.0, 2 * 2 / 5, 1.0, 0.0])


def test_grpo_honours_the_trainer_keys_it_accepts(tiny_model_dir, reward_file, tmp_path):
    """report_to (the same TensorBoard scalars as the Trainer stages), optim through transformers' factory,
    gradient accumulation (one optimizer step per 2 mini-batches), bf16 autocast, gradient checkpointing, and
    val_size/eval_steps (mean reward on held-out prompts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "grpo"
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, reward_funcs=reward_file, rollout_batch_size=8,
                                   num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                   ppo_epochs=1, max_steps=4, save_steps=2, logging_steps=1, optim="adafactor",
                                   learning_rate=1e-3, bf16=True, gradient_checkpointing=True, val_size=6,
                                   eval_strategy="steps", eval_steps=2, report_to="tensorboard",
                                   repetition_penalty=1.2)]) == 0
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    evals = [r for r in log if "eval_reward" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(0 <= r["eval_reward"] <= 1 for r in evals)
    state = torch.load(out / "checkpoint-2" / "rl_state.pt", weights_only=False)["optimizer"]
    assert "scale_parameter" in state["param_groups"][0]  # Adafactor, as `optim` asked
    # 16 completions in mini-batches of 4, accumulated 2 at a time: 2 optimizer steps per rollout, 2 rollouts
    assert {int(s["step"]) for s in state["state"].values()} == {4}
    [events] = [root for root, _, files in os.walk(out) for f in files if f.startswith("events.out")]
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/reward", "train/kl", "eval/reward"} <= tags
    assert [e.value for e in accumulator.Scalars("eval/reward")] == pytest.approx([r["eval_reward"] for r in evals],
                                                                           abs=1e-5)


def test_rollouts_depend_on_prompt_and_seed_only_and_use_the_repetition_penalty(tiny_model_dir):
    """A row's completion is the same whichever rows share its batch (what makes several processes sample what one
    would); the repetition penalty applies to prompt and completion tokens."""
    from transformers import AutoModelForCausalLM

    from lmforge.config.generation import GenerationArguments
    from lmforge.train.rl.rollout import sample_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = GenerationArguments(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    together = sample_completions(model, prompts, gen, 0, [1], seeds=[11, 22, 33])
    alone = sample_completions(model, prompts[1:2], gen, 0, [1], seeds=[22])
    row = together.input_ids[1, together.prompt_width:][together.completion_mask[1].bool()]
    assert row.tolist() == alone.input_ids[0, alone.prompt_width:][alone.completion_mask[0].bool()].tolist()
    penalised = sample_completions(model, prompts[:1], GenerationArguments(
        max_new_tokens=6, temperature=0.0, repetition_penalty=1e6), 0, [1], seeds=[0])
    completion = penalised.input_ids[0, penalised.prompt_width:].tolist()
    assert len(set(completion)) == len(completion) and not set(completion) & set(prompts[0])


def test_rl_rotation_never_deletes_the_checkpoint_it_just_wrote(tiny_model_dir, reward_file, tmp_path):
    """Resuming an earlier checkpoint while a later one of a longer run is still there: with save_total_limit=1
    the rotation keeps the checkpoint this run wrote (and the one it resumed from)."""
    out = tmp_path / "grpo"
    args = dict(reward_funcs=reward_file, rollout_batch_size=4, num_generations=2, max_steps=2, save_steps=1,
                logging_steps=1, save_total_limit=1)
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, **args)]) == 0
    shutil.copytree(out / "checkpoint-1", out / "checkpoint-9")  # as a longer run would have left it
    assert main(["train", *rl_args("grpo", tiny_model_dir, out, **{**args, "max_steps": 3},
                                   resume_from_checkpoint=str(out / "checkpoint-1"))]) == 0
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert "checkpoint-2" in kept and "checkpoint-1" in kept


def test_bench_compares_a_grpo_step_with_trls_grpo_trainer(tiny_model_dir, reward_file, tmp_path):
    from lmforge.bench.rl import compare_grpo, report

    overrides = rl_args("grpo", tiny_model_dir, tmp_path / "unused", reward_funcs=reward_file, rollout_batch_size=4,
                        num_generations=2, per_device_train_batch_size=4, max_new_tokens=6, ppo_epochs=1)
    result = compare_grpo(None, overrides, steps=2, warmup=1)
    assert result["lmforge"]["steps"] == result["trl"]["steps"] == 2
    for side in ("lmforge", "trl"):
        assert result[side]["seconds_per_step"] > 0 and 1 <= result[side]["completion_length"] <= 6
    assert result["speedup"] == pytest.approx(result["trl"]["seconds_per_step"] / result["lmforge"]["seconds_per_step"])
    assert "TRL GRPOTrainer" in report(result)
