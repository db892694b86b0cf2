"""mdpalign.metrics: identities and sign/zero cases, each checked against an independent computation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign import metrics
from mdpalign.mdp import TabularMDP
from mdpalign.metrics import MetricError
from mdpalign.solve import policy_iteration, soft_value_iteration


# --------------------------------------------------------------------------- helpers
def random_mdp(seed: int, S: int = 5, A: int = 3, gamma: float | None = None, n_terminal: int = 1) -> TabularMDP:
    """Dense random MDP whose last ``n_terminal`` states are absorbing with reward 0."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(S, 0.5), size=(S, A))
    R = rng.normal(size=(S, A))
    terminal = np.zeros(S, dtype=bool)
    terminal[S - n_terminal:] = True
    for s in np.flatnonzero(terminal):
        P[s] = 0.0
        P[s, :, s] = 1.0
        R[s] = 0.0
    initial = np.zeros(S)
    initial[: S - n_terminal] = rng.dirichlet(np.ones(S - n_terminal))
    g = float(rng.uniform(0.5, 0.95)) if gamma is None else gamma
    return TabularMDP(P, R, g, initial=initial, terminal=terminal)


def random_policy(seed: int, S: int, A: int, floor: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(A), size=S) + floor
    return pi / pi.sum(axis=1, keepdims=True)


def occupancy_by_power_series(mdp: TabularMDP, pi: np.ndarray, n_terms: int = 4000) -> np.ndarray:
    """sum_t gamma^t P(s_t = s), truncated (independent of mdpalign.solve); non-terminal states only."""
    P = mdp.dense_P()
    P_pi = np.einsum("sa,sat->st", pi, P)
    d = np.zeros(mdp.n_states)
    x = mdp.initial.copy()
    disc = 1.0
    for _ in range(n_terms):
        d += disc * x
        x = x @ P_pi
        disc *= mdp.gamma
        if disc < 1e-18:
            break
    return np.where(mdp.terminal, 0.0, d)


def kl_rows(p, q):
    return np.array([sum(pa * np.log(pa / qa) for pa, qa in zip(pr, qr) if pa > 0) for pr, qr in zip(p, q)])


seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------- parameter MSE
def test_parameter_mse_is_the_mean_square_over_all_flattened_parameters():
    a = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5])]
    b = [np.array([[1.0, 0.0], [3.0, 1.0]]), np.array([-0.5])]
    # squared differences 0, 4, 0, 9, 1 over 5 numbers
    assert metrics.parameter_mse(a, b) == pytest.approx(14.0 / 5.0, abs=0)
    assert metrics.parameter_mse(a, a) == 0.0


def test_parameter_mse_matches_state_dicts_by_name_not_order():
    x = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    y = {"b": torch.tensor([0.0]), "w": torch.tensor([1.0, 2.0])}
    assert metrics.parameter_mse(x, y) == pytest.approx(9.0 / 3.0)


def test_parameter_mse_of_modules():
    net1 = torch.nn.Linear(3, 2, dtype=torch.float64)
    net2 = torch.nn.Linear(3, 2, dtype=torch.float64)
    expected = np.mean(np.concatenate([
        (net1.weight - net2.weight).detach().numpy().ravel() ** 2,
        (net1.bias - net2.bias).detach().numpy().ravel() ** 2,
    ]))
    assert metrics.parameter_mse(net1, net2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("a, b, match", [
    ([np.zeros(3)], [np.zeros(4)], "shape"),
    ([np.zeros(3)], [np.zeros(3), np.zeros(1)], "tensors"),
    ({"w": np.zeros(2)}, {"v": np.zeros(2)}, "names differ"),
    (object(), [np.zeros(1)], "expected a module"),
])
def test_parameter_mse_rejects_mismatched_parameters(a, b, match):
    with pytest.raises(MetricError, match=match):
        metrics.parameter_mse(a, b)


@settings(max_examples=20)
@given(seed=seeds)
def test_parameter_mse_is_not_invariant_to_a_per_state_logit_shift_but_kl_is(seed):
    """The gauge argument of THEORY.md: theta + c(s) is the same policy, at parameter distance mean(c^2)."""
    mdp = random_mdp(seed)
    rng = np.random.default_rng(seed + 1)
    logits = rng.normal(size=(mdp.n_states, mdp.n_actions))
    shift = rng.normal(size=(mdp.n_states, 1)) + 1.0
    shifted = logits + shift
    pi = torch.softmax(torch.as_tensor(logits), -1).numpy()
    pi_shifted = torch.softmax(torch.as_tensor(shifted), -1).numpy()
    assert metrics.visitation_kl(mdp, pi, pi_shifted) == pytest.approx(0.0, abs=1e-12)
    assert metrics.value_gap(mdp, pi, pi_shifted) == pytest.approx(0.0, abs=1e-10)
    mse = metrics.parameter_mse([shifted], [logits])
    assert mse == pytest.approx(float(np.mean(np.broadcast_to(shift, logits.shape) ** 2)), rel=1e-12)
    assert mse > 0.01


# --------------------------------------------------------------------------- visitation and KL
@settings(max_examples=20)
@given(seed=seeds)
def test_visitation_is_the_normalised_discounted_occupancy(seed):
    mdp = random_mdp(seed, S=6, A=2, n_terminal=2)
    pi = random_policy(seed, 6, 2)
    d = metrics.visitation(mdp, pi)
    ref = occupancy_by_power_series(mdp, pi)
    np.testing.assert_allclose(d, ref / ref.sum(), atol=1e-10)
    assert np.all(d[mdp.terminal] == 0.0)
    assert d.sum() == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=20)
