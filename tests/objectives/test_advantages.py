"""RLOO, GRPO (group / batch / no scaling) and ReMax advantages: hand values, TRL's std, expected-gradient
identities."""

import itertools
import math

import pytest
import torch

from mdpalign.objectives import SCALE_REWARDS, ShapeError, grpo_advantages, remax_advantages, rloo_advantages

f64 = torch.float64


def test_rloo_hand_values():
    r = torch.tensor([1.0, 0.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0], dtype=f64)
    out = rloo_advantages(r, group_size=4)
    # group 1: sum 6, baseline of r_i = (6 − r_i)/3; group 2 constant -> advantage 0
    assert out.baselines.tolist() == pytest.approx([5 / 3, 2.0, 1.0, 4 / 3, 5, 5, 5, 5], rel=1e-15)
    assert out.advantages.tolist() == pytest.approx([-2 / 3, -2.0, 2.0, 2 / 3, 0, 0, 0, 0], abs=1e-15)
    assert out.stds is None and out.scales.tolist() == [1.0] * 8


def test_grpo_hand_values_each_scaling():
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0], dtype=f64)
    # group 1: mean 3, unbiased std sqrt((4 + 1 + 9)/2) = sqrt(7); group 2: mean 1, std sqrt((1 + 1 + 4)/2) = sqrt(3)
    g = grpo_advantages(r, 3, "group", eps=1e-4)
    s7, s3 = math.sqrt(7), math.sqrt(3)
    assert g.advantages.tolist() == pytest.approx([-2 / (s7 + 1e-4), -1 / (s7 + 1e-4), 3 / (s7 + 1e-4),
                                                   -1 / (s3 + 1e-4), -1 / (s3 + 1e-4), 2 / (s3 + 1e-4)], rel=1e-14)
    # batch: the group mean stays the baseline, the std is over all six rewards: mean 2, Σ(r−2)² = 1+0+16+4+4+1 = 26
    b = grpo_advantages(r, 3, "batch", eps=0.0)
    sb = math.sqrt(26 / 5)
    assert b.advantages.tolist() == pytest.approx([-2 / sb, -1 / sb, 3 / sb, -1 / sb, -1 / sb, 2 / sb], rel=1e-14)
    n = grpo_advantages(r, 3, "none")
    assert n.advantages.tolist() == pytest.approx([-2, -1, 3, -1, -1, 2], abs=1e-15)
    assert n.stds.tolist() == pytest.approx([s7] * 3 + [s3] * 3, rel=1e-14)  # logged as TRL does


def test_grpo_equal_rewards_give_zero_advantage():
    out = grpo_advantages(torch.full((4,), 0.7, dtype=f64), 4)
    assert out.advantages.tolist() == [0.0] * 4


def test_grpo_std_is_trls_nanstd():
    from trl.trainer.utils import nanstd  # TRL 1.16's std (Bessel-corrected) used by GRPOTrainer

    g = torch.Generator().manual_seed(0)
    r = torch.randn(5 * 4, generator=g, dtype=f64)
    ours = grpo_advantages(r, 4, "group")
    trl_std = nanstd(r.view(-1, 4), dim=1).repeat_interleave(4)
    # TRL's Bessel factor count/(count − 1) divides int64 tensors, which torch does in float32: 4/3 carries a
    # relative error of 2.5e-8, so TRL's float64 std is off by up to ~1.5e-8 relative. Tolerance 1e-7 covers it.
    torch.testing.assert_close(ours.stds, trl_std, rtol=1e-7, atol=0)
    exact = torch.tensor([r.view(-1, 4)[i].tolist() for i in range(5)], dtype=f64)
    bessel = ((exact - exact.mean(1, keepdim=True)) ** 2).sum(1).div(3).sqrt().repeat_interleave(4)
    torch.testing.assert_close(ours.stds, bessel, rtol=1e-14, atol=0)
    # TRL's advantage: (r − group mean) / (std + 1e-4)
    mean = r.view(-1, 4).mean(1).repeat_interleave(4)
    torch.testing.assert_close(ours.advantages, (r - mean) / (trl_std + 1e-4), rtol=1e-7, atol=1e-15)
    torch.testing.assert_close(grpo_advantages(r, 4, "batch").stds, nanstd(r).expand_as(r), rtol=1e-7, atol=0)


