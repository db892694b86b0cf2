"""Objectives refuse inputs that would silently mislead: label smoothing >= 1/2, nan/inf or positive log-probs at
counted tokens, an unnormalised policy for the KL-RL objective, class weights that overflow (issue 9, item 5)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mdpalign.errors import MdpalignError
from mdpalign.objectives import (
    InvalidLogProbError,
    ObjectiveArgumentError,
    crlft_class_weights,
    crlft_loss,
    dpo_loss,
    ift_loss,
    kl_rl_objective,
    logp_rounding_tolerance,
    orpo_log_odds,
    orpo_loss,
    sequence_logps,
    sft_loss,
    sft_pieces,
    token_logps_from_logits,
)

NAN, INF = float("nan"), float("inf")
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)


def _lp(dtype=torch.float64):
    return torch.tensor([[-1.0, -0.5, -2.0], [-0.25, -3.0, -1.5]], dtype=dtype)


# ----------------------------------------------------------------------------- DPO label smoothing

@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
@pytest.mark.parametrize("eps", [0.5, 0.6, 1.0, -0.1, NAN])
def test_label_smoothing_at_or_above_one_half_is_refused(loss_type, eps):
    x = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    with pytest.raises(ObjectiveArgumentError, match=r"label_smoothing must lie in \[0, 0\.5\)"):
        dpo_loss(x, x - 1, x, x, loss_type=loss_type, label_smoothing=eps)


def test_why_one_half_is_the_limit_for_sigmoid():
    # cDPO's loss -(1-ε)logσ(z) - ε logσ(-z) has derivative -(1-ε)σ(-z) + εσ(z) in z = βh; at z = 0 it is ε - 1/2.
    # Below 1/2 raising h lowers the loss near h = 0 (prefers the chosen response); at 1/2 the loss is even in h,
    # minimal at h = 0 (ignores which response was preferred); above 1/2 lowering h lowers it (prefers the rejected).
    z = torch.arange(-30, 31, dtype=torch.float64) / 10  # holds exactly 0
    def cdpo(eps):
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    half = cdpo(0.5)
    torch.testing.assert_close(half, half.flip(0), rtol=0, atol=1e-15)
    assert z[half.argmin()].item() == 0.0
    assert z[cdpo(0.6).argmin()].item() < 0 < z[cdpo(0.4).argmin()].item()
    # just below 1/2 is still accepted and differs from the ε = 0 loss
    x = torch.tensor([-1.0], dtype=torch.float64)
    out = dpo_loss(x, x - 1, x, x, beta=1.0, label_smoothing=0.499).losses
    # h = 1, β = 1: −0.501·logσ(1) − 0.499·logσ(−1), logσ(x) = −log(1 + e^{−x})
    assert out.item() == pytest.approx(
        0.501 * math.log1p(math.exp(-1.0)) + 0.499 * math.log1p(math.exp(1.0)), rel=1e-14
    )


# ----------------------------------------------------------------------------- non-finite / positive log-probs

def _token_objectives(check_logps=True):
    """name -> f(token_logps) for every objective that takes per-token log-probs (both arguments of the pair
    objectives get the same tensor, so the error names the first argument)."""
    w = torch.ones(2, dtype=torch.float64)
    kw = {"check_logps": check_logps}
    return {
        "sft_loss": lambda lp: sft_loss(lp, MASK, **kw),
        "sft_pieces": lambda lp: sft_pieces(lp, MASK, **kw).nll_sum,
        "sequence_logps": lambda lp: sequence_logps(lp, MASK, **kw),
        "orpo_loss": lambda lp: orpo_loss(lp, MASK, _lp(lp.dtype), MASK, **kw).losses,
        "orpo_loss_rejected": lambda lp: orpo_loss(_lp(lp.dtype), MASK, lp, MASK, **kw).losses,
        "orpo_loss_nll": lambda lp: orpo_loss(_lp(lp.dtype), MASK, _lp(lp.dtype), MASK, nll_token_logps=lp,
                                              nll_mask=MASK, **kw).losses,
        "crlft_loss": lambda lp: crlft_loss(lp, MASK, w.to(lp.dtype), **kw).losses,
        "ift_loss": lambda lp: ift_loss(lp, MASK, decay=0.9, **kw).losses,
        "ift_loss_decay0": lambda lp: ift_loss(lp, MASK, decay=0.0, **kw).losses,
    }


TENSOR_NAME = {"orpo_loss": "chosen_token_logps", "orpo_loss_rejected": "rejected_token_logps",
               "orpo_loss_nll": "nll_token_logps"}


@pytest.mark.parametrize("objective", list(_token_objectives()))
@pytest.mark.parametrize(
    "bad, what", [(NAN, "nan"), (INF, r"\+inf"), (-INF, "-inf"), (0.5, "above 0 by more than the rounding tolerance")]
)
def test_bad_log_prob_at_a_counted_token_is_refused_naming_tensor_and_index(objective, bad, what):
    lp = _lp()
    lp[1, 2] = bad  # counted
    lp[1, 1] = bad  # counted, earlier: the first bad index
    name = TENSOR_NAME.get(objective, "token_logps")
    with pytest.raises(InvalidLogProbError, match=rf"{name} has {what} at counted position \(1, 1\)") as err:
        _token_objectives()[objective](lp)
    assert "2 counted position(s)" in str(err.value) and "check_logps=False" in str(err.value)
    assert isinstance(err.value, MdpalignError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("objective", list(_token_objectives()))
def test_bad_values_at_non_counted_tokens_are_ignored_and_the_opt_out_skips_the_check(objective):
    f = _token_objectives()[objective]
    clean = f(_lp())
    lp = _lp()
    lp[0, 2] = NAN  # not counted: ignored, by the documented convention
    assert torch.equal(f(lp), clean)
    lp[0, 2] = -INF
    assert torch.equal(f(lp), clean)
    # check_logps=False: the same numbers on valid input, and no error on invalid input, where the nan reaches the loss
    # (so a check of the reduced loss still sees it: ift_loss used to turn a nan row into a loss of 0)
    unchecked = _token_objectives(check_logps=False)[objective]
    assert torch.equal(unchecked(_lp()), clean)
    lp[1, 0] = NAN
    assert bool(torch.isnan(unchecked(lp)).any())


def test_sft_with_a_positive_log_prob_no_longer_returns_a_negative_nll():
    lp = torch.tensor([[0.5, -0.1]])
    assert sft_loss(lp, torch.ones(1, 2, dtype=torch.bool), check_logps=False).item() < 0  # what it did before
    with pytest.raises(InvalidLogProbError, match=r"above 0 .*tolerance"):
        sft_loss(lp, torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_rounding_tolerance_is_eight_eps_of_the_dtype_and_is_applied_exactly(dtype):
    tol = logp_rounding_tolerance(dtype)
    assert tol == 8 * torch.finfo(dtype).eps
    ones = torch.ones(1, 2, dtype=torch.bool)
    at = torch.tensor([[tol, -1.0]], dtype=dtype)
    assert at[0, 0].item() == tol  # 8·eps is a power of two, exactly representable
    assert sft_loss(at, ones).item() == pytest.approx(1.0 - tol)  # at the tolerance: accepted (rounding)
    above = torch.nextafter(at, torch.full_like(at, 1.0))
    with pytest.raises(InvalidLogProbError, match="above 0"):
        sft_loss(above, ones)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_softmax_output_is_never_refused(dtype):
    # torch's log_softmax subtracts the max: the argmax token's log-prob is exactly -log Σ exp(z - max) <= 0, so
    # any logits, however large, pass; large logits with a near-deterministic argmax are the case closest to 0.
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 30.0, 1e4):
        logits = (scale * torch.randn(8, 16, 50, generator=g, dtype=torch.float64)).to(dtype)
        labels = logits.argmax(-1)
        lp = token_logps_from_logits(logits, labels)
        assert bool((lp <= 0).all())
        sft_loss(lp, torch.ones(8, 16, dtype=torch.bool))  # no error


def test_dpo_refuses_non_finite_sequence_log_probs_naming_argument_and_index():
    x = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    bad = x.clone()
    bad[2] = NAN
    with pytest.raises(InvalidLogProbError, match=r"ref_rejected_logps has nan at index 2"):
        dpo_loss(x, x, x, bad)
    bad[1] = -INF
    with pytest.raises(InvalidLogProbError, match=r"policy_chosen_logps has -inf at index 1"):
        dpo_loss(bad, x, x, x, loss_type="ipo")
    # opt-out: the nan reaches the loss, as before
    assert math.isnan(dpo_loss(bad, x, x, x, check_logps=False).losses[2].item())
    # a positive *sequence* log-prob is not refused: DPO reads only log-ratios (see the docstring)
    assert torch.isfinite(dpo_loss(x + 5, x, x, x).losses).all()


@pytest.mark.parametrize("counts", [[1.0, NAN, 2.0], [1.0, -1.0, 2.0], [1.0, INF, 2.0]])
def test_ipo_token_counts_must_be_finite_and_non_negative(counts):
    x = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    with pytest.raises(ObjectiveArgumentError, match="chosen_token_counts .* finite numbers >= 0"):
        dpo_loss(x, x, x, x, loss_type="ipo", chosen_token_counts=torch.tensor(counts),
                 rejected_token_counts=torch.ones(3))


def test_orpo_log_odds_refuses_positive_average_log_probs():
    ok = torch.tensor([-0.5, -1.0], dtype=torch.float64)
    with pytest.raises(InvalidLogProbError, match=r"rejected_avg_logps has above 0 .* at index 0"):
        orpo_log_odds(ok, torch.tensor([0.3, -1.0], dtype=torch.float64))
    # exactly 0 (probability 1) is a log-probability and stays clamped to a finite value, as documented
    assert torch.isfinite(orpo_log_odds(torch.tensor([0.0, -1.0], dtype=torch.float64), ok)).all()


# ----------------------------------------------------------------------------- KL-RL normalisation

def test_kl_rl_refuses_an_unnormalised_policy_naming_the_context():
    log_ref = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64))
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    log_pi = log_ref.clone()
    log_pi[1] = torch.tensor([0.0, 0.0])  # logits, not log-probs: Σ pi = 2
    with pytest.raises(InvalidLogProbError, match=r"log_pi is not normalised in context 1: logsumexp = 0\.693"):
        kl_rl_objective(log_pi, log_ref, r, beta=1.0)
    with pytest.raises(InvalidLogProbError, match="context 0"):
        kl_rl_objective(torch.tensor([NAN, 0.0], dtype=torch.float64), log_ref[0], r[0], beta=1.0)
    with pytest.raises(InvalidLogProbError, match="context 0"):
        kl_rl_objective(torch.tensor([-INF, -INF], dtype=torch.float64), log_ref[0], r[0], beta=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("Y", [2, 50, 5000])
def test_kl_rl_normalisation_tolerance_passes_every_log_softmax_and_refuses_a_shift_beyond_it(dtype, Y):
    g = torch.Generator().manual_seed(Y)
    for scale in (1.0, 20.0, 300.0):
        log_pi = torch.log_softmax((scale * torch.randn(6, Y, generator=g, dtype=torch.float64)).to(dtype), -1)
        log_ref = torch.log_softmax(torch.randn(6, Y, generator=g, dtype=torch.float64), -1).to(dtype)
        r = torch.randn(6, Y, generator=g, dtype=torch.float64).to(dtype)
        kl_rl_objective(log_pi, log_ref, r, beta=0.5)  # no error
    # the tolerance eps·(2Y + 4 ln Y + 4) (docstring): a shift of twice that is refused
    eps = torch.finfo(dtype).eps
    shift = 2 * eps * (2 * Y + 4 * math.log(Y) + 4)
    with pytest.raises(InvalidLogProbError, match="not normalised"):
        kl_rl_objective(log_pi + shift, log_ref, r, beta=0.5)


def test_kl_rl_refuses_nan_rewards_and_nan_reference():
    log_pi = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    r = torch.tensor([1.0, NAN], dtype=torch.float64)
    with pytest.raises(InvalidLogProbError, match=r"rewards has nan at index \(0, 1\)"):
        kl_rl_objective(log_pi, log_pi, r, beta=1.0)
    with pytest.raises(InvalidLogProbError, match=r"log_ref has \+inf"):
        kl_rl_objective(log_pi, torch.tensor([0.0, INF], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 1.0)
    # log_ref = -inf where pi > 0 is an infinite KL: J = -inf is the right answer, not an error
    j = kl_rl_objective(
        log_pi, torch.tensor([0.0, -INF], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 1.0
    )
    assert j.item() == -INF


# ----------------------------------------------------------------------------- C-RLFT class weights

def test_class_weights_that_overflow_are_refused_with_the_fix():
    with pytest.raises(ObjectiveArgumentError, match=r"exp\(r/beta\) overflows .* normalize='max'"):
        crlft_class_weights([1.0, 0.1], beta=1e-12)
    # normalised, the same beta works and gives the limit: only the best class counts
    assert crlft_class_weights([1.0, 0.1], beta=1e-12, normalize="max").tolist() == [1.0, 0.0]
    assert crlft_class_weights([1.0, 0.1], beta=1e-12, normalize="sum").tolist() == [1.0, 0.0]


def test_class_weights_that_all_underflow_are_refused():
    with pytest.raises(ObjectiveArgumentError, match=r"underflow to 0 .* normalize='max'"):
        crlft_class_weights([-1.0, -2.0], beta=1e-3)
    assert crlft_class_weights([-1.0, -2.0], beta=1e-3, normalize="max").tolist() == [1.0, 0.0]
    # one class underflowing is the limit of exp(r/β), not an error
    assert crlft_class_weights([-1.0, -800.0], beta=1.0).tolist() == [math.exp(-1.0), 0.0]