@given(seed=seeds)
def test_visitation_kl_equals_the_weighted_sum_of_state_kls(seed):
    mdp = random_mdp(seed, S=6, A=3, n_terminal=2)
    p = random_policy(seed, 6, 3, floor=0.01)
    q = random_policy(seed + 7, 6, 3, floor=0.01)
    occ = occupancy_by_power_series(mdp, p)
    expected = float(np.sum(occ / occ.sum() * kl_rows(p, q)))
    assert metrics.visitation_kl(mdp, p, q) == pytest.approx(expected, rel=1e-9)
    tv = float(np.sum(occ / occ.sum() * 0.5 * np.abs(p - q).sum(axis=1)))
    assert metrics.visitation_tv(mdp, p, q) == pytest.approx(tv, rel=1e-9)
    assert 0.0 < metrics.visitation_tv(mdp, p, q) <= 1.0


def test_visitation_kl_is_zero_iff_the_policies_agree_where_pi_star_goes():
    # chain 0 -> 1 -> 2 (terminal) under action 0; action 1 stays put. State 3 is never reached.
    S, A = 4, 2
    P = np.zeros((S, A, S))
    P[0, 0, 1] = P[1, 0, 2] = 1.0
    P[0, 1, 0] = P[1, 1, 1] = 1.0
    P[2, :, 2] = 1.0
    P[3, :, 3] = 1.0
    mdp = TabularMDP(P, np.zeros((S, A)), 0.9, initial=np.array([1.0, 0, 0, 0]),
                     terminal=np.array([False, False, True, False]))
    pi_star = np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    # differs only on the unreached state 3 and the terminal state 2: zero
    other = pi_star.copy()
    other[3] = [0.9, 0.1]
    other[2] = [0.1, 0.9]
    assert metrics.visitation_kl(mdp, pi_star, other) == 0.0
    # differs on visited state 1: positive
    other[1] = [0.6, 0.4]
    assert metrics.visitation_kl(mdp, pi_star, other) > 1e-3
    # no mass where pi* has mass: infinite
    other[1] = [1.0, 0.0]
    assert metrics.visitation_kl(mdp, pi_star, other) == np.inf
    # pi* deterministic at 0 and pi there uniform: log 2 weighted by d(0)
    w = metrics.visitation(mdp, pi_star)
    uniform = np.full((S, A), 0.5)
    assert metrics.visitation_kl(mdp, pi_star, uniform) == pytest.approx(w[0] * np.log(2.0), rel=1e-12)


def test_visitation_kl_weights_options():
    mdp = random_mdp(3, S=5, A=2)
    p, q = random_policy(1, 5, 2, 0.1), random_policy(2, 5, 2, 0.1)
    kl = kl_rows(p, q)
    uniform = metrics.visitation_kl(mdp, p, q, weights="uniform")
    assert uniform == pytest.approx(kl[:4].mean(), rel=1e-12)  # state 4 is terminal
    d_q = metrics.visitation(mdp, q)
    assert metrics.visitation_kl(mdp, p, q, weights="pi") == pytest.approx(float(d_q @ kl), rel=1e-12)
    w = np.array([0.0, 2.0, 0.0, 0.0, 0.0])
    assert metrics.visitation_kl(mdp, p, q, weights=w) == pytest.approx(kl[1], rel=1e-12)
    with pytest.raises(MetricError, match="weights must be"):
        metrics.visitation_kl(mdp, p, q, weights="nonsense")
    with pytest.raises(MetricError, match="shape"):
        metrics.visitation_kl(mdp, p, q, weights=np.ones(3))
    with pytest.raises(MetricError, match="non-negative"):
        metrics.visitation_kl(mdp, p, q, weights=-np.ones(5))