def test_remax_hand_values_and_group_repeat():
    r = torch.tensor([1.0, 0.5, -1.0, 2.0], dtype=f64)
    out = remax_advantages(r, torch.tensor([0.25, 1.0], dtype=f64), group_size=2)
    assert out.advantages.tolist() == pytest.approx([0.75, 0.25, -2.0, 1.0], abs=1e-15)
    same = remax_advantages(r, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=f64))
    assert same.advantages.tolist() == pytest.approx([1.0, -0.5, -3.0, -1.0], abs=1e-15)


def test_leading_dimensions_are_independent_batches():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3, 6, generator=g, dtype=f64)
    for fn in (lambda x: rloo_advantages(x, 3), *[lambda x, s=s: grpo_advantages(x, 3, s) for s in SCALE_REWARDS]):
        stacked = fn(r).advantages
        for i in range(3):
            torch.testing.assert_close(stacked[i], fn(r[i]).advantages, rtol=0, atol=1e-15)  # reduction order


# ------------------------------------------------------------------------- expected gradients (exact enumeration)


def _expected_group_gradient(advantage_fn, G, seed=0, K=3):
    """E over all ordered groups of G arms of (1/G)·Σ_i A_i ∇log pi(y_i), by enumeration with autograd."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=f64).requires_grad_(True)
    r = torch.randn(K, generator=g, dtype=f64)
    lp = torch.log_softmax(theta, 0)
    total = 0.0
    for group in itertools.product(range(K), repeat=G):
        idx = torch.tensor(group)
        w = torch.exp(lp[idx].sum()).detach()
        adv = advantage_fn(r[idx])
        total = total + w * (adv * lp[idx]).mean()
    (grad,) = torch.autograd.grad(total, theta)
    pi = lp.exp().detach()
    return grad, pi * (r - (pi * r).sum())  # ∇_θ E_pi[r] = pi ⊙ (r − E_pi r)


@pytest.mark.parametrize("G", [2, 3])
def test_rloo_is_an_unbiased_policy_gradient(G):
    got, pg = _expected_group_gradient(lambda x: rloo_advantages(x, G).advantages, G)
    torch.testing.assert_close(got, pg, rtol=0, atol=1e-14)


@pytest.mark.parametrize("G", [2, 3])
def test_unscaled_group_mean_shrinks_the_gradient_by_g_minus_1_over_g(G):
    # Dr. GRPO: the group mean contains the sample itself -> E = (G−1)/G · ∇E r (THEORY.md)
    got, pg = _expected_group_gradient(lambda x: grpo_advantages(x, G, "none").advantages, G)
    torch.testing.assert_close(got, (G - 1) / G * pg, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_each_raise_one_clear_error():
    r = torch.zeros(6, dtype=f64)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(r, 1)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_advantages(r, 1)
    with pytest.raises(ShapeError, match="multiple of group_size 4"):
        grpo_advantages(r, 4)
    with pytest.raises(ValueError, match="must be finite"):
        rloo_advantages(torch.tensor([1.0, float("nan")], dtype=f64), 2)
    with pytest.raises(ValueError, match="unknown scale_rewards 'std'"):
        grpo_advantages(r, 2, "std")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        grpo_advantages(r, 2, eps=-1.0)
    with pytest.raises(ShapeError, match="greedy_rewards must have shape \\(3,\\)"):
        remax_advantages(r, torch.zeros(6, dtype=f64), group_size=2)
    with pytest.raises(ShapeError, match="floating point"):
        rloo_advantages(torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="group_size must be an int"):
        rloo_advantages(r, 2.0)
