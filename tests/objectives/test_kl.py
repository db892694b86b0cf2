"""KL estimators and placements: hand values, the gradient table of kl.py checked by exact expectation, errors."""
import math

import pytest
import torch

from mdpalign.objectives import (
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    ShapeError,
    kl_estimate,
    kl_loss_term,
    kl_penalised_rewards,
    ppo_clip_loss,
)

f64 = torch.float64


def test_hand_values_of_the_three_estimators():
    pi, ref = [0.5, 0.1, 0.3], [0.4, 0.3, 0.3]
    lp = torch.log(torch.tensor([pi], dtype=f64))
    lr = torch.log(torch.tensor([ref], dtype=f64))
    for est, formula in {
        "k1": lambda p, q: math.log(p / q),
        "k2": lambda p, q: 0.5 * math.log(p / q) ** 2,
        "k3": lambda p, q: q / p - math.log(q / p) - 1.0,  # Schulman's r − log r − 1 with r = ref/pi
    }.items():
        got = kl_estimate(lp, lr, est)
        assert got.tolist()[0] == pytest.approx([formula(p, q) for p, q in zip(pi, ref)], rel=1e-14, abs=1e-16)


def test_k3_keeps_relative_precision_for_tiny_log_ratios():
    # True k3 = h²/2 − h³/6 + O(h⁴). expm1(−h) + h: |error| <= u·|h| + u·k3 (u = 2^-53), i.e. relative
    # 2u/|h| ≈ 2.2e-8 at h = 1e-8; the naive exp(−h) + h − 1 has absolute error ~u, relative ~2 there.
    h = 1e-8
    lp = torch.tensor([[h]], dtype=f64)
    got = kl_estimate(lp, torch.zeros_like(lp), "k3").item()
    true = h * h / 2 - h ** 3 / 6
    assert abs(got - true) / true < 1e-7
    naive = math.exp(-h) + h - 1.0
    assert abs(naive - true) / true > 1e-3  # why expm1: the naive form loses the value entirely


def test_mask_zeroes_and_shields_non_counted_positions():
    lp = torch.tensor([[-0.5, float("-inf")], [-1.0, float("nan")]], dtype=f64, requires_grad=True)
    lr = torch.tensor([[-0.7, -0.1], [-0.2, -0.3]], dtype=f64)
    mask = torch.tensor([[1, 0], [1, 0]])
    for est in KL_ESTIMATORS:
        out = kl_estimate(lp, lr, est, mask=mask)
        assert out[:, 1].tolist() == [0.0, 0.0]
        (g,) = torch.autograd.grad(out.sum(), lp)
        assert bool(torch.isfinite(g).all()) and g[:, 1].tolist() == [0.0, 0.0]