@settings(max_examples=15)
@given(seed=seeds, horizon=st.integers(1, 3))
def test_trajectory_kl_equals_brute_force_over_all_trajectories(seed, horizon):
    """KL between the laws of (s_0, a_0, ..., s_H) from enumerating every path."""
    mdp = random_mdp(seed, S=3, A=2, n_terminal=1)
    p = random_policy(seed, 3, 2, floor=0.05)
    q = random_policy(seed + 1, 3, 2, floor=0.05)
    P = mdp.dense_P()
    total = 0.0
    for path in itertools.product(range(3), range(2), repeat=horizon):
        states, actions = path[0::2], path[1::2]
        for s_end in range(3):
            pp = mdp.initial[states[0]]
            pq = mdp.initial[states[0]]
            for t in range(horizon):
                s, a = states[t], actions[t]
                nxt = states[t + 1] if t + 1 < horizon else s_end
                if mdp.terminal[s]:  # the episode is over: the action is not a decision
                    pp *= 0.5 * P[s, a, nxt]
                    pq *= 0.5 * P[s, a, nxt]
                else:
                    pp *= p[s, a] * P[s, a, nxt]
                    pq *= q[s, a] * P[s, a, nxt]
            if pp > 0:
                total += pp * np.log(pp / pq)
    assert metrics.trajectory_kl(mdp, p, q, horizon=horizon) == pytest.approx(total, rel=1e-9, abs=1e-14)


def test_trajectory_kl_until_termination_matches_a_long_horizon_and_needs_termination():
    mdp = random_mdp(11, S=4, A=2, n_terminal=1)
    # make every state leave towards the terminal state with probability >= 0.3
    P = mdp.dense_P().copy()
    P[:3] *= 0.7
    P[:3, :, 3] += 0.3
    mdp = TabularMDP(P, mdp.R, mdp.gamma, mdp.initial, mdp.terminal)
    p, q = random_policy(1, 4, 2, 0.1), random_policy(2, 4, 2, 0.1)
    assert metrics.trajectory_kl(mdp, p, q) == pytest.approx(metrics.trajectory_kl(mdp, p, q, horizon=400), rel=1e-10)
    with pytest.raises(MetricError, match="horizon"):
        metrics.trajectory_kl(mdp, p, q, horizon=-1)
    # no terminal state reachable: the undiscounted sum is infinite
    stuck = TabularMDP(np.tile(np.eye(2)[:, None, :], (1, 2, 1)), np.zeros((2, 2)), 0.9)
    with pytest.raises(MetricError, match="termination"):
        metrics.trajectory_kl(stuck, np.full((2, 2), 0.5), np.array([[0.9, 0.1], [0.5, 0.5]]))


# --------------------------------------------------------------------------- values
@settings(max_examples=20)
@given(seed=seeds)
def test_value_gap_is_nonnegative_against_the_hard_optimum_and_zero_at_it(seed):
    mdp = random_mdp(seed)
    opt = policy_iteration(mdp)
    pi = random_policy(seed, mdp.n_states, mdp.n_actions)
    gap = metrics.value_gap(mdp, opt.values, pi)
    assert gap >= -1e-10
    assert metrics.value_gap(mdp, opt.policy, opt.policy) == 0.0
    assert metrics.value_gap(mdp, opt.values, opt.policy) == pytest.approx(0.0, abs=1e-9)
    # values given as V* or as the optimal policy: the same J(pi*)
    assert metrics.value_gap(mdp, opt.policy, pi) == pytest.approx(gap, abs=1e-9)
    # J(pi) from an independent computation: sum over occupancy of expected reward
    occ = occupancy_by_power_series(mdp, pi)
    j = float(np.sum(occ * (pi * mdp.R).sum(axis=1)))
    assert metrics.start_value(mdp, pi) == pytest.approx(j, rel=1e-9, abs=1e-12)


