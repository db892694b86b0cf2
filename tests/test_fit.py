import math

import pytest
import torch

from mdpalign.fit import FitError, NonFiniteLossError, NotConvergedError, fit, record_iterations, weighted_sum
from mdpalign.objectives import dpo_loss, sft_loss
from mdpalign.policies import MLPPolicy, TabularPolicy

D = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.125, 0.125]], dtype=torch.float64)
STATES = torch.tensor([[x] for x in range(2) for _ in range(4)])
ACTIONS = torch.tensor([[a] for _ in range(2) for a in range(4)])
MASS = (0.5 * D).reshape(-1)  # population weights: mu(x) = 1/2
MASK = torch.ones(8, 1, dtype=torch.bool)


def _sft(pol):
    return lambda: weighted_sum(sft_loss(pol.token_logps(STATES, ACTIONS), MASK), MASS)


@pytest.mark.parametrize("method, lr, max_iter", [("lbfgs", None, 200), ("adam", 0.05, 5000)])
def test_sft_on_a_bandit_converges_to_the_empirical_distribution(method, lr, max_iter):
    pol = TabularPolicy(2, 4)
    res = fit(pol, _sft(pol), method=method, lr=lr, max_iter=max_iter, tol=1e-10, require_convergence=True)
    assert res.converged and res.grad_norm <= 1e-10
    assert (pol.probs() - D).abs().max().item() < 1e-8
    # the optimum value is the entropy of the data
    assert res.loss == pytest.approx(-(MASS * D.reshape(-1).log()).sum().item(), rel=1e-12)


def test_fit_is_deterministic():
    runs = []
    for _ in range(2):
        pol = TabularPolicy(2, 4, init_scale=0.5, seed=3)
        res = fit(pol, _sft(pol), record_every=1)
        runs.append((pol.logits.detach().clone(), res.losses))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_history_records_every_k_steps_and_the_end():
    pol = TabularPolicy(2, 4)
    res = fit(pol, _sft(pol), method="adam", lr=0.05, max_iter=25, tol=0.0, record_every=10)
    assert [h.iteration for h in res.history] == [0, 10, 20, 25]
    assert not res.converged and "max_iter" in res.message


def test_deterministic_preferences_have_no_minimiser_loss_strictly_decreases_and_fit_refuses_to_call_it_converged():
    """DPO with one winner-loser pair: −log σ(β·gap) has infimum 0, never attained. Adam moves the gap by at most
    ~lr per step, so after 300 steps the gradient norm β·σ(−β·gap)·√2 is still > 1e-3 >> tol: a true failure to
    converge."""
    pol = TabularPolicy(1, 2)
    ref = torch.zeros(1, dtype=torch.float64)
    s = torch.zeros(1, dtype=torch.long)

    def loss():
        lp = pol.log_probs(s)
        return dpo_loss(lp[:, 0], lp[:, 1], ref, ref, beta=1.0).losses.sum()

    with pytest.raises(NotConvergedError, match=r"final gradient norm [0-9.e+-]+ > tol") as info:
        fit(pol, loss, method="adam", lr=0.01, max_iter=300, tol=1e-9, record_every=1, require_convergence=True)
    res = info.value.result
    losses = res.losses
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert res.grad_norm > 1e-3
    gap = (pol.logits[0, 0] - pol.logits[0, 1]).item()
    assert gap > 2.0
    # gradient = −σ(−β·gap)·β·(e_w − e_l): the reported norm is that closed form at the final parameters
    assert res.grad_norm == pytest.approx(math.sqrt(2.0) / (1.0 + math.exp(gap)), rel=1e-10)


def test_mlp_distillation_converges_with_lbfgs():
    pol = MLPPolicy(2, 4, hidden=8, seed=0)
    res = fit(pol, _sft(pol), max_iter=2000, tol=1e-8, require_convergence=True)
    assert (pol.probs() - D).abs().max().item() < 1e-6
    assert res.iterations > 0