def test_kl_penalised_rewards_sum_over_counted_tokens():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], dtype=f64)
    lr = torch.tensor([[-1.5, -1.0, -1.0], [-0.7, -0.2, -0.1]], dtype=f64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    r = torch.tensor([2.0, -1.0], dtype=f64)
    out = kl_penalised_rewards(r, lp, lr, mask, beta=0.5, estimator="k1")
    # row 0: h = (0.5, −1.0) counted -> Σ = −0.5; row 1: h = (0.2, −0.3, −8.9) -> Σ = −9.0
    assert out.tolist() == pytest.approx([2.0 - 0.5 * -0.5, -1.0 - 0.5 * -9.0], rel=1e-14)


# ----------------------------------------------------------------------------------------------- gradient table


def _bandit(seed=0, K=5):
    g = torch.Generator().manual_seed(seed)
    ref = torch.softmax(torch.randn(K, generator=g, dtype=f64), 0)
    theta = torch.randn(K, generator=g, dtype=f64)
    return ref, theta


def _forward_kl(theta, ref):
    lp = torch.log_softmax(theta, 0)
    return (lp.exp() * (lp - ref.log())).sum()


def _reverse_kl(theta, ref):
    return (ref * (ref.log() - torch.log_softmax(theta, 0))).sum()


def _expected_penalty_gradient(theta, ref, estimator, placement, theta_old=None):
    """Gradient of E_{y ~ pi_old}[penalty loss of y] with the library's functions: every arm as a (1, 1) batch,
    weighted by its sampling probability (detached). theta_old = None: on-policy."""
    th = theta.clone().requires_grad_(True)
    lp = torch.log_softmax(th, 0).reshape(-1, 1)
    old = (lp.detach() if theta_old is None else torch.log_softmax(theta_old, 0).reshape(-1, 1))
    w = old.exp().reshape(-1)
    lr = ref.log().reshape(-1, 1)
    mask = torch.ones_like(lp, dtype=torch.bool)
    if placement == "reward":
        # REINFORCE on the penalty alone: the reward r = 0 shaped to −β·k(old), β = 1, ratio against old
        shaped = kl_penalised_rewards(torch.zeros(lp.shape[0], dtype=f64), old, lr, mask, 1.0, estimator)
        per_token = ppo_clip_loss(lp, None, shaped, mask).losses  # on-policy: ρ = 1, ∇ρ = ∇log pi
    else:
        per_token = kl_loss_term(lp, lr, mask, estimator, old_token_logps=old if placement == "loss_is" and
                                 theta_old is not None else None, use_bias_correction_kl=placement == "loss_is")
    (g,) = torch.autograd.grad((w * per_token.reshape(-1)).sum(), th)
    return g


def _moment2(theta, ref):
    lp = torch.log_softmax(theta, 0)
    return (lp.exp() * 0.5 * (lp - ref.log()) ** 2).sum()


# The module docstring's table, each entry an independent autograd closed form.
TABLE = {
    ("k1", "reward"): lambda t, r: torch.func.grad(_forward_kl)(t, r),
    ("k1", "loss"): lambda t, r: torch.zeros_like(t),
    ("k1", "loss_is"): lambda t, r: torch.func.grad(_forward_kl)(t, r),
    ("k2", "reward"): lambda t, r: torch.func.grad(_moment2)(t, r) - torch.func.grad(_forward_kl)(t, r),
    ("k2", "loss"): lambda t, r: torch.func.grad(_forward_kl)(t, r),
    ("k2", "loss_is"): lambda t, r: torch.func.grad(_moment2)(t, r),
    ("k3", "reward"): lambda t, r: torch.func.grad(_forward_kl)(t, r) - torch.func.grad(_reverse_kl)(t, r),
    ("k3", "loss"): lambda t, r: torch.func.grad(_reverse_kl)(t, r),
    ("k3", "loss_is"): lambda t, r: torch.func.grad(_forward_kl)(t, r),
}


@pytest.mark.parametrize("estimator, placement", list(TABLE))
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_table_by_exact_expectation(estimator, placement, seed):
    ref, theta = _bandit(seed)
    got = _expected_penalty_gradient(theta, ref, estimator, placement)
    expect = TABLE[estimator, placement](theta, ref)
    # sums of 5 O(1) float64 terms: rounding ~1e-15
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-13)
    if (estimator, placement) not in (("k1", "loss"),):
        assert float(expect.abs().max()) > 1e-3  # the identity is not vacuous


def test_importance_corrected_unbiased_estimators_stay_exact_off_policy():
    # E_{pi_old}[ρ·k] = E_pi[k] for every θ: k1·ρ and k3·ρ give ∇KL(pi‖ref) also in PPO's later epochs; k2 as a
    # plain loss sampled from pi_old does not (its identity is on-policy only).
    ref, theta = _bandit(3)
    theta_old = theta + torch.tensor([0.3, -0.2, 0.1, 0.4, -0.5], dtype=f64)
    fwd = torch.func.grad(_forward_kl)(theta, ref)
    for est in ("k1", "k3"):
        torch.testing.assert_close(_expected_penalty_gradient(theta, ref, est, "loss_is", theta_old), fwd,
                                   rtol=0, atol=1e-13)
    off = _expected_penalty_gradient(theta, ref, "k2", "loss", theta_old)
    assert float((off - fwd).abs().max()) > 1e-2


def test_placements_tuple_is_the_three_of_the_table():
    assert set(KL_PLACEMENTS) == {p for _, p in TABLE} and set(KL_ESTIMATORS) == {e for e, _ in TABLE}


# --------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_each_raise_one_clear_error():
    lp = torch.zeros(2, 3, dtype=f64)
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        kl_estimate(lp, lp, "k4")
    with pytest.raises(ShapeError, match="ref_token_logps must have the shape"):
        kl_estimate(lp, torch.zeros(2, 2, dtype=f64), "k1")
    with pytest.raises(ShapeError, match="mask must have the shape"):
        kl_estimate(lp, lp, "k1", mask=torch.ones(3, 2))
    with pytest.raises(ShapeError, match="floating point"):
        kl_estimate(torch.zeros(2, 3, dtype=torch.int64), lp, "k1")
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        kl_penalised_rewards(torch.zeros(2, dtype=f64), lp, lp, mask, beta=0.0)
    with pytest.raises(ShapeError, match="rewards must have shape \\(2,\\)"):
        kl_penalised_rewards(torch.zeros(3, dtype=f64), lp, lp, mask, beta=1.0)
    with pytest.raises(ValueError, match="token_logps itself"):
        kl_loss_term(lp, lp, mask, "k3", old_token_logps=lp, use_bias_correction_kl=True)
    with pytest.raises(ValueError, match="only with use_bias_correction_kl=True"):
        kl_loss_term(lp, lp, mask, "k3", old_token_logps=lp.clone())
