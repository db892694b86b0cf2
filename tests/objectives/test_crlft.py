import math

import pytest
import torch

from mdpalign.objectives import (
    OPENCHAT_CLASS_REWARDS,
    ShapeError,
    crlft_class_weights,
    crlft_loss,
    crlft_reduce,
    sft_loss,
)
from mdpalign.policies import TabularPolicy

LP = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -0.5, -9.0], [-3.0, -1.0, -1.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_weights_reduce_to_sft(dtype):
    lp = LP.to(dtype)
    w = torch.full((3,), 0.37, dtype=dtype)
    tok = crlft_reduce(crlft_loss(lp, MASK, w, reduction="token"))
    seq = crlft_reduce(crlft_loss(lp, MASK, w, reduction="sequence"))
    assert tok.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert tok.item() == pytest.approx(sft_loss(lp, MASK).mean().item(), rel=tol)
    assert seq.item() == pytest.approx(sft_loss(lp, MASK, normalize=True).mean().item(), rel=tol)


def test_openchat_normalisation_and_scale_invariance():
    w = torch.tensor([1.0, 0.1, 0.1], dtype=torch.float64)
    seq = crlft_reduce(crlft_loss(LP, MASK, w, reduction="sequence")).item()
    # OpenChat's code: each token weighted w_c / n_i, batch divided by Σ w
    means = [7.0 / 3, 1.0 / 2 * 1.0, 3.0]
    assert seq == pytest.approx(sum(wi * m for wi, m in zip([1.0, 0.1, 0.1], means)) / 1.2, rel=1e-14)
    for reduction in ("token", "sequence"):
        a = crlft_reduce(crlft_loss(LP, MASK, w, reduction=reduction))
        b = crlft_reduce(crlft_loss(LP, MASK, 17.0 * w, reduction=reduction))
        assert a.item() == pytest.approx(b.item(), rel=1e-14)


def test_crlft_gradient_is_weight_times_sft_gradient():
    pol = TabularPolicy(2, 3, init_scale=0.5, seed=1)
    s = torch.tensor([[0], [1]])
    a = torch.tensor([[2], [0]])
    m = torch.ones(2, 1, dtype=torch.bool)
    w = torch.tensor([1.0, 0.1], dtype=torch.float64)
    crlft_loss(pol.token_logps(s, a), m, w).losses.sum().backward()
    pi = pol.probs().detach()
    expect = pi.clone()
    expect[0, 2] -= 1
    expect[1, 0] -= 1
    expect = expect * w[:, None]
    torch.testing.assert_close(pol.logits.grad, expect, rtol=0, atol=1e-15)


def test_class_weights_are_exp_r_over_beta():
    r = OPENCHAT_CLASS_REWARDS
    assert r == (1.0, 0.1)
    w = crlft_class_weights(r, beta=0.5)
    assert w.tolist() == pytest.approx([math.exp(2.0), math.exp(0.2)], rel=1e-15)
    assert crlft_class_weights(r, 0.5, normalize="max").tolist() == pytest.approx([1.0, math.exp(-1.8)], rel=1e-15)
    z = math.exp(2.0) + math.exp(0.2)
    assert crlft_class_weights(r, 0.5, normalize="sum").tolist() == pytest.approx(
        [math.exp(2.0) / z, math.exp(0.2) / z], rel=1e-15
    )
    # tiny beta: exp overflows, the normalised forms do not
    assert crlft_class_weights(r, 1e-3, normalize="max").tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="beta"):
        crlft_class_weights(r, 0.0)


def test_crlft_errors():
    with pytest.raises(ShapeError, match="one per sequence"):
        crlft_loss(LP, MASK, torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        crlft_loss(LP, MASK, torch.tensor([1.0, -0.1, 1.0]))
    with pytest.raises(ValueError, match="sum to 0"):
        crlft_reduce(crlft_loss(LP, MASK, torch.zeros(3)))
    with pytest.raises(ValueError, match="token, sequence"):
        crlft_loss(LP, MASK, torch.ones(3), reduction="mean")
