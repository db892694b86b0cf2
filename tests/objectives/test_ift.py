import pytest
import torch
from torch import nn

from mdpalign.objectives import (
    causal_predicted_inputs,
    fuse_embeddings,
    ift_loss,
    ift_two_pass,
    propagation_weights,
    sft_loss,
    shift_mask_to_inputs,
    successor_from_table,
)
from mdpalign.objectives.common import ShapeError
from mdpalign.policies import MLPPolicy, TabularPolicy

STATES = torch.tensor([[0, 1, 2, 3], [4, 2, 0, 0], [1, 3, 4, 2]])
ACTIONS = torch.tensor([[1, 0, 2, 1], [2, 2, 0, 0], [0, 1, 1, 2]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
NEXT = torch.tensor([[1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 1], [0, 1, 2]])


def _policies():
    return [TabularPolicy(5, 3, init_scale=1.0, seed=0), MLPPolicy(5, 3, hidden=7, seed=1),
            MLPPolicy(5, 3, hidden=7, input="embedding", embed_dim=4, seed=2)]


@pytest.mark.parametrize("pol_index", [0, 1, 2])
def test_lambda_zero_decay_zero_is_exactly_sft_per_sequence_mean(pol_index):
    pol = _policies()[pol_index]
    sft = sft_loss(pol.token_logps(STATES, ACTIONS), MASK, normalize=True)
    two = ift_two_pass(pol, STATES, ACTIONS, MASK, lam=0.0, predicted_inputs=successor_from_table(NEXT))
    ift = ift_loss(two.token_logps, MASK, decay=0.0)
    # Exact (torch.equal): λ = 0 makes the fused input bitwise the true one, and decay = 0 uses unit weights.
    assert torch.equal(ift.losses, sft)
    for form in ("reference", "paper"):
        assert torch.equal(ift_loss(two.token_logps, MASK, decay=0.0, form=form).losses, sft)


def _hand_v(l, m, decay):
    B, T = len(l), len(l[0])
    return [[sum(decay ** (k - t) * l[b][k] for k in range(t, T) if m[b][k]) if m[b][t] else 0.0 for t in range(T)]
            for b in range(B)]


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95, 1.0])
def test_propagation_weights_match_a_hand_loop(decay):
    g = torch.Generator().manual_seed(0)
    l = torch.rand(3, 4, generator=g, dtype=torch.float64)
    v = propagation_weights(l, MASK, decay=decay)
    expect = _hand_v(l.tolist(), MASK.tolist(), decay)
    for row_v, row_e in zip(v.tolist(), expect):
        assert row_v == pytest.approx(row_e, rel=1e-14, abs=0)


@pytest.mark.parametrize("decay", [0.5, 0.95])
def test_reference_and_paper_forms_against_hand_formulas(decay):
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.01
    l = (-lp).tolist()
    v = _hand_v(l, MASK.tolist(), decay)
    ref, paper = [], []
    for b in range(3):
        ts = [t for t in range(4) if MASK[b, t]]
        ref.append(sum(l[b][t] * v[b][t] for t in ts) / sum(v[b][t] for t in ts))
        paper.append(sum(v[b][t] for t in ts) / len(ts))
    assert ift_loss(lp, MASK, decay=decay).losses.tolist() == pytest.approx(ref, rel=1e-13)
    assert ift_loss(lp, MASK, decay=decay, form="paper").losses.tolist() == pytest.approx(paper, rel=1e-13)
    # reference weights w_t = v_t·n/Σv sum to the token count, as in the reference code
    out = ift_loss(lp, MASK, decay=decay)
    assert out.weights.sum(-1).tolist() == pytest.approx(MASK.sum(-1).double().tolist(), rel=1e-13)


def test_detach_changes_the_gradient_but_not_the_value():
    lp0 = -torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 0.1
    grads, values = [], []
    for detach in (False, True):
        lp = lp0.clone().requires_grad_()
        out = ift_loss(lp, MASK, decay=0.9, detach_weights=detach)
        out.losses.sum().backward()
        grads.append(lp.grad)
        values.append(out.losses.detach())
    assert torch.equal(values[0], values[1])
    assert (grads[0] - grads[1]).abs().max() > 1e-3
    # detached: d/dl (Σ l v / Σ v) with v constant = v / Σ v, and dl/dlp = -1
    v = propagation_weights(-lp0, MASK, decay=0.9)
    torch.testing.assert_close(grads[1], -(v / v.sum(-1, keepdim=True)), rtol=1e-12, atol=1e-15)


def test_ift_gradcheck_with_non_detached_weights():
    lp = (-torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) - 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ift_loss(x, MASK, decay=0.8).losses, (lp,))


def test_zero_loss_row_gives_zero_not_nan():
    lp = torch.zeros(1, 3, dtype=torch.float64)
    assert ift_loss(lp, torch.ones(1, 3, dtype=torch.bool)).losses.item() == 0.0


