import math

import pytest
import torch

from mdpalign.objectives import DPO_LOSS_TYPES, ShapeError, dpo_loss
from mdpalign.policies import TabularPolicy

DTYPES = [torch.float32, torch.float64]


def _logsig(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _inputs(dtype):
    pc = torch.tensor([-3.0, -10.0, -1.0, -50.0], dtype=dtype)
    pr = torch.tensor([-4.0, -2.0, -1.5, -5.0], dtype=dtype)
    rc = torch.tensor([-3.5, -9.0, -1.2, -40.0], dtype=dtype)
    rr = torch.tensor([-3.0, -3.0, -1.1, -6.0], dtype=dtype)
    return pc, pr, rc, rr


def _h(pc, pr, rc, rr):
    return [(a - c) - (b - d) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]


# Independent per-pair formulas, written from the papers / TRL's documentation.
FORMULAS = {
    ("sigmoid", 0.0): lambda h, b, e: -_logsig(b * h),
    ("sigmoid", 0.2): lambda h, b, e: -(1 - e) * _logsig(b * h) - e * _logsig(-b * h),
    ("ipo", 0.0): lambda h, b, e: (h - 1 / (2 * b)) ** 2,
    ("hinge", 0.0): lambda h, b, e: max(0.0, 1 - b * h),
    ("robust", 0.0): lambda h, b, e: -_logsig(b * h),
    ("robust", 0.2): lambda h, b, e: ((1 - e) * -_logsig(b * h) + e * _logsig(-b * h)) / (1 - 2 * e),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type, eps", list(FORMULAS))
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_each_loss_type_matches_an_independent_formula(dtype, loss_type, eps, beta):
    pc, pr, rc, rr = _inputs(dtype)
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    expect = [FORMULAS[(loss_type, eps)](h, beta, eps) for h in _h(pc, pr, rc, rr)]
    assert out.losses.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.losses.tolist() == pytest.approx(expect, rel=tol, abs=tol)
    # TRL: rewards = beta * (policy - reference) log-probs, detached.
    assert out.chosen_rewards.tolist() == pytest.approx(
        [beta * (a - c) for a, c in zip(pc.tolist(), rc.tolist())], rel=tol
    )
    assert not out.chosen_rewards.requires_grad
    assert out.margins.tolist() == pytest.approx([beta * h for h in _h(pc, pr, rc, rr)], rel=tol, abs=tol)


def test_robust_with_zero_smoothing_equals_sigmoid_exactly():
    pc, pr, rc, rr = _inputs(torch.float64)
    a = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="robust").losses
    b = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="sigmoid").losses
    assert torch.equal(a, b)


def test_ipo_is_minimal_at_h_equal_one_over_two_beta():
    beta = 0.25
    hs = torch.linspace(-1.0, 5.0, 601, dtype=torch.float64)  # step 0.01, contains 2.0
    zero = torch.zeros_like(hs)
    losses = dpo_loss(hs, zero, zero, zero, beta=beta, loss_type="ipo").losses
    assert hs[losses.argmin()].item() == pytest.approx(1 / (2 * beta))
    assert losses.min().item() == pytest.approx(0.0, abs=1e-20)


def test_ipo_token_counts_reproduce_trl_length_normalisation():
    pc, pr, rc, rr = _inputs(torch.float64)
    nc = torch.tensor([3, 5, 1, 10])
    nr = torch.tensor([2, 2, 4, 0])  # 0 is clamped to 1 as TRL does
    out = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo", chosen_token_counts=nc, rejected_token_counts=nr)
    expect = [((a - c) / max(n, 1) - (b - d) / max(m, 1) - 1.0) ** 2
              for a, b, c, d, n, m in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), nc.tolist(), nr.tolist())]
    assert out.losses.tolist() == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="only loss_type='ipo'"):
        dpo_loss(pc, pr, rc, rr, loss_type="sigmoid", chosen_token_counts=nc, rejected_token_counts=nr)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_beta_raises(beta):
    pc, pr, rc, rr = _inputs(torch.float64)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=beta)


def test_unknown_loss_type_lists_valid_ones_and_smoothing_is_checked():
    pc, pr, rc, rr = _inputs(torch.float64)
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="no meaning"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", label_smoothing=0.1)
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "ipo", "hinge", "robust"}


def test_shape_errors_name_the_argument():
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ShapeError, match="ref_rejected_logps"):
        dpo_loss(x, x, x, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="1-D"):
        dpo_loss(x[None], x[None], x[None], x[None])


def _bandit_grad(loss_type, beta):
    """Loss of one pair (w=1, l=3) on a 1-context tabular policy, gradient w.r.t. its logits."""
    pol = TabularPolicy(1, 4, init_scale=0.8, seed=7)
    ref = torch.log_softmax(torch.tensor([[0.3, -0.2, 0.1, 0.5]], dtype=torch.float64), -1)
    lp = pol.log_probs_table()
    h = (lp[0, 1] - ref[0, 1]) - (lp[0, 3] - ref[0, 3])
    out = dpo_loss(lp[0, 1:2], lp[0, 3:4], ref[0, 1:2], ref[0, 3:4], beta=beta, loss_type=loss_type)
    out.losses.sum().backward()
    diff = torch.zeros(1, 4, dtype=torch.float64)
    diff[0, 1], diff[0, 3] = 1.0, -1.0
    return pol.logits.grad, h.detach(), diff


def test_dpo_gradient_matches_closed_form():
    beta = 0.7
    grad, h, diff = _bandit_grad("sigmoid", beta)
    torch.testing.assert_close(grad, -beta * torch.sigmoid(-beta * h) * diff, rtol=0, atol=1e-14)


def test_ipo_gradient_matches_closed_form():
    tau = 0.4
    grad, h, diff = _bandit_grad("ipo", tau)
    torch.testing.assert_close(grad, 2 * (h - 1 / (2 * tau)) * diff, rtol=0, atol=1e-13)


@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_gradcheck_every_loss_type(loss_type, eps):
    g = torch.Generator().manual_seed(1)
    xs = tuple((-5 * torch.rand(3, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(4))
    # hinge is not differentiable at βh = 1; random points avoid it almost surely.
    assert torch.autograd.gradcheck(
        lambda *a: dpo_loss(*a, beta=0.3, loss_type=loss_type, label_smoothing=eps).losses, xs
    )
