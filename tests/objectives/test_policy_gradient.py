"""PPO-clip per-token loss and TRL's token aggregations: hand values, gradients, accumulation, TRL parity, errors."""
import math

import pytest
import torch
from trl_stubs import trl_grpo_loss, trl_rloo_loss

from mdpalign.objectives import (
    TOKEN_LOSS_TYPES,
    ShapeError,
    aggregate_token_loss,
    kl_loss_term,
    ppo_clip_loss,
)

f64 = torch.float64


def test_clip_hand_values_and_flags():
    # ratios 1.5 / 0.5 / 1.1 / 0.5 against advantages +1 / −1 / +2 / +1, ε = 0.2
    old = torch.zeros(1, 4, dtype=f64)
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]], dtype=f64)).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]], dtype=f64)
    out = ppo_clip_loss(lp, old, adv, torch.ones(1, 4))
    # −min(ρA, clip(ρ)A): −min(1.5, 1.2) = −1.2; −min(−0.5, −0.8) = 0.8; −min(2.2, 2.2) = −2.2; −min(0.5, 0.8) = −0.5
    assert out.losses.tolist()[0] == pytest.approx([-1.2, 0.8, -2.2, -0.5], rel=1e-14)
    assert out.is_high_clipped.tolist()[0] == [True, False, False, False]
    assert out.is_low_clipped.tolist()[0] == [False, True, False, False]
    assert out.is_clipped.tolist()[0] == [True, True, False, False]
    (g,) = torch.autograd.grad(out.losses.sum(), lp)
    # clipped tokens have no gradient; elsewhere d(−ρA)/dlogπ = −ρA
    assert g.tolist()[0] == pytest.approx([0.0, 0.0, -2.2, -0.5], rel=1e-14, abs=0)


def test_epsilon_high_is_asymmetric():
    lp = torch.log(torch.tensor([[1.25, 0.75]], dtype=f64))
    out = ppo_clip_loss(lp, torch.zeros_like(lp), torch.tensor([[1.0, -1.0]], dtype=f64), torch.ones(1, 2),
                        epsilon=0.2, epsilon_high=0.28)
    # 1.25 < 1.28: not clipped high; 0.75 < 0.8 with A < 0: clipped low -> loss 0.8
    assert out.losses.tolist()[0] == pytest.approx([-1.25, 0.8], rel=1e-14)


def test_on_policy_is_reinforce():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 4, generator=g, dtype=f64).requires_grad_(True)
    adv = torch.randn(3, generator=g, dtype=f64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    out = ppo_clip_loss(lp, None, adv, mask)
    assert out.ratios.tolist() == mask.to(f64).tolist()  # ρ = 1 on counted tokens (0 where masked)
    (grad,) = torch.autograd.grad(out.losses.sum(), lp)
    torch.testing.assert_close(grad, -adv[:, None] * mask, rtol=0, atol=1e-15)


def test_per_token_advantages_and_masked_garbage():
    lp = torch.tensor([[-1.0, float("-inf")]], dtype=f64, requires_grad=True)
    out = ppo_clip_loss(lp, None, torch.tensor([[0.5, float("nan")]], dtype=f64), torch.tensor([[1, 0]]))
    assert out.losses.tolist() == [[-0.5, 0.0]]
    (grad,) = torch.autograd.grad(out.losses.sum(), lp)
    assert grad.tolist() == [[-0.5, 0.0]]


# ------------------------------------------------------------------------------------------------ aggregation

L = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]], dtype=f64)
M = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("loss_type, kwargs, expect", [
    ("grpo", {}, ((1 + 2 + 3) / 3 + 4 / 1) / 2),
    ("bnpo", {}, (1 + 2 + 3 + 4) / 4),
    ("dr_grpo", {}, (1 + 2 + 3 + 4) / (2 * 4)),
    ("dr_grpo", {"max_completion_length": 8}, (1 + 2 + 3 + 4) / (2 * 8)),
    ("dapo", {}, (1 + 2 + 3 + 4) / 4),
    ("dapo", {"num_items_in_batch": 20}, (1 + 2 + 3 + 4) / 20),
    ("seq_sum", {}, ((1 + 2 + 3) + 4) / 2),
])
def test_aggregation_hand_values(loss_type, kwargs, expect):
    assert aggregate_token_loss(L, M, loss_type, **kwargs).item() == pytest.approx(expect, rel=1e-15)


def test_leading_dimensions_aggregate_each_batch():
    stacked = torch.stack([L, 2 * L])
    masks = torch.stack([M, M.flip(0)])
    for lt in TOKEN_LOSS_TYPES:
        out = aggregate_token_loss(stacked, masks, lt)
        assert out.shape == (2,)
        for i in range(2):
            assert out[i].item() == pytest.approx(aggregate_token_loss(stacked[i], masks[i], lt).item(), rel=1e-15)


def test_empty_rows_count_once_with_zero_loss_as_trl():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    assert aggregate_token_loss(L, mask, "grpo").item() == pytest.approx((1 + 2) / 2 / 2, rel=1e-15)