def test_fuse_embeddings_leaves_non_counted_positions_untouched():
    g = torch.Generator().manual_seed(4)
    e = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    p = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    m = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    out = fuse_embeddings(e, p, m, lam=0.3)
    assert torch.equal(out[~m], e[~m])
    torch.testing.assert_close(out[m], 0.7 * e[m] + 0.3 * p[m], rtol=0, atol=1e-15)
    assert torch.equal(fuse_embeddings(e, p, m, lam=0.0), e)
    with pytest.raises(ValueError, match="lam"):
        fuse_embeddings(e, p, m, lam=1.5)


def test_two_pass_on_a_tabular_policy_uses_fused_logits_and_greedy_successors():
    pol = TabularPolicy(5, 3, init_scale=1.0, seed=5)
    lam = 0.25
    two = ift_two_pass(pol, STATES, ACTIONS, MASK, lam=lam, predicted_inputs=successor_from_table(NEXT))
    theta = pol.logits.detach()
    greedy = theta.argmax(-1)
    fuse = shift_mask_to_inputs(MASK)
    for b in range(3):
        for t in range(4):
            s = int(STATES[b, t])
            if fuse[b, t]:
                s_prev = int(STATES[b, t - 1])
                s_hat = int(NEXT[s_prev, greedy[s_prev]])
                assert int(two.predicted_inputs[b, t]) == s_hat
                z = (1 - lam) * theta[s] + lam * theta[s_hat]
            else:
                z = theta[s]
            if MASK[b, t]:
                expect = torch.log_softmax(z, -1)[ACTIONS[b, t]].item()
                assert two.token_logps[b, t].item() == pytest.approx(expect, rel=1e-13)
            else:
                assert two.token_logps[b, t].item() == 0.0
    # The greedy pass carries no gradient: the loss gradient equals that of the fused logits alone, built
    # here by hand on a fresh leaf copy of theta with the greedy successors fixed as constants.
    ift_loss(two.token_logps, MASK).losses.sum().backward()
    theta2 = theta.clone().requires_grad_()
    rows = []
    for b in range(3):
        row = []
        for t in range(4):
            s = int(STATES[b, t])
            if fuse[b, t]:
                s_prev = int(STATES[b, t - 1])
                z = (1 - lam) * theta2[s] + lam * theta2[int(NEXT[s_prev, greedy[s_prev]])]
            else:
                z = theta2[s]
            row.append(torch.log_softmax(z, -1)[ACTIONS[b, t]] if MASK[b, t] else torch.zeros((), dtype=theta2.dtype))
        rows.append(torch.stack(row))
    ift_loss(torch.stack(rows), MASK).losses.sum().backward()
    assert theta2.grad.abs().max() > 1e-3
    torch.testing.assert_close(pol.logits.grad, theta2.grad, rtol=1e-12, atol=1e-14)


class _PositionwiseLM(nn.Module):
    """A stand-in causal LM: token embedding then a position-wise linear head (no attention is needed to test
    the shift bookkeeping)."""

    def __init__(self, vocab=6, dim=4):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(dim, vocab, generator=g, dtype=torch.float64))

    def embed(self, ids):
        return self.emb[ids]

    def forward_embeds(self, embeds, attention_mask=None):
        assert attention_mask is not None  # forwarded kwargs reach both passes
        return embeds @ self.head


def test_two_pass_causal_default_shifts_the_greedy_prediction():
    lm = _PositionwiseLM()
    ids = torch.tensor([[0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])
    targets = torch.cat([ids[:, 1:], torch.zeros(2, 1, dtype=torch.long)], 1)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)  # completion targets
    two = ift_two_pass(lm, ids, targets, mask, lam=0.5, attention_mask=torch.ones_like(ids))
    greedy = (lm.emb[ids] @ lm.head).argmax(-1)
    expect_pred = causal_predicted_inputs(greedy, ids)
    assert torch.equal(expect_pred[:, 1:], greedy[:, :-1])
    fuse = shift_mask_to_inputs(mask)
    assert fuse.tolist() == [[False, False, True, True, True], [False, False, False, True, True]]
    assert torch.equal(two.predicted_inputs, torch.where(fuse, expect_pred, ids))


class _Hooked:
    """An EmbeddingPolicy with the optional hooks, computed from the wrapped policy's logits; counts every call."""

    def __init__(self, policy):
        self.policy = policy
        self.calls = {"forward_embeds": 0, "greedy_from_embeds": 0, "token_logps_from_embeds": 0}

    def embed(self, inputs):
        return self.policy.embed(inputs)

    def forward_embeds(self, embeds, **kw):
        self.calls["forward_embeds"] += 1
        return self.policy.forward_embeds(embeds, **kw)

    def greedy_from_embeds(self, build_embeds, **kw):
        self.calls["greedy_from_embeds"] += 1
        assert not torch.is_grad_enabled()  # pass 1 runs without gradient
        return self.policy.forward_embeds(build_embeds(self.embed), **kw).argmax(-1)

    def token_logps_from_embeds(self, build_embeds, targets, mask, **kw):
        self.calls["token_logps_from_embeds"] += 1
        logits = self.policy.forward_embeds(build_embeds(self.embed), **kw)
        lp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
        return torch.where(mask, lp, torch.zeros_like(lp))


