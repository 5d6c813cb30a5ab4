"""PPO/GRPO maths against hand computations on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.rl.losses import (
    aggregate,
    gae,
    group_advantages,
    grpo_loss,
    ppo_loss,
    ppo_rewards,
    whiten,
    zero_variance_rows,
)


def test_ppo_rewards_penalise_kl_per_token_and_add_the_score_on_the_last_valid_token():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = ppo_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 0.1 + 2.0, -0.1, -1.0, 0.0])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    gamma, lam = 0.9, 0.8
    d1 = 1.0 - 0.2  # last valid token: no next value
    d0 = 0.0 + gamma * 0.2 - 0.5
    a1, a0 = d1, d0 + gamma * lam * d1
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, 0.0])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, 0.0])


def test_whiten_normalises_over_valid_tokens_only():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, unbiased variance ((1-2)^2 + (3-2)^2) / (2-1) = 2, as TRL's and verl's masked_whiten
    assert whiten(values, mask)[0].tolist() == pytest.approx([-2 ** -0.5, 2 ** -0.5, 0.0], abs=1e-4)


def test_ppo_loss_clips_the_ratio_and_the_value_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.9)]])  # ratios 1.5 (clipped to 1.2) and 0.9
    adv = torch.tensor([[1.0, -2.0]])
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    out = ppo_loss(new, old, adv, values, old_values, returns, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.5)
    # token 0: max(-1*1.5, -1*1.2) = -1.2 (clipped); token 1: max(2*0.9, 2*0.9) = 1.8
    assert out.policy_loss.item() == pytest.approx((-1.2 + 1.8) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    # value: token 0 max((1-0)^2, (0.7-0)^2) = 1; token 1 max((0-1)^2, (0-1)^2) = 1 -> 0.5 * mean = 0.5
    assert out.value_loss.item() == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(0.3 + 0.5 * 0.5)


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    adv = group_advantages(scores, group_size=2)
    std = torch.tensor([1.0, 3.0]).std().item()
    assert adv.tolist() == pytest.approx([-1 / (std + 1e-4), 1 / (std + 1e-4), 0.0, 0.0])


def test_grpo_loss_with_the_k3_kl_term_by_hand():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    old = logps.clone()
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = grpo_loss(logps, old, ref, adv, mask, cliprange=0.2, kl_coef=0.1)
    # ratio 1 everywhere: per-token loss -A; mean over the 3 valid tokens
    policy = (-2 - 2 + 1) / 3
    kl = (math.exp(-0.5) + 0.5 - 1) / 3
    assert out.policy_loss.item() == pytest.approx(policy)
    assert out.loss.item() == pytest.approx(policy + 0.1 * kl)


# ---- the GRPO family ------------------------------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("loss_type, extra, expected", [
    ("grpo", {}, (6 / 3 + 4 / 1) / 2),  # per completion, then over completions
    ("bnpo", {}, 10 / 4),  # over the mini-batch's tokens
    ("dr_grpo", {"max_completion_length": 5}, 10 / (2 * 5)),  # completions x max_new_tokens
    ("dapo", {"token_normalizer": 8.0}, 10 / 8),  # over the optimizer step's tokens
])
def test_each_loss_type_averages_tokens_as_published(loss_type, extra, expected):
    assert aggregate(PER_TOKEN, MASK, loss_type, **extra).item() == pytest.approx(expected)


def test_clip_higher_lets_positive_advantages_grow_further_and_counts_both_clips():
    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(1.3), math.log(0.7)]])
    adv = torch.tensor([[1.0, -1.0]])  # one sequence advantage per row: use two rows of one token each
    logps, old_logps = new.view(2, 1), old.view(2, 1)
    mask = torch.ones(2, 1)
    out = grpo_loss(logps, old_logps, None, adv.view(2), mask, cliprange=0.2, kl_coef=0.0, epsilon_high=0.28,
                    loss_type="bnpo")
    # row 0: A=1, ratio 1.3 -> min(1.3, 1.28) = 1.28 -> loss -1.28; row 1: A=-1, ratio 0.7 -> max(0.7, 0.8) = 0.8
    assert out.loss.item() == pytest.approx((-1.28 + 0.8) / 2)
    assert (out.clip_high.item(), out.clip_low.item()) == (0.5, 0.5)
    symmetric = grpo_loss(logps, old_logps, None, adv.view(2), mask, cliprange=0.2, kl_coef=0.0, loss_type="bnpo")
    assert symmetric.loss.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_reward_scaling_and_the_leave_one_out_baseline_by_hand():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 6.0])  # two groups of 3
    g1, g2 = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([2.0, 0.0, 6.0])
    centred = torch.cat([g1 - 2.0, g2 - 8 / 3])
    assert group_advantages(scores, 3, scale="none").tolist() == pytest.approx(centred.tolist())
    by_group = torch.cat([(g1 - 2.0) / (g1.std() + 1e-4), (g2 - 8 / 3) / (g2.std() + 1e-4)])
    assert group_advantages(scores, 3, scale="group").tolist() == pytest.approx(by_group.tolist())
    assert group_advantages(scores, 3, scale="batch").tolist() == \
        pytest.approx((centred / (scores.std() + 1e-4)).tolist())
    # RLOO: each reward minus the mean of the other two of its group
    rloo = [1 - (3 + 2) / 2, 3 - (1 + 2) / 2, 2 - (1 + 3) / 2, 2 - (0 + 6) / 2, 0 - (2 + 6) / 2, 6 - (2 + 0) / 2]
    assert group_advantages(scores, 3, scale="none", estimator="rloo").tolist() == pytest.approx(rloo)


def test_zero_variance_groups_are_found_row_by_row():
    scores = torch.tensor([1.0, 1.0, 0.0, 2.0, 5.0, 5.0])
    assert zero_variance_rows(scores, 2).tolist() == [True, True, False, False, True, True]


def trl_grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, level: str, loss_type: str, epsilon: float, beta: float) -> float:
    """TRL's own `GRPOTrainer._compute_loss` on these tensors: a trainer object without its __init__ (no model to
    load), given the settings the loss reads, whose forward hands back `logps`."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    same = lambda x, **kw: x  # noqa: E731 - one process: gathering is the identity
    trainer.__dict__.update(
        importance_sampling_level=level, loss_type=loss_type, beta=beta, epsilon_low=epsilon, epsilon_high=epsilon,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        off_policy_mask_threshold=None, top_entropy_quantile=1.0, use_vllm=False,
        vllm_importance_sampling_correction=False, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1, max_completion_length=logps.shape[1],
        accelerator=SimpleNamespace(gather=same, gather_for_metrics=same, reduce=same, sync_gradients=True,
                                    num_processes=1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, model=SimpleNamespace(training=True),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    rows, width = logps.shape
    prompt = torch.zeros(rows, 1, dtype=torch.long)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
              "completion_ids": torch.zeros(rows, width, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps,
              "num_items_in_batch": mask.sum()}
    return float(trainer._compute_loss(None, inputs))


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_and_gspo_losses_equal_trls_on_the_same_tensors(level, loss_type):
    """GSPO (`importance_sampling_level: sequence`: one ratio per completion, the geometric mean of its tokens')
    and token-level GRPO, with the KL term, clipped ratios on both sides and padded completions."""
    torch.manual_seed(0)
    logps = torch.randn(4, 6) * 0.1 - 1
    # whole completions moved too, so that sequence-level ratios clip (rows 0 and 1) as token-level ones do
    shift = torch.tensor([[-0.4], [0.3], [0.0], [0.05]])
    old_logps, ref_logps = logps + torch.randn(4, 6) * 0.3 + shift, logps + torch.randn(4, 6) * 0.1
    mask = torch.ones(4, 6)
    mask[0, 3:], mask[2, 5:] = 0, 0
    advantages = torch.tensor([1.0, -0.5, 0.3, -1.2])
    ours = grpo_loss(logps, old_logps, ref_logps, advantages, mask, 0.2, 0.04, loss_type=loss_type,
                     max_completion_length=6, importance_sampling_level=level)
    assert float(ours.clip_fraction) > 0  # the comparison covers clipping
    assert float(ours.loss) == pytest.approx(trl_grpo_loss(logps, old_logps, ref_logps, advantages, mask, level,
                                                           loss_type, 0.2, 0.04), rel=1e-5)


def test_scoring_in_mini_batches_keeps_the_completion_logits_only_and_equals_one_pass(tiny_model_dir):
    """Old/reference log-probabilities scored `rows_at_once` rows at a time, with the logits of the completion's
    positions only (`logits_to_keep`), equal those of one forward over the whole rollout's logits."""
    from transformers import AutoModelForCausalLM

    from lmforge.train.rl.rollout import Rollout, completion_logps, scored_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.randint(3, model.config.vocab_size, (5, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded prompt
    rollout = Rollout(ids, mask, torch.ones((5, 4), dtype=torch.long), 5, torch.zeros(5, dtype=torch.bool))
    seen = []
    model.register_forward_hook(lambda module, args, kwargs, out: seen.append((kwargs.get("logits_to_keep"),
                                                                               out.logits.shape)), with_kwargs=True)
    with torch.no_grad():
        whole = completion_logps(model, rollout)[0]
    chunked, values = scored_completions(model, rollout, 2)
    assert seen == [(5, (5, 5, model.config.vocab_size))] + [(5, (n, 5, model.config.vocab_size)) for n in (2, 2, 1)]
    assert values is None and chunked.shape == (5, 4)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