def test_success_probability_of_a_gamblers_walk():
    """Walk on 0..4 from 2, step right w.p. p, left w.p. 1-p; 0 and 4 absorb; goal = 4.

    Gambler's ruin: P(hit 4 from 2) = (1 - r^2) / (1 - r^4), r = (1-p)/p.
    """
    S, p = 5, 0.6
    P = np.zeros((S, 1, S))
    for s in (1, 2, 3):
        P[s, 0, s + 1] = p
        P[s, 0, s - 1] = 1 - p
    P[0, 0, 0] = P[4, 0, 4] = 1.0
    R = np.zeros((S, 1))
    R[3, 0] = p
    mdp = TabularMDP(P, R, 0.9, initial=np.eye(S)[2], terminal=np.array([True, False, False, False, True]))
    r = (1 - p) / p
    pi = np.ones((S, 1))
    assert metrics.success_probability(mdp, pi, [4]) == pytest.approx((1 - r**2) / (1 - r**4), rel=1e-12)
    # within 2 steps only the path right-right succeeds
    assert metrics.success_probability(mdp, pi, [4], horizon=2) == pytest.approx(p * p, rel=1e-12)
    with pytest.raises(MetricError, match="goal_states"):
        metrics.success_probability(mdp, pi, [7])


@settings(max_examples=20)
@given(seed=seeds, beta=st.floats(0.05, 5.0))
def test_soft_value_gap_identity(seed, beta):
    """V*_beta - V^pi_beta = beta * sum_t gamma^t E_{d_t^pi} KL(pi || pi*_beta) (THEORY.md, Metrics)."""
    mdp = random_mdp(seed, S=5, A=3, n_terminal=1)
    ref = random_policy(seed + 3, 5, 3, floor=0.05)
    pi = random_policy(seed + 4, 5, 3, floor=0.01)
    sol = soft_value_iteration(mdp, beta, ref_policy=ref)
    pi_star = sol.policy_probs
    occ = occupancy_by_power_series(mdp, pi)
    expected = beta * float(np.sum(occ * kl_rows(pi, pi_star)))
    gap = metrics.soft_value_gap(mdp, beta, ref, pi)
    # Both sides use the solver (certificate eps: |V - V*| <= eps). The gap's V* is off by <= eps; log pi* =
    # log ref + (Q - V)/beta is off by <= 2 eps/beta per state, so beta * sum occ * KL moves by <= 2 eps sum occ.
    eps = sol.error_bound
    assert gap == pytest.approx(expected, rel=0, abs=eps * (1 + 2 * occ.sum()) + 1e-12)
    assert gap > 0
    occ_star = occupancy_by_power_series(mdp, pi_star)
    assert metrics.soft_value_gap(mdp, beta, ref, pi_star) == pytest.approx(
        0.0, abs=eps * (1 + 2 * occ_star.sum()) + 1e-12
    )


def test_soft_value_of_the_reference_policy_is_its_plain_value():
    mdp = random_mdp(5)
    ref = random_policy(9, mdp.n_states, mdp.n_actions, 0.1)
    np.testing.assert_allclose(metrics.soft_value(mdp, 0.7, ref, ref),
                               metrics.soft_value(mdp, 1e6, ref, ref), atol=1e-12)
    assert float(mdp.initial @ metrics.soft_value(mdp, 0.7, ref, ref)) == pytest.approx(
        metrics.start_value(mdp, ref), abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_soft_metrics_reject_bad_beta(beta):
    mdp = random_mdp(0)
    pi = random_policy(0, mdp.n_states, mdp.n_actions)
    with pytest.raises(MetricError, match="beta"):
        metrics.soft_value_gap(mdp, beta, None, pi)


def test_policies_of_the_wrong_shape_are_named_in_the_error():
    mdp = random_mdp(0)
    good = random_policy(0, mdp.n_states, mdp.n_actions)
    with pytest.raises(MetricError, match="pi:"):
        metrics.visitation_kl(mdp, good, np.ones((2, 2)))
    with pytest.raises(MetricError, match="pi_star:"):
        metrics.visitation_kl(mdp, good * 2, good)
    with pytest.raises(MetricError, match="excludes"):
        ref = good.copy()
        ref[0] = [1.0, 0.0, 0.0]
        metrics.soft_value(mdp, 1.0, ref, np.full_like(good, 1 / 3))
