import math

import pytest
import torch

from mdpalign.objectives import kl_rl_objective, kl_rl_optimal_log_policy


def _problem(seed=0, X=3, Y=4):
    g = torch.Generator().manual_seed(seed)
    log_ref = torch.log_softmax(torch.randn(X, Y, generator=g, dtype=torch.float64), -1)
    r = torch.randn(X, Y, generator=g, dtype=torch.float64)
    mu = torch.softmax(torch.randn(X, generator=g, dtype=torch.float64), 0)
    return log_ref, r, mu


def test_value_matches_hand_sum():
    log_ref, r, mu = _problem()
    pi = torch.softmax(torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), -1)
    beta = 0.7
    expect = sum(
        mu[x].item()
        * sum(
            pi[x, y].item() * (r[x, y].item() - beta * (math.log(pi[x, y].item()) - log_ref[x, y].item()))
            for y in range(4)
        )
        for x in range(3)
    )
    assert kl_rl_objective(pi.log(), log_ref, r, beta, mu).item() == pytest.approx(expect, rel=1e-13)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_optimum_value_and_gap_identity(beta):
    log_ref, r, mu = _problem(1)
    log_star = kl_rl_optimal_log_policy(log_ref, r, beta)
    log_z = torch.logsumexp(log_ref + r / beta, -1)
    j_star = kl_rl_objective(log_star, log_ref, r, beta, mu)
    assert j_star.item() == pytest.approx((beta * mu * log_z).sum().item(), rel=1e-12)
    for seed in range(3):
        log_pi = torch.log_softmax(
            torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), -1
        )
        kl = (log_pi.exp() * (log_pi - log_star)).sum(-1)
        gap = j_star - kl_rl_objective(log_pi, log_ref, r, beta, mu)
        assert gap.item() == pytest.approx(beta * (mu * kl).sum().item(), rel=1e-10)


def test_ascent_direction_is_pi_times_centred_f():
    log_ref, r, _ = _problem(2, X=1)
    beta = 0.3
    theta = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    log_pi = torch.log_softmax(theta, -1)
    kl_rl_objective(log_pi, log_ref, r, beta).backward()
    pi = log_pi.exp().detach()
    f = r - beta * (log_pi.detach() - log_ref)
    expect = pi * (f - (pi * f).sum(-1, keepdim=True))
    torch.testing.assert_close(theta.grad, expect, rtol=0, atol=1e-14)


def test_zero_probability_actions_contribute_zero_with_finite_gradient():
    log_ref = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    log_pi = torch.tensor([0.0, float("-inf")], dtype=torch.float64, requires_grad=True)
    j = kl_rl_objective(log_pi, log_ref, r, beta=1.0)
    assert j.item() == pytest.approx(1.0 - math.log(2.0))
    j.backward()
    assert bool(torch.isfinite(log_pi.grad).all())
    # d/d(log pi_y) of pi_y (r_y - beta (log pi_y - log ref_y)) = pi_y (r_y - beta (log pi_y - log ref_y)) - beta pi_y:
    # at pi = (1, 0), beta = 1: (1 - log 2) - 1 = -log 2 for the sure action, and 0 for the impossible one
    assert log_pi.grad.tolist() == pytest.approx([-math.log(2.0), 0.0], rel=1e-15, abs=0)


def test_errors():
    log_ref, r, mu = _problem()
    with pytest.raises(ValueError, match="beta"):
        kl_rl_objective(log_ref, log_ref, r, beta=-1.0)
    with pytest.raises(ValueError, match="share a shape"):
        kl_rl_objective(log_ref[:, :3], log_ref, r, beta=1.0)
    with pytest.raises(ValueError, match="probability vector"):
        kl_rl_objective(log_ref, log_ref, r, 1.0, context_probs=torch.tensor([0.5, 0.5, 0.5]))
