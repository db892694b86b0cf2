import pytest
import torch

from mdpalign.objectives import ShapeError, batch_token_mean, sft_loss, sft_pieces
from mdpalign.policies import TabularPolicy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sft_sum_and_normalised_values(dtype):
    lp = torch.tensor([[-1.0, -3.0, -7.0], [-2.0, -4.0, -8.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert sft_loss(lp, mask).dtype == dtype
    assert sft_loss(lp, mask).tolist() == [4.0, 14.0]
    assert sft_loss(lp, mask, normalize=True).tolist() == pytest.approx([2.0, 14.0 / 3.0])
    pieces = sft_pieces(lp, mask)
    assert pieces.token_count.tolist() == [2.0, 3.0]
    # TRL's SFT reduction: one mean over all counted tokens of the batch.
    assert batch_token_mean(*pieces).item() == pytest.approx(18.0 / 5.0)


def test_sft_gradient_wrt_tabular_logits_is_pi_minus_onehot():
    pol = TabularPolicy(2, 4, init_scale=0.7, seed=3)
    states = torch.tensor([[1]])
    actions = torch.tensor([[2]])
    sft_loss(pol.token_logps(states, actions), torch.ones(1, 1, dtype=torch.bool)).sum().backward()
    expect = torch.zeros(2, 4, dtype=torch.float64)
    expect[1] = pol.probs()[1].detach()
    expect[1, 2] -= 1.0
    torch.testing.assert_close(pol.logits.grad, expect, rtol=0, atol=1e-15)


def test_sft_gradcheck():
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    lp = -torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.1
    lp.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, mask, normalize=True), (lp,))


def test_sft_rejects_empty_row():
    with pytest.raises(ShapeError, match="count no token"):
        sft_loss(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))
