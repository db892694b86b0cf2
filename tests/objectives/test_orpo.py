import math

import pytest
import torch

from mdpalign.objectives import ShapeError, batch_token_mean, orpo_log_odds, orpo_loss


def _naive_log_odds(a_c: float, a_r: float) -> float:
    pc, pr = math.exp(a_c), math.exp(a_r)
    return math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))


def test_log_odds_match_naive_float64_where_stable():
    pairs = [(-0.1, -2.0), (-1.0, -0.5), (-3.0, -3.5), (-0.69, -0.7), (-10.0, -0.01)]
    a_c = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    a_r = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    got = orpo_log_odds(a_c, a_r).tolist()
    assert got == pytest.approx([_naive_log_odds(*p) for p in pairs], rel=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_odds_finite_at_the_extremes_with_finite_gradients(dtype):
    a_c = torch.tensor([-1e-30, 0.0, -800.0, -1e-7], dtype=dtype, requires_grad=True)
    a_r = torch.tensor([-800.0, -1.0, -1e-30, -1e-7], dtype=dtype, requires_grad=True)
    lo = orpo_log_odds(a_c, a_r)
    assert bool(torch.isfinite(lo).all())
    # log odds(a) = a - log(1 - e^a) = a - log(-expm1(a)) -> -log(-a) as a -> 0-, and -> a as a -> -inf
    # (row 1, a_c = 0, has infinite odds: only its finiteness is specified, so it is left out below)
    def odds(a):
        return a - math.log(-math.expm1(a))

    tol = 1e-6 if dtype == torch.float32 else 1e-12
    rows = (0, 2, 3)
    exact = {i: odds(a_c[i].item()) - odds(a_r[i].item()) for i in rows}
    assert [lo[i].item() for i in rows] == pytest.approx([exact[i] for i in rows], rel=tol, abs=tol)
    if dtype == torch.float64:
        assert lo[0].item() == pytest.approx(-math.log(1e-30) - (-800.0), rel=1e-12)
    (-torch.nn.functional.logsigmoid(lo)).sum().backward()
    assert bool(torch.isfinite(a_c.grad).all()) and bool(torch.isfinite(a_r.grad).all())
    # d/dlo -log sigma(lo) = -sigma(-lo); d odds/da = 1/(1 - e^a) = -1/expm1(a): the chain rule by hand
    for i in rows:
        x = exact[i]
        outer = -(math.exp(-x) / (1.0 + math.exp(-x)) if x > 0 else 1.0 / (1.0 + math.exp(x)))  # -sigma(-x)
        assert a_c.grad[i].item() == pytest.approx(outer * (-1.0 / math.expm1(a_c[i].item())), rel=tol, abs=tol), i
        assert a_r.grad[i].item() == pytest.approx(outer * (1.0 / math.expm1(a_r[i].item())), rel=tol, abs=tol), i


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_loss_against_hand_formula(dtype):
    c = torch.tensor([[-0.2, -0.4, -9.0], [-1.0, -2.0, -3.0]], dtype=dtype)
    cm = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    r = torch.tensor([[-2.0, -1.0], [-0.1, -5.0]], dtype=dtype)
    rm = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    lam = 0.3
    out = orpo_loss(c, cm, r, rm, lam=lam)
    a_c, a_r = [-0.3, -2.0], [-1.5, -0.1]
    nll = [0.3, 2.0]  # default scope: the chosen completion tokens, mean per sequence
    lo = [_naive_log_odds(x, y) for x, y in zip(a_c, a_r)]
    expect = [n + lam * math.log1p(math.exp(-v)) for n, v in zip(nll, lo)]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.chosen_avg_logps.tolist() == pytest.approx(a_c, rel=tol)
    assert out.log_odds.tolist() == pytest.approx(lo, rel=tol)
    assert out.losses.tolist() == pytest.approx(expect, rel=tol)
    assert out.losses.dtype == dtype
    assert out.chosen_rewards.tolist() == pytest.approx([lam * a for a in a_c], rel=tol)


def test_nll_scope_can_be_prompt_plus_response_and_trl_reduces_by_token_mean():
    c = torch.tensor([[-0.2, -0.4]], dtype=torch.float64).repeat(2, 1)
    m = torch.ones(2, 2, dtype=torch.bool)
    r = torch.tensor([[-2.0, -1.0]], dtype=torch.float64).repeat(2, 1)
    full = torch.tensor([[-1.0, -2.0, -0.2, -0.4], [-5.0, -0.2, -0.4, 0.0]], dtype=torch.float64)
    fm = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    out = orpo_loss(c, m, r, m, lam=0.1, nll_token_logps=full, nll_mask=fm)
    assert out.nll.tolist() == pytest.approx([3.6 / 4, 5.6 / 3])
    assert batch_token_mean(out.nll_token_sum, out.nll_token_count).item() == pytest.approx(9.2 / 7)
    default = orpo_loss(c, m, r, m, lam=0.1)
    assert default.nll.tolist() == pytest.approx([0.3, 0.3])
    assert torch.equal(default.odds_ratio_loss, out.odds_ratio_loss)


def test_orpo_errors():
    x = torch.zeros(2, 2) - 1.0
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="lam"):
        orpo_loss(x, m, x, m, lam=-0.1)
    with pytest.raises(ValueError, match="batch sizes differ"):
        orpo_loss(x, m, x[:1], m[:1])
    with pytest.raises(ValueError, match="both nll_token_logps and nll_mask"):
        orpo_loss(x, m, x, m, nll_token_logps=x)
    with pytest.raises(ShapeError, match="rejected_token_logps"):
        orpo_loss(x, m, x, torch.zeros(2, 2, dtype=torch.bool))


def test_orpo_gradcheck():
    g = torch.Generator().manual_seed(0)
    c = (-torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.05).requires_grad_()
    r = (-torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.05).requires_grad_()
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: orpo_loss(a, m, b, m, lam=0.5).losses, (c, r))


def test_odds_ratio_term_matches_trl_orpo_trainer():
    """TRL's ``ORPOTrainer.odds_ratio_loss`` (experimental) returns ``beta·logσ(log_odds)`` per example; ours is
    ``odds_ratio_loss = −logσ(log_odds)`` with ``lam`` in TRL's ``beta`` role."""
    orpo_mod = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    from types import SimpleNamespace

    fake = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    a_c = torch.tensor([-0.1, -2.0, -1e-6, -30.0])
    a_r = torch.tensor([-1.5, -0.2, -3.0, -1e-6])
    trl_losses, trl_c, _, _, trl_log_odds = orpo_mod.ORPOTrainer.odds_ratio_loss(fake, a_c, a_r)
    ours = orpo_loss(
        a_c[:, None], torch.ones(4, 1, dtype=torch.bool), a_r[:, None], torch.ones(4, 1, dtype=torch.bool), lam=0.25
    )
    torch.testing.assert_close(-0.25 * ours.odds_ratio_loss, trl_losses, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.log_odds.mean(), trl_log_odds, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.chosen_rewards, trl_c, rtol=0, atol=0)
