"""Token rewards, GAE and the clipped value loss: hand values, unbiasedness by exact enumeration, the trl#3750 guard."""
import itertools

import pytest
import torch

from mdpalign.objectives import ShapeError, clipped_value_loss, gae_advantages, place_sequence_rewards

f64 = torch.float64


def test_reward_lands_on_the_last_counted_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    out = place_sequence_rewards(torch.tensor([2.0, -1.0, 0.5], dtype=f64), mask)
    assert out.tolist() == [[0, 2.0, 0, 0], [0, 0, -1.0, 0], [0, 0, 0, 0.5]]


def test_gae_hand_values():
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=f64)
    v = torch.tensor([[0.5, 0.2, 0.1]], dtype=f64)
    out = gae_advantages(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    # δ3 = 1 − 0.1 = 0.9; δ2 = 0.9·0.1 − 0.2 = −0.11; δ1 = 0.9·0.2 − 0.5 = −0.32; γλ = 0.72
    a3 = 0.9
    a2 = -0.11 + 0.72 * a3
    a1 = -0.32 + 0.72 * a2
    assert out.advantages.tolist()[0] == pytest.approx([a1, a2, a3], rel=1e-14)
    assert out.returns.tolist()[0] == pytest.approx([a1 + 0.5, a2 + 0.2, a3 + 0.1], rel=1e-14)


def test_gae_monte_carlo_limit_and_skipped_positions():
    # γ = λ = 1: Â_t = Σ_{k>=t} r_k − V_t over counted tokens; a hole in the mask is skipped, not a step
    r = torch.tensor([[0.3, 0.0, -0.2, 1.0]], dtype=f64)
    v = torch.tensor([[0.1, 7.0, 0.4, 0.6]], dtype=f64)
    mask = torch.tensor([[1, 0, 1, 1]])
    out = gae_advantages(r, v, mask, gamma=1.0, lam=1.0)
    assert out.advantages.tolist()[0] == pytest.approx([1.1 - 0.1, 0.0, 0.8 - 0.4, 1.0 - 0.6], rel=1e-14)
    # γ < 1 on the same mask: the hole does not discount (the next counted value is one step away)
    d = gae_advantages(r, v, mask, gamma=0.5, lam=1.0).advantages.tolist()[0]
    assert d[0] == pytest.approx(0.3 + 0.5 * (-0.2) + 0.25 * 1.0 - 0.1, rel=1e-14)


def test_reward_after_the_response_is_an_error():
    # trl#3750: the sequence reward written on the PAD after EOS
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=f64)
    with pytest.raises(ValueError, match="non-counted position \\(0, 2\\)"):
        gae_advantages(r, torch.zeros_like(r), torch.tensor([[1, 1, 0]]))


def test_gae_unbiased_for_any_values_at_lambda_one_and_for_true_values_only_below():
    """E_y[Σ_t Â_t ∇log pi(y_t|s_t)] on a depth-2 tree with a binary vocabulary (4 leaves), by enumeration:
    equals ∇E[r] for arbitrary values when λ = 1, for the true values V^pi at any λ, not for wrong values at λ < 1."""
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(3, 2, generator=g, dtype=f64).requires_grad_(True)  # states: root 0, after a: 1 + a
    leaf_r = torch.randn(2, 2, generator=g, dtype=f64)

    def expected_pg(values_fn, lam):
        lp = torch.log_softmax(theta, -1)
        total = 0.0
        for a, b in itertools.product(range(2), repeat=2):
            tok = torch.stack([lp[0, a], lp[1 + a, b]]).reshape(1, 2)
            w = torch.exp(tok.sum()).detach()
            rewards = place_sequence_rewards(leaf_r[a, b].reshape(1), torch.ones(1, 2))
            adv, _ = gae_advantages(rewards, values_fn(a).reshape(1, 2), torch.ones(1, 2), 1.0, lam)
            total = total + w * (adv * tok).sum()
        return torch.autograd.grad(total, theta)[0]

    pi = torch.softmax(theta.detach(), -1)
    v_child = (pi[1:] * leaf_r).sum(-1)              # V^pi(after a)
    v_root = (pi[0] * v_child).sum()
    true_values = lambda a: torch.stack([v_root, v_child[a]])  # noqa: E731
    wrong_values = lambda a: torch.tensor([0.7, -0.9 + a], dtype=f64)  # noqa: E731
    th = theta.detach().clone().requires_grad_(True)
    j = (torch.softmax(th[0], -1) * (torch.softmax(th[1:], -1) * leaf_r).sum(-1)).sum()
    (pg,) = torch.autograd.grad(j, th)               # ∇E[r]
    torch.testing.assert_close(expected_pg(wrong_values, 1.0), pg, rtol=0, atol=1e-14)
    torch.testing.assert_close(expected_pg(true_values, 0.5), pg, rtol=0, atol=1e-14)
    assert float((expected_pg(wrong_values, 0.5) - pg).abs().max()) > 1e-2


def test_clipped_value_loss_hand_values():
    v = torch.tensor([[1.5, 0.5, 1.1]], dtype=f64, requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0]], dtype=f64)
    ret = torch.tensor([[2.0, 0.0, 1.0]], dtype=f64)
    out = clipped_value_loss(v, old, ret, torch.ones(1, 3), clip_range=0.2)
    # token 1: (1.5−2)² = .25, clip -> 1.2: (1.2−2)² = .64 -> ½·.64; token 2: (.5)² = .25 vs (.8)² = .64 -> ½·.64;
    # token 3: (.1)² = .01 vs clip(1.1) = 1.1 -> same -> ½·.01
    assert out.losses.tolist()[0] == pytest.approx([0.32, 0.32, 0.005], rel=1e-13)
    assert out.is_clipped.tolist()[0] == [True, True, False]
    (grad,) = torch.autograd.grad(out.losses.sum(), v)
    assert grad.tolist()[0] == pytest.approx([0.0, 0.0, 0.1], abs=1e-14)  # clipped branch is flat in V
    plain = clipped_value_loss(v, old, ret, torch.ones(1, 3), clip_range=None)
    assert plain.losses.tolist()[0] == pytest.approx([0.125, 0.125, 0.005], rel=1e-13)


def test_bad_inputs_each_raise_one_clear_error():
    x = torch.zeros(2, 3, dtype=f64)
    mask = torch.ones(2, 3)
    with pytest.raises(ShapeError, match="count no token|counts no token"):
        place_sequence_rewards(torch.zeros(2, dtype=f64), torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ShapeError, match=r"rewards must have shape \(2,\)"):
        place_sequence_rewards(torch.zeros(3, dtype=f64), mask)
    with pytest.raises(ValueError, match="gamma and lam must lie in \\[0, 1\\]"):
        gae_advantages(x, x, mask, gamma=1.5)
    with pytest.raises(ShapeError, match="values must have the shape of rewards"):
        gae_advantages(x, torch.zeros(2, 2, dtype=f64), mask)
    with pytest.raises(ValueError, match="clip_range must be a finite number >= 0"):
        clipped_value_loss(x, x, x, mask, clip_range=-0.1)