@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_two_pass_calls_the_optional_hooks_and_gives_the_plain_result(lam):
    from mdpalign.policies import EmbeddingPolicy, EmbeddingPolicyHooks

    classes = torch.tensor([[0], [1], [0]]).expand(3, 4)
    plain = MLPPolicy(5, 3, hidden=7, n_classes=2, seed=3)
    hooked = _Hooked(plain)
    assert isinstance(hooked, EmbeddingPolicy) and isinstance(hooked, EmbeddingPolicyHooks)
    assert not isinstance(plain, EmbeddingPolicyHooks)  # the built-in policies keep the forward_embeds path
    kw = dict(lam=lam, predicted_inputs=successor_from_table(NEXT), classes=classes)
    a = ift_two_pass(plain, STATES, ACTIONS, MASK, **kw)
    b = ift_two_pass(hooked, STATES, ACTIONS, MASK, **kw)
    assert hooked.calls == {"forward_embeds": 0, "greedy_from_embeds": 1, "token_logps_from_embeds": 1}
    assert torch.equal(a.greedy, b.greedy) and torch.equal(a.predicted_inputs, b.predicted_inputs)
    torch.testing.assert_close(b.token_logps, a.token_logps, rtol=0, atol=1e-14)
    grads = []
    for two in (a, b):
        plain.zero_grad(set_to_none=True)
        ift_loss(two.token_logps, MASK, decay=0.9).losses.sum().backward()
        grads.append([p.grad.clone() for p in plain.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, rtol=0, atol=1e-13)


def test_two_pass_checks_the_hooks_output_shapes():
    hooked = _Hooked(TabularPolicy(5, 3, init_scale=1.0, seed=0))
    hooked.greedy_from_embeds = lambda e, **kw: torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ShapeError, match="greedy ids of shape"):
        ift_two_pass(hooked, STATES, ACTIONS, MASK, lam=0.1, predicted_inputs=successor_from_table(NEXT))
    hooked = _Hooked(TabularPolicy(5, 3, init_scale=1.0, seed=0))
    hooked.token_logps_from_embeds = lambda e, y, m, **kw: torch.zeros(3)
    with pytest.raises(ShapeError, match="token_logps_from_embeds returned shape"):
        ift_two_pass(hooked, STATES, ACTIONS, MASK, lam=0.1, predicted_inputs=successor_from_table(NEXT))


def test_bad_arguments():
    lp = -torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="decay"):
        ift_loss(lp, MASK, decay=1.5)
    with pytest.raises(ValueError, match="reference, paper"):
        ift_loss(lp, MASK, form="eq21")
    with pytest.raises(ValueError, match="share one"):
        ift_two_pass(TabularPolicy(5, 3), STATES, ACTIONS[:, :3], MASK, lam=0.1)


@pytest.mark.parametrize("decay", [0.0, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("T", [1, 127, 128, 129, 700])
def test_propagation_weights_across_blocks_match_the_backward_recursion(decay, T):
    """The blocked evaluation (128 positions per block) equals v_t = m_t l_t + decay·v_{t+1} run position by
    position, at lengths on, just off and far beyond block boundaries, with masked gaps inside the sequence."""
    g = torch.Generator().manual_seed(T)
    l = torch.rand(3, T, generator=g, dtype=torch.float64)
    mask = torch.rand(3, T, generator=g) > 0.3
    mask[:, 0] = True
    v = propagation_weights(l, mask, decay=decay)
    expect = torch.zeros_like(l)
    running = torch.zeros(3, dtype=torch.float64)
    for t in range(T - 1, -1, -1):
        running = torch.where(mask[:, t], l[:, t], 0.0) + decay * running
        expect[:, t] = torch.where(mask[:, t], running, 0.0)
    torch.testing.assert_close(v, expect, rtol=1e-12, atol=0.0)
    # and gradients flow through the blocks like through the recursion (d Σv / d l_k = Σ_{t≤k, m_t} decay^{k−t})
    lg = l.clone().requires_grad_()
    propagation_weights(lg, mask, decay=decay).sum().backward()
    k = T - 1
    expected_last = sum(decay ** (k - t) for t in range(T) if mask[0, t]) if mask[0, k] else 0.0
    assert lg.grad[0, k].item() == pytest.approx(expected_last, rel=1e-12, abs=1e-300)
