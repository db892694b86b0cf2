import math

import pytest
import torch

from mdpalign.objectives import (
    ShapeError,
    batch_token_mean,
    check_beta,
    check_token_inputs,
    log1mexp,
    sequence_logps,
    token_logps_from_logits,
)

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_logps_sum_and_mean_over_counted_tokens_only(dtype):
    lp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), -0.25]], dtype=dtype)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    total = sequence_logps(lp, mask)
    assert total.dtype == dtype
    assert total.tolist() == [-3.0, -0.75]
    assert sequence_logps(lp, mask, average=True).tolist() == [-1.5, -0.375]


def test_numeric_mask_is_accepted_and_non_binary_mask_rejected():
    lp = torch.tensor([[-1.0, -2.0]])
    assert sequence_logps(lp, torch.tensor([[1.0, 0.0]])).item() == -1.0
    with pytest.raises(ShapeError, match="0/1"):
        sequence_logps(lp, torch.tensor([[2, 0]]))


@pytest.mark.parametrize(
    "lp, mask, match",
    [
        (torch.zeros(3), torch.ones(3, dtype=torch.bool), "2-D"),
        (torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool), "shape"),
        (torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), "floating"),
        (torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool), r"row\(s\) \[1\]"),
        (torch.zeros(0, 3), torch.ones(0, 3, dtype=torch.bool), "empty"),
    ],
)
def test_check_token_inputs_errors_name_the_problem(lp, mask, match):
    with pytest.raises(ShapeError, match=match):
        check_token_inputs(lp, mask)
    assert issubclass(ShapeError, ValueError)


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_logps_from_logits_matches_hand_softmax_and_ignores_minus_100(dtype):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    labels = torch.tensor([[1, 4, -100], [0, -100, 2]])
    out = token_logps_from_logits(logits.to(dtype), labels)
    for b in range(2):
        for t in range(3):
            y = int(labels[b, t])
            if y == -100:
                assert out[b, t].item() == 0.0
            else:
                z = logits[b, t].tolist()
                expect = z[y] - math.log(sum(math.exp(v) for v in z))
                assert out[b, t].item() == pytest.approx(expect, abs=1e-6 if dtype == torch.float32 else 1e-12)


def test_token_logps_from_logits_is_stable_for_huge_logits_and_checks_labels():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]], dtype=torch.float32)
    out = token_logps_from_logits(logits, torch.tensor([[1]]))
    assert out.item() == pytest.approx(-1e4)
    with pytest.raises(ShapeError, match="out of range"):
        token_logps_from_logits(logits, torch.tensor([[3]]))
    with pytest.raises(ShapeError, match="labels must have shape"):
        token_logps_from_logits(logits, torch.tensor([1]))


def test_log1mexp_matches_naive_formula_where_stable_and_stays_accurate_near_zero():
    xs = torch.tensor([-30.0, -5.0, -1.0, -0.7, -0.69, -0.3, -0.01], dtype=torch.float64)
    for x, v in zip(xs.tolist(), log1mexp(xs).tolist()):
        assert v == pytest.approx(math.log(1.0 - math.exp(x)), rel=1e-12)
    # 1 - exp(x) ~ -x for tiny x: the naive formula would round to log(0) = -inf.
    tiny = torch.tensor([-1e-20, -1e-300], dtype=torch.float64)
    assert log1mexp(tiny).tolist() == pytest.approx([math.log(1e-20), math.log(1e-300)], rel=1e-12)
    assert log1mexp(torch.tensor([-800.0], dtype=torch.float64)).item() == 0.0
    assert log1mexp(torch.tensor([0.0])).item() == float("-inf")


def test_log1mexp_gradient_is_finite_on_both_branches():
    x = torch.tensor([-1e-8, -0.5, -0.9, -50.0], dtype=torch.float64, requires_grad=True)
    log1mexp(x).sum().backward()
    # d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x) (the second form has no cancellation near 0)
    expect = [-1.0 / math.expm1(-v) for v in x.tolist()]
    assert x.grad.tolist() == pytest.approx(expect, rel=1e-9)


def test_batch_token_mean_is_not_a_mean_of_means():
    sums = torch.tensor([2.0, 9.0], dtype=torch.float64)
    counts = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert batch_token_mean(sums, counts).item() == pytest.approx(11.0 / 4.0)
    assert batch_token_mean(sums, counts).item() != pytest.approx((2.0 + 3.0) / 2)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_check_beta_rejects_non_positive_and_non_finite(beta):
    with pytest.raises(ValueError, match="beta"):
        check_beta(beta)
