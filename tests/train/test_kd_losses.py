"""Distillation losses against hand computations, and the chunked loss against the full-logit one (value and
gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.model import distill_loss
from lmforge.model.distill_loss import distillation_loss, divergence


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _softmax(x: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


S, T = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_divergence_by_hand(temperature):
    s, t = torch.tensor([S]), torch.tensor([T])
    ps, pt = _softmax(S, temperature), _softmax(T, temperature)
    assert divergence(s, t, "forward_kl", temperature=temperature).item() == pytest.approx(_kl(pt, ps), rel=1e-5)
    assert divergence(s, t, "reverse_kl", temperature=temperature).item() == pytest.approx(_kl(ps, pt), rel=1e-5)
    beta = 0.3
    m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps, strict=True)]
    jsd = beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
    assert divergence(s, t, "jsd", beta=beta, temperature=temperature).item() == pytest.approx(jsd, rel=1e-5)
    assert divergence(s, t, "jsd", beta=0.0).item() == pytest.approx(_kl(_softmax(T), _softmax(S)), rel=1e-5)


def test_only_trained_positions_count_and_alpha_mixes_in_the_cross_entropy():
    torch.manual_seed(0)
    hidden_s, hidden_t = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    w_s, w_t = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.tensor([[-100, -100, 2, 4]])  # positions 1 and 2 predict the labels at 2 and 3
    full_s, full_t = hidden_s[0] @ w_s.t(), hidden_t[0] @ w_t.t()
    kd = divergence(full_s[1:3], full_t[1:3], "forward_kl").mean()
    ce = torch.nn.functional.cross_entropy(full_s[1:3], torch.tensor([2, 4]))
    got = distillation_loss(hidden_s, w_s, hidden_t, w_t, labels, "forward_kl", alpha=0.25)
    assert got.item() == pytest.approx((0.25 * kd + 0.75 * ce).item(), rel=1e-5)


def test_the_chunked_loss_equals_the_full_logit_loss_and_its_gradients(monkeypatch):
    torch.manual_seed(1)
    hidden_s = torch.randn(2, 7, 8, requires_grad=True)
    hidden_t = torch.randn(2, 7, 8)
    w_s = torch.randn(50, 8, requires_grad=True)
    w_t = torch.randn(50, 8)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = -100
    full = distillation_loss(hidden_s, w_s, hidden_t, w_t, labels, "jsd", beta=0.4, temperature=1.5, alpha=0.7)
    g_full = torch.autograd.grad(full, [hidden_s, w_s])
    monkeypatch.setattr(distill_loss, "LOGITS_PER_CHUNK", 50 * 3)  # 3 rows per chunk
    chunked = distillation_loss(hidden_s, w_s, hidden_t, w_t, labels, "jsd", beta=0.4, temperature=1.5, alpha=0.7)
    g_chunked = torch.autograd.grad(chunked, [hidden_s, w_s])
    # the reference: plain full logits, no chunks, no checkpointing
    keep = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1) != -100
    s_logits = (hidden_s.reshape(-1, 8) @ w_s.t())[keep]
    t_logits = (hidden_t.reshape(-1, 8) @ w_t.t())[keep]
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)[keep]
    plain = 0.7 * divergence(s_logits, t_logits, "jsd", 0.4, 1.5).mean() + \
        0.3 * torch.nn.functional.cross_entropy(s_logits, targets)
    g_plain = torch.autograd.grad(plain, [hidden_s, w_s])
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6) == pytest.approx(plain.item(), rel=1e-5)
    for a, b, c in zip(g_chunked, g_full, g_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-5)


def test_the_teacher_and_student_logits_are_what_their_models_return():
    """Gemma 2's final soft-capping and Cohere's logit scale apply as the models' own forwards apply them: the
    distillation loss equals the divergence of `Gemma2ForCausalLM`'s returned logits (capped at 30)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from lmforge.model.distill_loss import LogitHead

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=3.0)
    student, teacher = Gemma2ForCausalLM(config).eval(), Gemma2ForCausalLM(config).eval()
    for model in (student, teacher):
        torch.nn.init.normal_(model.lm_head.weight, std=2.0)  # logits far beyond the cap
    ids = torch.randint(0, 64, (1, 6))
    labels = ids.clone()
    with torch.no_grad():
        hs, ht = student.model(ids).last_hidden_state, teacher.model(ids).last_hidden_state
        expected = divergence(student(ids).logits[0, :-1], teacher(ids).logits[0, :-1], "forward_kl").mean()
        got = distillation_loss(hs, student.lm_head.weight, ht, teacher.lm_head.weight, labels,
                                student_head=LogitHead.of(config), teacher_head=LogitHead.of(config))
        uncapped = distillation_loss(hs, student.lm_head.weight, ht, teacher.lm_head.weight, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(uncapped.item() - expected.item()) > 0.1
    assert LogitHead.of(type("Cohere", (), {"logit_scale": 0.5})())(torch.tensor([4.0])).item() == 2.0