def test_gradient_accumulation_exact_only_with_the_global_token_count():
    # One optimizer step over two micro-batches holding 4 and 1 counted tokens (the trl#2617 class of bug).
    g = torch.Generator().manual_seed(2)
    full = torch.randn(4, 3, generator=g, dtype=f64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    micro = [(full[:2], mask[:2]), (full[2:], mask[2:])]
    whole = aggregate_token_loss(full, mask, "dapo")
    n_total = mask.sum()
    accumulated = sum(aggregate_token_loss(x, m, "dapo", num_items_in_batch=n_total) for x, m in micro)
    assert accumulated.item() == pytest.approx(whole.item(), rel=1e-14)
    per_micro_mean = sum(aggregate_token_loss(x, m, "bnpo") for x, m in micro) / 2
    assert abs(per_micro_mean.item() - whole.item()) > 1e-2  # the per-micro-batch token mean weighs tokens wrongly


# ---------------------------------------------------------------------------------------------- TRL parity


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("off_policy", [False, True])
def test_grpo_loss_and_gradient_match_trl(loss_type, bias_correction, off_policy):
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(3, 4, generator=g, dtype=f64).requires_grad_(True)
    old = (theta.detach() + 0.4 * torch.randn(3, 4, generator=g, dtype=f64)) if off_policy else None
    ref = theta.detach() + 0.5 * torch.randn(3, 4, generator=g, dtype=f64)
    adv = torch.randn(3, generator=g, dtype=f64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    beta = 0.3
    kw = dict(max_completion_length=6) if loss_type == "dr_grpo" else {}
    num = mask.sum() if loss_type == "dapo" else None
    expect = trl_grpo_loss(theta, old, ref, adv, mask, loss_type, beta, bias_correction, num_items=num, **kw)
    per_token = ppo_clip_loss(theta, old, adv, mask).losses + beta * kl_loss_term(
        theta, ref, mask, "k3", old_token_logps=old if bias_correction else None,
        use_bias_correction_kl=bias_correction)
    ours = aggregate_token_loss(per_token, mask, loss_type, **kw)
    assert ours.item() == pytest.approx(expect.item(), rel=1e-13)
    (g_ours,) = torch.autograd.grad(ours, theta)
    (g_trl,) = torch.autograd.grad(expect, theta)
    torch.testing.assert_close(g_ours, g_trl, rtol=1e-12, atol=1e-15)


def test_rloo_sequence_loss_matches_trl():
    """TRL 1.16 ``RLOOTrainer._compute_loss``: sequence-level ratio on summed log-probs, mean over sequences —
    ``ppo_clip_loss`` on ``(B, 1)`` summed log-probs aggregated by ``seq_sum``."""
    g = torch.Generator().manual_seed(3)
    tok = torch.randn(4, 3, generator=g, dtype=f64).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    old_seq = (tok.detach() * mask).sum(1) + 0.3 * torch.randn(4, generator=g, dtype=f64)
    adv = torch.randn(4, generator=g, dtype=f64)
    expect = trl_rloo_loss(tok, mask, old_seq, adv)
    seq = (tok * mask).sum(1, keepdim=True)
    ones = torch.ones(4, 1, dtype=torch.bool)
    ours = aggregate_token_loss(ppo_clip_loss(seq, old_seq[:, None], adv, ones).losses, ones, "seq_sum")
    assert ours.item() == pytest.approx(expect.item(), rel=1e-13)


# --------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_each_raise_one_clear_error():
    lp = torch.zeros(2, 3, dtype=f64)
    mask = torch.ones(2, 3)
    adv = torch.zeros(2, dtype=f64)
    with pytest.raises(ValueError, match="token_logps itself"):
        ppo_clip_loss(lp, lp, adv, mask)
    with pytest.raises(ShapeError, match=r"advantages must have shape \(2,\) \(per sequence\) or \(2, 3\)"):
        ppo_clip_loss(lp, None, torch.zeros(3, dtype=f64), mask)
    with pytest.raises(ShapeError, match="mask must have the shape"):
        ppo_clip_loss(lp, None, adv, torch.ones(2, 2))
    with pytest.raises(ValueError, match="epsilon must be < 1"):
        ppo_clip_loss(lp, None, adv, mask, epsilon=1.0)
    with pytest.raises(ShapeError, match="at least 2 dimension"):
        ppo_clip_loss(torch.zeros(3, dtype=f64), None, torch.zeros((), dtype=f64), torch.ones(3))
    with pytest.raises(ValueError, match="unknown loss_type 'token_mean'"):
        aggregate_token_loss(lp, mask, "token_mean")
    with pytest.raises(ValueError, match="max_completion_length is used only by loss_type='dr_grpo'"):
        aggregate_token_loss(lp, mask, "dapo", max_completion_length=4)
    with pytest.raises(ValueError, match="shorter than the padded width"):
        aggregate_token_loss(lp, mask, "dr_grpo", max_completion_length=2)
    with pytest.raises(ValueError, match="num_items_in_batch is used only by loss_type='dapo'"):
        aggregate_token_loss(lp, mask, "grpo", num_items_in_batch=3)
    with pytest.raises(ValueError, match="num_items_in_batch must be > 0"):
        aggregate_token_loss(lp, mask, "dapo", num_items_in_batch=0)
    assert math.isfinite(aggregate_token_loss(lp, mask, "dapo").item())