def test_fit_errors():
    pol32 = TabularPolicy(2, 4, dtype=torch.float32)
    with pytest.raises(FitError, match="float32"):
        fit(pol32, _sft(pol32))
    res32 = fit(pol32, _sft(pol32), dtype=None, max_iter=3)  # allowed when asked: it really trains, in float32
    assert pol32.logits.dtype == torch.float32
    assert res32.loss < math.log(4.0) - 1e-3  # below the uniform start's loss, the entropy log 4 of the guess
    pol = TabularPolicy(2, 4)
    with pytest.raises(FitError, match="scalar"):
        fit(pol, lambda: sft_loss(pol.token_logps(STATES, ACTIONS), MASK))
    with pytest.raises(FitError, match="unknown method"):
        fit(pol, _sft(pol), method="sgd")
    with pytest.raises(FitError, match="requires_grad"):
        fit([torch.zeros(2, dtype=torch.float64)], lambda: torch.zeros((), dtype=torch.float64))
    with pytest.raises(NonFiniteLossError, match="not finite"):
        fit(pol, lambda: pol.logits.sum() * math.inf)


def _hand_rolled_adam(pol, loss_fn, lr, steps, every):
    """The loop the benchmarks used to write by hand: zero_grad, backward, step; record at 0, every k, the end."""
    opt = torch.optim.Adam(pol.parameters(), lr=lr)
    seen = [(0, float(loss_fn().detach()), pol.logits.detach().clone())]
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        if step % every == 0 or step == steps:
            seen.append((step, float(loss_fn().detach()), pol.logits.detach().clone()))
    return seen


def test_fixed_steps_with_a_callback_is_the_hand_rolled_adam_loop_bit_for_bit():
    """steps=N takes exactly N steps (tol=1.0 would have stopped a solve at once) and on_record sees every
    recorded iterate with its parameters: the same numbers, to the bit, as the benchmarks' former loop."""
    ref = TabularPolicy(2, 4, init_scale=0.5, seed=1)
    expected = _hand_rolled_adam(ref, _sft(ref), lr=0.05, steps=25, every=10)
    pol = TabularPolicy(2, 4, init_scale=0.5, seed=1)
    seen = []
    res = fit(pol, _sft(pol), method="adam", lr=0.05, steps=25, tol=1.0, record_every=10,
              on_record=lambda h: seen.append((h.iteration, h.loss, pol.logits.detach().clone())))
    assert res.iterations == 25 and "25 steps" in res.message
    assert res.converged == (res.grad_norm <= 1.0)
    assert [s[0] for s in seen] == [0, 10, 20, 25] == [h.iteration for h in res.history]
    for (i, loss, theta), (j, loss_ref, theta_ref) in zip(seen, expected):
        assert i == j and loss == loss_ref and torch.equal(theta, theta_ref)


def test_fixed_steps_argument_errors():
    pol = TabularPolicy(2, 4)
    with pytest.raises(FitError, match="max_iter"):
        fit(pol, _sft(pol), method="adam", steps=5, max_iter=5)
    with pytest.raises(FitError, match="loss_tol"):
        fit(pol, _sft(pol), method="adam", steps=5, loss_tol=1e-3)
    with pytest.raises(FitError, match="steps must be"):
        fit(pol, _sft(pol), method="adam", steps=-1)
    with pytest.raises(FitError, match="record_every"):
        fit(pol, _sft(pol), method="adam", steps=5, on_record=lambda h: None)
    assert fit(pol, _sft(pol), method="adam", steps=0).iterations == 0


@pytest.mark.parametrize("steps, every", [(25, 10), (30, 10), (0, 3), (7, 7)])
def test_record_iterations_are_where_fit_records(steps, every):
    pol = TabularPolicy(2, 4)
    res = fit(pol, _sft(pol), method="adam", steps=steps, record_every=every)
    assert record_iterations(steps, every) == [h.iteration for h in res.history]
