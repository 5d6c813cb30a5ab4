"""Preference losses against hand computations on fixed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.train.losses import PairLogps, kto_loss, log1mexp, preference_loss, sequence_logps

# Two pairs: summed log-probs and token counts of chosen/rejected, under the policy and the reference.
POLICY = PairLogps(torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -7.0]), torch.tensor([2, 3]), torch.tensor([3, 2]))
REFERENCE = PairLogps(torch.tensor([-5.0, -8.0]), torch.tensor([-5.5, -7.5]), torch.tensor([2, 3]),
                      torch.tensor([3, 2]))
BETA = 0.5


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def margins() -> list[float]:
    # (pi_c - ref_c) - (pi_r - ref_r): pair 0: (1) - (-0.5) = 1.5; pair 1: (-1) - (0.5) = -1.5
    return [1.5, -1.5]


def test_dpo_sigmoid_loss_and_rewards_by_hand():
    out = preference_loss("sigmoid", POLICY, REFERENCE, BETA)
    expected = [-math.log(sig(BETA * m)) for m in margins()]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.5])  # beta * (pi_c - ref_c)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])


def test_conservative_dpo_label_smoothing_by_hand():
    eps = 0.2
    out = preference_loss("sigmoid", POLICY, REFERENCE, BETA, label_smoothing=eps)
    expected = [-(1 - eps) * math.log(sig(BETA * m)) - eps * math.log(sig(-BETA * m)) for m in margins()]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_hinge_loss_by_hand():
    out = preference_loss("hinge", POLICY, REFERENCE, BETA)
    assert out.losses.tolist() == pytest.approx([max(0.0, 1 - BETA * m) for m in margins()])


def test_ipo_uses_per_token_means_by_hand():
    out = preference_loss("ipo", POLICY, REFERENCE, BETA)
    # pair 0: (-4/2 - -5/2) - (-6/3 - -5.5/3) = 0.5 + 1/6; pair 1: (-9/3 - -8/3) - (-7/2 - -7.5/2) = -1/3 - 1/4
    m = [0.5 + 1 / 6, -1 / 3 - 0.25]
    assert out.losses.tolist() == pytest.approx([(x - 1 / (2 * BETA)) ** 2 for x in m], rel=1e-6)


def test_orpo_by_hand_needs_no_reference():
    out = preference_loss("orpo", POLICY, None, BETA)
    expected = []
    for c, r in ((-4 / 2, -6 / 3), (-9 / 3, -7 / 2)):
        log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        expected.append(-c - BETA * math.log(sig(log_odds)))
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * -2.0, BETA * -3.0])


def test_simpo_by_hand_needs_no_reference():
    gamma = 0.3
    out = preference_loss("simpo", POLICY, None, 2.0, simpo_gamma=gamma)
    expected = [-math.log(sig(2.0 * (c - r) - gamma)) for c, r in ((-2.0, -2.0), (-3.0, -3.5))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_losses_that_need_a_reference_say_so():
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", POLICY, None, BETA)


def test_kto_loss_by_hand():
    policy, reference = torch.tensor([-3.0, -5.0, -2.0]), torch.tensor([-4.0, -4.0, -2.5])
    desirable = torch.tensor([True, False, True])
    kl = torch.tensor(0.2)
    out = kto_loss(policy, reference, desirable, kl, BETA, desirable_weight=1.5, undesirable_weight=0.5)
    ratios = [1.0, -1.0, 0.5]
    expected = [1.5 * (1 - sig(BETA * (ratios[0] - 0.2))), 0.5 * (1 - sig(BETA * (0.2 - ratios[1]))),
                1.5 * (1 - sig(BETA * (ratios[2] - 0.2)))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.25])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5])
    # a negative KL estimate is clamped to 0
    clamped = kto_loss(policy, reference, desirable, torch.tensor(-1.0), BETA)
    assert clamped.losses[0].item() == pytest.approx(1 - sig(BETA * 1.0))


def test_sequence_logps_sums_the_labelled_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 3, 1, -100], [-100, -100, 4, 2]])
    sums, counts = sequence_logps(logits, labels)
    logp = logits.log_softmax(-1)
    assert counts.tolist() == [2, 2]
    assert sums[0].item() == pytest.approx((logp[0, 0, 3] + logp[0, 1, 1]).item(), rel=1e-6)
    assert sums[1].item() == pytest.approx((logp[1, 1, 4] + logp[1, 2, 2]).item(), rel=1e-6)


def test_log1mexp_is_accurate_near_zero_and_far_from_it():
    x = torch.tensor([-1e-8, -0.1, -5.0, -50.0], dtype=torch.float64)
    assert log1mexp(x).tolist() == pytest.approx([math.log(-math.expm1(v)) for v in x.tolist()], rel=1e-9)
