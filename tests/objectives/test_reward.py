"""Bradley–Terry reward loss and TRL's centring penalty: hand values, gradient, TRL parity, errors."""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mdpalign.objectives import ShapeError, bradley_terry_loss, center_rewards_penalty

f64 = torch.float64


def test_hand_values_margins_and_strict_accuracy():
    rc = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=f64)
    rr = torch.tensor([0.0, 0.0, 3.0, -1.5], dtype=f64)
    out = bradley_terry_loss(rc, rr)
    # −log σ(d) = log(1 + e^{−d}) with d = 1, 0, −1, 0.5
    assert out.losses.tolist() == pytest.approx([math.log1p(math.exp(-d)) for d in (1, 0, -1, 0.5)], rel=1e-14)
    assert out.margins.tolist() == [1.0, 0.0, -1.0, 0.5]
    assert out.accuracies.tolist() == [1.0, 0.0, 0.0, 1.0]  # the tie (0, 0) counts as wrong


def test_margin_shifts_the_logit_and_not_the_logged_margin():
    rc = torch.tensor([1.0, 0.5], dtype=f64, requires_grad=True)
    rr = torch.tensor([0.0, 0.0], dtype=f64)
    m = torch.tensor([0.5, 2.0], dtype=f64)
    out = bradley_terry_loss(rc, rr, m)
    assert out.losses.tolist() == pytest.approx([math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.5))], rel=1e-14)
    assert out.margins.tolist() == [1.0, 0.5]
    (g,) = torch.autograd.grad(out.losses.sum(), rc)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  ∂L/∂r_c = −σ(m − Δ)
    assert g.tolist() == pytest.approx([-sig(0.5 - 1.0), -sig(2.0 - 0.5)], rel=1e-14)
    scalar = bradley_terry_loss(rc, rr, 0.5)
    assert scalar.losses[0].item() == pytest.approx(out.losses[0].item(), rel=1e-15)


def test_center_penalty_hand_values():
    out = center_rewards_penalty(torch.tensor([1.0, -2.0], dtype=f64), torch.tensor([0.5, 1.0], dtype=f64), 0.01)
    assert out.tolist() == pytest.approx([0.01 * 1.5 ** 2, 0.01 * 1.0], rel=1e-14)


@pytest.mark.parametrize("margin", [None, "tensor"])
@pytest.mark.parametrize("coefficient", [None, 0.01])
def test_trl_reward_trainer_loss_parity(margin, coefficient):
    """TRL 1.16 ``RewardTrainer.compute_loss`` (stub ``self`` in eval mode; the model returns the given rewards)
    equals the batch mean of ours plus the batch mean of the penalty."""
    from trl.trainer.reward_trainer import RewardTrainer

    g = torch.Generator().manual_seed(0)
    rc = torch.randn(5, generator=g, dtype=f64)
    rr = torch.randn(5, generator=g, dtype=f64)
    m = None if margin is None else torch.rand(5, generator=g, dtype=f64)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=False), args=SimpleNamespace(center_rewards_coefficient=coefficient),
        accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    model = lambda **kw: SimpleNamespace(logits=torch.cat([rc, rr]).unsqueeze(-1))  # noqa: E731
    inputs = {"input_ids": torch.zeros(10, 2, dtype=torch.long), "attention_mask": torch.ones(10, 2)}
    if m is not None:
        inputs["margin"] = m
    expect = RewardTrainer.compute_loss(stub, model, inputs)
    ours = bradley_terry_loss(rc, rr, m).losses.mean()
    if coefficient is not None:
        ours = ours + center_rewards_penalty(rc, rr, coefficient).mean()
    assert ours.item() == pytest.approx(expect.item(), rel=1e-14)
    assert stub._metrics["eval"]["accuracy"][0] == pytest.approx(bradley_terry_loss(rc, rr).accuracies.mean().item())


def test_bad_inputs_each_raise_one_clear_error():
    x = torch.zeros(3, dtype=f64)
    with pytest.raises(ShapeError, match="must have the shape of chosen_rewards"):
        bradley_terry_loss(x, torch.zeros(2, dtype=f64))
    with pytest.raises(ShapeError, match="margin must be a number or have the shape"):
        bradley_terry_loss(x, x, torch.zeros(2, dtype=f64))
    with pytest.raises(ValueError, match="margin must be finite"):
        bradley_terry_loss(x, x, float("inf"))
    with pytest.raises(ShapeError, match="1-D"):
        bradley_terry_loss(torch.zeros(3, 1, dtype=f64), torch.zeros(3, 1, dtype=f64))
    with pytest.raises(ValueError, match="coefficient must be a finite number >= 0"):
        center_rewards_penalty(x, x, -1.0)
