"""Every loss depends on a tabular policy only through its probabilities: a per-state logit shift changes nothing."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.objectives import (
    crlft_loss,
    dpo_loss,
    ift_loss,
    ift_two_pass,
    orpo_loss,
    sequence_logps,
    sft_loss,
    successor_from_table,
)
from mdpalign.policies import TabularPolicy

S, A = 4, 3
STATES = torch.tensor([[0, 1, 2], [3, 2, 1]])
ACTIONS = torch.tensor([[1, 0, 2], [2, 2, 0]])
REJ = torch.tensor([[0, 0, 1], [1, 1, 1]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
NEXT = torch.tensor([[1, 2, 3], [2, 3, 0], [3, 0, 1], [0, 1, 2]])


def _all_losses(pol):
    ref = TabularPolicy(S, A, init_scale=1.0, seed=99)
    c, r = pol.token_logps(STATES, ACTIONS), pol.token_logps(STATES, REJ)
    rc, rr = ref.token_logps(STATES, ACTIONS).detach(), ref.token_logps(STATES, REJ).detach()
    seq = lambda x: sequence_logps(x, MASK)  # noqa: E731
    out = [sft_loss(c, MASK), sft_loss(c, MASK, normalize=True), orpo_loss(c, MASK, r, MASK, lam=0.5).losses,
           crlft_loss(c, MASK, torch.tensor([1.0, 0.1], dtype=c.dtype)).losses, ift_loss(c, MASK).losses]
    for lt in ("sigmoid", "ipo", "hinge", "robust"):
        out.append(dpo_loss(seq(c), seq(r), seq(rc), seq(rr), beta=0.5, loss_type=lt,
                            label_smoothing=0.1 if lt == "robust" else 0.0).losses)
    # IFT's fused input mixes two states' logits; shifting both by their own constants shifts the mix by a
    # constant too, and argmax is shift-invariant, so the two-pass loss is invariant as well.
    two = ift_two_pass(pol, STATES, ACTIONS, MASK, lam=0.3, predicted_inputs=successor_from_table(NEXT))
    out.append(ift_loss(two.token_logps, MASK, decay=0.9).losses)
    return torch.stack(out)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), shift=st.lists(st.floats(-50, 50), min_size=S, max_size=S))
def test_every_loss_is_invariant_to_a_per_state_logit_shift(seed, shift):
    pol = TabularPolicy(S, A, init_scale=1.0, seed=seed)
    before = _all_losses(pol).detach()
    with torch.no_grad():
        pol.logits += torch.tensor(shift, dtype=torch.float64)[:, None]
    after = _all_losses(pol).detach()
    # float64 rounding only: log-softmax of logits shifted by |c| <= 50 is off by ~50 eps ~ 1e-14 per token, and
    # the losses sum or square a few of them (largest difference seen over 300 examples: 8e-14)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
