"""Exact solvers: agreement, certified bounds, gamma = 1 properness, soft limits, evaluation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.mdp import TabularMDP
from mdpalign.solve import (
    SolverError,
    UnboundedMDPError,
    evaluate,
    finite_horizon,
    is_proper,
    linear_program,
    occupancy,
    policy_iteration,
    soft_value_iteration,
    solve,
    state_success_probabilities,
    value_iteration,
)
from mdpalign.testing.strategies import mdp_params as _mdp_params
from mdpalign.testing.strategies import random_mdp

# ----------------------------------------------------------------------------- generators (shared with users)
mdp_params = _mdp_params()


def solvers_for(mdp):
    return [policy_iteration(mdp), value_iteration(mdp), linear_program(mdp)]


# ----------------------------------------------------------------------------- agreement
@settings(max_examples=150)
@given(mdp_params)
def test_solvers_agree_and_bounds_hold(params):
    mdp = random_mdp(**params)
    sols = solvers_for(mdp)
    ref = sols[0]
    for sol in sols:
        assert sol.error_bound <= 1e-10, (sol.method, sol.error_bound)
        assert np.max(np.abs(sol.values - ref.values)) <= 1e-9, sol.method
        # each value vector is within its own bound of every other (all contain V*)
        assert np.max(np.abs(sol.values - ref.values)) <= sol.error_bound + ref.error_bound + 1e-13
        # policies compared by their exact value, not by action identity (ties exist)
        if mdp.gamma == 1.0:
            assert is_proper(mdp, sol.policy), sol.method
        assert np.max(np.abs(evaluate(mdp, sol.policy) - ref.values)) <= 1e-9, sol.method
        assert np.all(sol.values[mdp.terminal] == 0.0)


@settings(max_examples=40)
@given(mdp_params, st.sampled_from([1e-2, 1e-4, 1e-6]))
def test_loose_value_iteration_keeps_its_bound(params, tol):
    mdp = random_mdp(**params)
    v_star = linear_program(mdp).values
    vi = value_iteration(mdp, tol=tol)
    assert vi.error_bound <= tol
    assert np.max(np.abs(vi.values - v_star)) <= vi.error_bound + 1e-12


def test_change_based_stop_is_not_a_certificate():
    # mdptoolbox-style "stop when the change is below epsilon" is off by far more than epsilon
    # near gamma = 1; our bound is not.
    mdp = random_mdp(3, 40, 3, 0.999, sparse=True, n_terminal=1, zero_cost=False)
    v_star = policy_iteration(mdp).values
    V = np.zeros(mdp.n_states)
    while True:
        TV = mdp.q_from_values(V).max(axis=1)
        if np.max(np.abs(TV - V)) < 1e-4:
            break
        V = TV
    assert np.max(np.abs(TV - v_star)) > 1e-3  # the naive answer is wrong by > 10x its epsilon
    vi = value_iteration(mdp, tol=1e-4)
    assert np.max(np.abs(vi.values - v_star)) <= vi.error_bound <= 1e-4


def test_iterative_linear_solver_matches_direct():
    mdp = random_mdp(11, 300, 3, 0.95, sparse=True, density=0.02)
    direct = policy_iteration(mdp, linear_solver="direct")
    krylov = policy_iteration(mdp, linear_solver="gmres")
    assert krylov.error_bound <= 1e-10
    assert np.max(np.abs(direct.values - krylov.values)) <= 1e-10


# ----------------------------------------------------------------------------- gamma = 1
def _almost_sure_winning(P: np.ndarray, goal) -> np.ndarray:
    """States from which some policy reaches ``goal`` with probability 1, from the support graph alone
    (the classical nested fixed point: shrink W to the states that can reach the goal using only actions
    whose every successor stays in W, until W is stable). No values, no solver."""
    support = P > 0
    W = np.ones(P.shape[0], dtype=bool)
    while True:
        safe = ~np.any(support & ~W[None, None, :], axis=2)
        R = np.zeros_like(W)
        R[list(goal)] = True
        while True:
            grow = W & ~R & np.any(safe & np.any(support & R[None, None, :], axis=2), axis=1)
            if not grow.any():
                break
            R |= grow
        if np.array_equal(R, W):
            return W
        W = R


def test_frozen_lake_8x8_gamma_one_policies_are_proper():
    from mdpalign.envs.frozen_lake import frozen_lake

    lake = frozen_lake("8x8", slippery=True, gamma=1.0)
    mdp = lake.mdp
    sols = solvers_for(mdp)
    v = sols[0].values
    # reward 1 on entering G is the only reward, so V = 1 exactly where G is reachable almost surely (G itself,
    # terminal, has value 0): the same set from the support graph, and its size is ARCHITECTURE.md's 27
    sure = _almost_sure_winning(mdp.dense_P(), lake.goal_states)
    sure[list(lake.goal_states)] = False
    np.testing.assert_array_equal(np.abs(v - 1.0) < 1e-9, sure)
    assert sure.sum() == 27
    naive = sols[0].q_values.argmax(axis=1)
    assert not is_proper(mdp, naive)  # plain argmax bumps into a wall forever
    for sol in sols:
        assert is_proper(mdp, sol.policy), sol.method
        assert np.max(np.abs(sol.values - v)) <= 1e-9
        succ = state_success_probabilities(mdp, sol.policy, lake.goal_states)
        # reaching G is the only reward, so the success probability equals the value (off G itself)
        off_goal = np.ones(mdp.n_states, dtype=bool)
        off_goal[list(lake.goal_states)] = False
        assert np.max(np.abs(succ - sol.values)[off_goal]) <= 1e-9
        assert abs(succ[lake.start_state] - 1.0) <= 1e-9


def test_improper_optimum_is_not_returned():
    # state 0: "stay" (reward 0, loops forever) or "exit" (reward -1 into the terminal state 1).
    # The best proper policy exits (value -1); staying forever is improper.
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = 1.0
    P[0, 1, 1] = 1.0
    P[1, :, 1] = 1.0
    R = np.array([[0.0, -1.0], [0.0, 0.0]])
    mdp = TabularMDP(P, R, 1.0, terminal=np.array([False, True]))
    for sol in solvers_for(mdp):
        assert sol.values[0] == pytest.approx(-1.0, abs=1e-12), sol.method
        assert sol.policy[0] == 1
        assert sol.error_bound <= 1e-10


def test_positive_cycle_is_unbounded():
    # 0 <-> 1 with reward +1 each step, or exit to the terminal state 2
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[1, 0, 0] = 1.0
    P[0, 1, 2] = P[1, 1, 2] = 1.0
    P[2, :, 2] = 1.0
    R = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    mdp = TabularMDP(P, R, 1.0, terminal=np.array([False, False, True]))
    with pytest.raises(UnboundedMDPError, match="unbounded"):
        policy_iteration(mdp)
    with pytest.raises(UnboundedMDPError, match="unbounded"):
        linear_program(mdp)
    with pytest.raises(UnboundedMDPError):
        value_iteration(mdp, max_iter=200)


def test_evaluate_improper_policy_at_gamma_one():
    # 0 -> 1 (reward 2); at 1 action 0 loops forever with reward 0, action 1 exits with reward 5.
    P2 = np.zeros((3, 2, 3))
    P2[0, :, 1] = 1.0
    P2[1, 0, 1] = 1.0
    P2[1, 1, 2] = 1.0
    P2[2, :, 2] = 1.0
    R2 = np.array([[2.0, 2.0], [0.0, 5.0], [0.0, 0.0]])
    mdp2 = TabularMDP(P2, R2, 1.0, terminal=np.array([False, False, True]))
    np.testing.assert_allclose(evaluate(mdp2, np.array([0, 0, 0])), [2.0, 0.0, 0.0])
    np.testing.assert_allclose(evaluate(mdp2, np.array([0, 1, 0])), [7.0, 5.0, 0.0])
    # mixing: at state 1 exit with probability 1/2 per step -> 5 eventually
    pi = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(evaluate(mdp2, pi), [7.0, 5.0, 0.0])
    R3 = R2.copy()
    R3[1, 0] = 1.0
    bad = TabularMDP(P2, R3, 1.0, terminal=np.array([False, False, True]))
    with pytest.raises(SolverError, match="loops forever"):
        evaluate(bad, np.array([0, 0, 0]))
    with pytest.raises(SolverError, match="infinite"):
        occupancy(bad, np.array([0, 0, 0]))


# ----------------------------------------------------------------------------- soft
@settings(max_examples=25)
@given(mdp_params.filter(lambda p: p["gamma"] < 1.0), st.sampled_from([1e-3, 1e-2, 0.1, 1.0]))
def test_soft_tends_to_hard_optimum(params, beta):
    mdp = random_mdp(**params)
    hard = policy_iteration(mdp).values
    soft = soft_value_iteration(mdp, beta)
    gap = soft.values - hard
    bound = beta * np.log(mdp.n_actions) / (1.0 - mdp.gamma)
    # uniform reference: V* - beta log|A|/(1-gamma) <= V_beta <= V*
    assert np.all(gap <= soft.error_bound + 1e-9)
    assert np.all(gap >= -bound - soft.error_bound - 1e-9)


@settings(max_examples=25)
@given(mdp_params, st.integers(0, 2**31 - 1))
def test_soft_policy_formula_and_large_beta(params, seed):
    mdp = random_mdp(**params)
    rng = np.random.default_rng(seed)
    ref = rng.random((mdp.n_states, mdp.n_actions)) * (rng.random((mdp.n_states, mdp.n_actions)) < 0.7)
    ref[np.arange(mdp.n_states), 0] += 0.1  # action 0 keeps the reference proper at gamma = 1
    ref /= ref.sum(axis=1, keepdims=True)
    sol = soft_value_iteration(mdp, 0.5, ref_policy=ref)
    np.testing.assert_allclose(sol.policy_probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(sol.policy_probs[ref == 0] == 0.0)
    expected = ref * np.exp((sol.q_values - sol.values[:, None]) / 0.5)
    nonterm = ~mdp.terminal
    # Tolerances from the certificate eps = sol.error_bound (|V - V*| <= eps): the soft Bellman operator T is
    # non-expansive in sup norm, so |T V - V| <= |T V - T V*| + |V* - V| <= 2 eps; a policy normalised with
    # T V instead of V is off by a factor exp(+-2 eps / beta). 1e-12 covers float64 rounding.
    eps = sol.error_bound
    np.testing.assert_allclose(sol.policy_probs[nonterm], expected[nonterm], rtol=np.expm1(2 * eps / 0.5) + 1e-12,
                               atol=1e-15)
    # soft Bellman fixed point
    V_back = 0.5 * np.log((ref * np.exp(sol.q_values / 0.5)).sum(axis=1))
    np.testing.assert_allclose(V_back[nonterm], sol.values[nonterm], rtol=0, atol=2 * eps + 1e-12)
    # beta -> infinity: the reference policy's value. V_beta - V^ref = (I - gamma P_ref)^-1 b with the per-state
    # bias b(s) = beta log E_ref exp(Q/beta) - E_ref Q, and 0 <= b(s) <= range_s(Q)^2 / (8 beta) (Jensen below,
    # Hoeffding's lemma above); (I - gamma P_ref)^-1 1 is the expected discounted number of steps under pi_ref.
    beta = 1e7
    big = soft_value_iteration(mdp, beta, ref_policy=ref)
    q = np.where(ref > 0, big.q_values, np.nan)
    q_range = np.where(nonterm, np.nanmax(q, axis=1) - np.nanmin(q, axis=1), 0.0)
    ones = np.where(nonterm, 1.0, 0.0)[:, None] * np.ones(mdp.n_actions)
    steps = evaluate(TabularMDP(mdp.P, ones, mdp.gamma, terminal=mdp.terminal), ref)
    excess = big.values - evaluate(mdp, ref)
    assert np.all(excess >= -big.error_bound - 1e-12)
    assert np.all(excess <= q_range.max() ** 2 / (8 * beta) * steps + big.error_bound + 1e-12)


def test_soft_stable_at_tiny_beta():
    from mdpalign.envs.frozen_lake import frozen_lake

    mdp = frozen_lake("8x8", slippery=True, gamma=0.95).mdp
    hard = policy_iteration(mdp)
    soft = soft_value_iteration(mdp, 1e-4)
    assert np.all(np.isfinite(soft.values)) and np.all(np.isfinite(soft.policy_probs))
    bound = 1e-4 * np.log(4) / (1 - 0.95)
    assert np.all(soft.values <= hard.values + soft.error_bound + 1e-12)
    assert np.all(soft.values >= hard.values - bound - soft.error_bound)
    # rewards scaled up: logits of order 1e6 still give finite, normalised policies
    big = TabularMDP(mdp.P, mdp.R * 100.0, mdp.gamma, terminal=mdp.terminal)
    s2 = soft_value_iteration(big, 1e-4)
    assert np.all(np.isfinite(s2.log_policy[~big.terminal].max(axis=1)))
    np.testing.assert_allclose(s2.policy_probs.sum(axis=1), 1.0, atol=1e-12)


def _brute_force_root_value(mdp: TabularMDP, ref: np.ndarray, beta: float) -> float:
    """beta log E_ref[exp(total reward / beta)] by enumerating every token sequence."""
    P = mdp.dense_P()
    terms = []

    def walk(s, logp, ret):
        if mdp.terminal[s]:
            terms.append(logp + ret / beta)
            return
        for a in range(mdp.n_actions):
            if ref[s, a] > 0:
                nxt = int(np.argmax(P[s, a]))
                assert P[s, a, nxt] == 1.0
                walk(nxt, logp + np.log(ref[s, a]), ret + mdp.R[s, a])

    walk(0, 0.0, 0.0)
    terms = np.array(terms)
    m = terms.max()
    return float(beta * (m + np.log(np.exp(terms - m).sum())))


@pytest.mark.parametrize("beta", [1e-3, 0.3, 5.0])
@pytest.mark.parametrize("vocab,length,seed", [(3, 2, 0), (4, 3, 1)])
def test_soft_token_tree_root_is_log_partition(beta, vocab, length, seed):
    from mdpalign.envs.token_tree import random_token_tree

    tree = random_token_tree(vocab, length, seed=seed, reward_scale=2.0)
    mdp = tree.to_mdp()
    sol = soft_value_iteration(mdp, beta, ref_policy=tree.ref_policy)
    brute = _brute_force_root_value(mdp, tree.ref_policy, beta)
    assert abs(sol.values[0] - brute) <= sol.error_bound + 1e-12 * max(1.0, abs(brute))
    assert sol.error_bound <= 1e-10
    assert abs(sol.values[0] - tree.log_partition(beta)) <= 1e-10 * max(1.0, abs(brute))


# ----------------------------------------------------------------------------- finite horizon
def _brute_force_horizon(mdp: TabularMDP, H: int) -> np.ndarray:
    """max over all non-stationary deterministic policies, enumerated (tiny problems)."""
    S, A = mdp.n_states, mdp.n_actions
    best = np.full(S, -np.inf)
    for plan in itertools.product(range(A), repeat=S * H):
        pol = np.array(plan).reshape(H, S)
        best = np.maximum(best, evaluate(mdp, pol, horizon=H)[0])
    return best


@pytest.mark.parametrize("seed,H,gamma", [(0, 2, 1.0), (1, 3, 0.9), (2, 2, 0.5)])
def test_finite_horizon_matches_brute_force(seed, H, gamma):
    mdp = random_mdp(seed, 3, 2, gamma, sparse=False, n_terminal=1)
    sol = finite_horizon(mdp, H)
    assert sol.values.shape == (H + 1, 3) and sol.policy.shape == (H, 3) and sol.q_values.shape == (H, 3, 2)
    np.testing.assert_allclose(sol.values[0], _brute_force_horizon(mdp, H), atol=1e-12)
    np.testing.assert_allclose(evaluate(mdp, sol.policy, horizon=H), sol.values, atol=1e-12)
    # the recursion is exact; the bound is its float64 rounding (tests/solve/test_certificates.py checks it
    # against exact rational backward induction)
    assert np.all(sol.values[H] == 0.0) and 0.0 < sol.error_bound <= 1e-13


def test_finite_horizon_approaches_infinite_horizon():
    mdp = random_mdp(5, 20, 3, 0.9, sparse=True)
    v = policy_iteration(mdp).values
    sol = finite_horizon(mdp, 400)
    # |V_H - V*| <= gamma^H max|R| / (1 - gamma)
    assert np.max(np.abs(sol.values[0] - v)) <= 0.9**400 * np.abs(mdp.R).max() / 0.1 + 1e-12
    assert np.max(np.abs(finite_horizon(mdp, 10).values[0] - v)) > 1e-6  # and it is not trivially equal


def test_time_limited_frozen_lake_matches_known_value():
    from mdpalign.envs.frozen_lake import frozen_lake

    lake = frozen_lake("4x4", slippery=True, gamma=1.0)
    sol = finite_horizon(lake.mdp, lake.max_episode_steps)
    succ = state_success_probabilities(lake.mdp, sol.policy, lake.goal_states, horizon=lake.max_episode_steps)
    assert succ[lake.start_state] == pytest.approx(sol.values[0, lake.start_state], abs=1e-12)
    # the untimed optimum is 1 from the start; 100 steps leave about 0.74
    assert 0.70 < sol.values[0, lake.start_state] < 0.80


# ----------------------------------------------------------------------------- evaluation
@settings(max_examples=30)
@given(mdp_params.filter(lambda p: p["gamma"] in (0.5, 0.9)), st.integers(0, 2**31 - 1))
def test_evaluate_occupancy_success_against_power_series(params, seed):
    mdp = random_mdp(**params)
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    P_pi = np.einsum("sa,sat->st", pi, mdp.dense_P())
    r_pi = np.where(mdp.terminal, 0.0, (pi * mdp.R).sum(axis=1))
    keep = np.where(mdp.terminal, 0.0, 1.0)
    # truncated power series: sum_t gamma^t P^t r  (gamma^400 < 1e-18)
    V = np.zeros(mdp.n_states)
    dist = mdp.initial.copy()
    d_series = np.zeros(mdp.n_states)
    Pt_r = r_pi.copy()
    g = 1.0
    for _ in range(400):
        V += g * Pt_r
        d_series += g * dist * keep
        Pt_r = P_pi @ Pt_r
        dist = dist @ P_pi
        g *= mdp.gamma
    np.testing.assert_allclose(evaluate(mdp, pi), V, atol=1e-10)
    d = occupancy(mdp, pi)
    np.testing.assert_allclose(d, d_series[:, None] * pi, atol=1e-10)
    assert np.sum(d * mdp.R) == pytest.approx(mdp.initial @ V, abs=1e-10)
    np.testing.assert_allclose(occupancy(mdp, pi, horizon=400), d, atol=1e-10)
    # success probability: the linear solve satisfies h = 1_G + 1_{not G} P_pi h ...
    goal = np.flatnonzero(mdp.terminal) if mdp.terminal.any() else np.array([0])
    h = state_success_probabilities(mdp, pi, goal)
    is_goal = np.isin(np.arange(mdp.n_states), goal)
    np.testing.assert_allclose(h, np.where(is_goal, 1.0, P_pi @ h), atol=1e-10)
    if mdp.terminal.any():
        # ... and equals the limit of the finite-horizon recursion (hitting the absorbing set)
        np.testing.assert_allclose(h, state_success_probabilities(mdp, pi, goal, horizon=3000), atol=1e-8)
    assert np.all(h >= -1e-12) and np.all(h <= 1 + 1e-12)


def test_occupancy_sums_to_effective_horizon():
    P = np.random.default_rng(0).dirichlet(np.ones(5), size=(5, 2))
    mdp = TabularMDP(P, np.ones((5, 2)), 0.8)
    d = occupancy(mdp, np.zeros(5, dtype=np.int64))
    assert d.sum() == pytest.approx(1 / (1 - 0.8), rel=1e-12)
    assert d[:, 1].sum() == 0.0
    # gamma = 1: expected steps to termination of a geometric exit (prob 1/4 per step) = 4
    P = np.zeros((2, 1, 2))
    P[0, 0] = [0.75, 0.25]
    P[1, 0, 1] = 1.0
    mdp1 = TabularMDP(P, np.zeros((2, 1)), 1.0, terminal=np.array([False, True]))
    assert occupancy(mdp1, np.zeros(2, dtype=np.int64)).sum() == pytest.approx(4.0, rel=1e-12)


# ----------------------------------------------------------------------------- dispatcher and errors
def test_solve_dispatcher():
    mdp = random_mdp(7, 6, 2, 0.9, sparse=False)
    v = policy_iteration(mdp).values
    for method in ("pi", "vi", "lp"):
        np.testing.assert_allclose(solve(mdp, method).values, v, atol=1e-9)
    soft = solve(mdp, "soft", beta=0.1)
    assert soft.method == "soft_value_iteration"
    np.testing.assert_array_equal(soft.values, soft_value_iteration(mdp, 0.1).values)
    np.testing.assert_allclose(solve(mdp, "pi", horizon=5).values, finite_horizon(mdp, 5).values)


@pytest.mark.parametrize("call,match", [
    (lambda m: soft_value_iteration(m, 0.0), "beta"),
    (lambda m: soft_value_iteration(m, -1.0), "beta"),
    (lambda m: soft_value_iteration(m, float("nan")), "beta"),
    (lambda m: soft_value_iteration(m, float("inf")), "beta"),
    (lambda m: soft_value_iteration(m, 1.0, ref_policy=np.ones((3, 2))), r"shape \(4, 2\)"),
    (lambda m: soft_value_iteration(m, 1.0, ref_policy=np.array([[1, 0], [0, 0], [1, 0], [1, 0.0]])),
     "no mass"),
    (lambda m: evaluate(m, np.zeros(3, dtype=np.int64)), "shape"),
    (lambda m: evaluate(m, np.full(4, 2)), "outside"),
    (lambda m: evaluate(m, np.zeros(4)), "integer"),
    (lambda m: evaluate(m, np.full((4, 2), 0.7)), "sums to"),
    (lambda m: evaluate(m, np.zeros(4, dtype=np.int64), horizon=-1), "horizon"),
    (lambda m: finite_horizon(m, -2), "horizon"),
    (lambda m: finite_horizon(m, 2.5), "horizon"),
    (lambda m: occupancy(m, np.zeros((2, 4), dtype=np.int64)), "shape"),
    (lambda m: state_success_probabilities(m, np.zeros(4, dtype=np.int64), [7]), "outside"),
    (lambda m: state_success_probabilities(m, np.zeros(4, dtype=np.int64), []), "empty"),
    (lambda m: value_iteration(m, tol=0.0), "tol"),
    (lambda m: policy_iteration(m, tol=-1.0), "tol"),
    (lambda m: policy_iteration(m, linear_solver="cholesky"), "linear_solver"),
    (lambda m: value_iteration(m, max_iter=0), "max_iter"),
    (lambda m: solve(m, "qlearning"), "unknown method"),
    (lambda m: solve(m, "soft"), "beta"),
    (lambda m: policy_iteration("not an mdp"), "TabularMDP"),
])
def test_bad_input_raises(call, match):
    mdp = random_mdp(1, 4, 2, 0.9, sparse=False)
    with pytest.raises(SolverError, match=match):
        call(mdp)


def test_soft_gamma_one_needs_proper_reference():
    P2 = np.zeros((3, 2, 3))
    P2[0, :, 1] = 1.0
    P2[1, 0, 1] = 1.0
    P2[1, 1, 2] = 1.0
    P2[2, :, 2] = 1.0
    mdp = TabularMDP(P2, np.zeros((3, 2)), 1.0, terminal=np.array([False, False, True]))
    ref = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])  # never leaves state 1
    with pytest.raises(SolverError, match="proper"):
        soft_value_iteration(mdp, 1.0, ref_policy=ref)
