"""Certified bounds against exact arithmetic, float64's floor, and the soft solver at gamma = 1 (issue 9).

The answer keys (tests/support/exact_oracles.py) never call the solvers: V* by enumerating every deterministic policy in
exact rationals, finite horizons by exact backward induction, soft optima in 50-digit decimal arithmetic.
"""
from __future__ import annotations

import warnings
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from exact_oracles import (
    exact_finite_horizon,
    exact_optimum,
    exact_optimum_by_improvement,
    max_error,
    random_small_mdp,
    soft_optimum,
    unbounded_soft_mdp,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.mdp import TabularMDP
from mdpalign.solve import (
    CertificateFloorWarning,
    ConvergenceError,
    UnboundedMDPError,
    finite_horizon,
    linear_program,
    policy_iteration,
    soft_loop_gains,
    soft_value_iteration,
    value_iteration,
)
from mdpalign.solve._rounding import TRANSCENDENTAL_ULPS, U, row_sums, shifted_backup


def quiet(call):
    """Run a solver with the floor warning silenced (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateFloorWarning)
        return call()


def sweeps(call, mdp):
    """A value iteration, or None where it may legitimately run out of sweeps: at gamma >= 0.999 a periodic chain
    (one action, no terminal state) contracts its span only at rate gamma, so 1e-10 needs ~3e4+ sweeps, and the
    solver says so with ConvergenceError rather than returning a bound it does not have."""
    try:
        return quiet(call)
    except ConvergenceError:
        assert mdp.gamma >= 0.999
        return None


def useful(mdp, values, tol: float = 1e-10) -> float:
    """A generous ceiling that rules out useless bounds (inf, or far above float64's floor): ``tol``, or where that
    is below the floor, 300 (1 + C) u |V| with C = gamma / (1 - gamma) (the floor is about
    (1 + C) (k + 7) u (|R| + |W|) + u |V|, module docstring of mdpalign.solve.certificates); 1e-9 |V| at gamma = 1."""
    scale = max(1.0, float(np.max(np.abs(values))))
    if mdp.gamma == 1.0:
        return max(tol, 1e-9 * scale)
    return max(tol, 300 * (1 + mdp.gamma / (1 - mdp.gamma)) * U * scale)


# ----------------------------------------------------------------------------- (a) bounds hold, exactly
tiny = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "S": st.integers(2, 4),
    "A": st.integers(1, 3),
    "gamma": st.sampled_from([0.5, 0.9, 0.99, 0.999, 0.9999, 1.0]),
    "scale": st.sampled_from([1.0, 10.0, 1e3]),
    "sparse": st.booleans(),
    "terminal": st.booleans(),
    "density": st.sampled_from([1.0, 0.5]),
    "beta": st.sampled_from([0.01, 1.0, 100.0]),
})


@settings(max_examples=60)
@given(tiny)
def test_every_error_bound_holds_in_exact_arithmetic(p):
    """Each solver's error_bound is at least max|values - V*| with V* exact (rationals; 50-digit decimals for the
    soft optimum, whose own error is below 1e-30): dense and sparse P, gamma up to 0.9999 and 1, rewards up to
    1e3. Fails on the code before issue 9 (bounds of 0 at gamma >= 0.99)."""
    rng = np.random.default_rng(p["seed"])
    mdp = random_small_mdp(rng, p["S"], p["A"], p["gamma"], p["scale"], p["sparse"], p["terminal"], p["density"],
                           leak=True)
    v_star = exact_optimum(mdp)
    sols = [sweeps(lambda: value_iteration(mdp, max_iter=5_000), mdp), quiet(lambda: policy_iteration(mdp)),
            quiet(lambda: linear_program(mdp))]
    for sol in filter(None, sols):
        err = max_error(sol.values, v_star)
        assert err <= Fraction(sol.error_bound), (sol.method, float(err), sol.error_bound)
        assert sol.error_bound <= useful(mdp, sol.values), (sol.method, sol.error_bound)
    soft = sweeps(lambda: soft_value_iteration(mdp, p["beta"], max_iter=5_000), mdp)
    if soft is not None:
        v_soft, radius = soft_optimum(mdp, p["beta"])
        err = max_error(soft.values, v_soft) + radius
        assert err <= Decimal(soft.error_bound), (float(err), soft.error_bound)
        assert soft.error_bound <= useful(mdp, soft.values)
    horizon = finite_horizon(mdp, 12)
    exact = exact_finite_horizon(mdp, 12)
    assert max(max_error(horizon.values[t], exact[t]) for t in range(13)) <= Fraction(horizon.error_bound)
    assert 0 < horizon.error_bound <= 1e-13 * max(1.0, float(np.max(np.abs(horizon.values))))


def test_frozen_lake_gamma_one_exact():
    """Zero-reward loops and exact ties (values exactly 1): the gamma = 1 certificate decides them in rational
    arithmetic. V* by exact policy iteration (optimality proved by T V = V, exactly)."""
    from mdpalign.envs.frozen_lake import frozen_lake

    mdp = frozen_lake("4x4", slippery=True, gamma=1.0).mdp
    for sol in (policy_iteration(mdp), value_iteration(mdp), linear_program(mdp)):
        v_star = exact_optimum_by_improvement(mdp, sol.policy)
        assert max_error(sol.values, v_star) <= Fraction(sol.error_bound) <= Fraction(1e-10)


# ----------------------------------------------------------------------------- float64's floor
def big_values_mdp() -> TabularMDP:
    """3 states, rewards up to 1e3, gamma = 0.9999: |V| ~ 5e6, where float64 cannot certify 1e-12."""
    rng = np.random.default_rng(7)
    return random_small_mdp(rng, 3, 2, 0.9999, 1e3, sparse=False, terminal=False)


@pytest.mark.parametrize("solver", [
    lambda m, tol: value_iteration(m, tol=tol, max_iter=100_000),
    lambda m, tol: policy_iteration(m, tol=tol),
    lambda m, tol: linear_program(m, tol=tol),
    lambda m, tol: soft_value_iteration(m, 1.0, tol=tol, max_iter=100_000),
], ids=["vi", "pi", "lp", "soft"])
def test_tol_below_the_floor_warns_and_returns_the_honest_bound(solver):
    mdp = big_values_mdp()
    with pytest.warns(CertificateFloorWarning, match="cannot certify much below"):
        sol = solver(mdp, 1e-12)
    assert sol.error_bound > 1e-12
    assert sol.iterations < 2_000  # value iteration stops at the floor instead of running to max_iter
    if sol.method == "soft_value_iteration":
        v_soft, radius = soft_optimum(mdp, 1.0)
        assert max_error(sol.values, v_soft) + radius <= Decimal(sol.error_bound)
    else:
        assert max_error(sol.values, exact_optimum(mdp)) <= Fraction(sol.error_bound)
    assert sol.error_bound <= useful(mdp, sol.values)


def test_default_tol_is_reached_for_moderate_values():
    """The README's example: 5 states, rewards in [0, 10], gamma = 0.999 (|V| ~ 5e3): 1e-10 is certified, no
    warning (the floor there is ~1e-11, dominated by (1 + C) u (|R| + |W|) with |W| the values' half-span)."""
    rng = np.random.default_rng(3)
    mdp = random_small_mdp(rng, 5, 3, 0.999, 10.0, sparse=False, terminal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CertificateFloorWarning)
        sols = [value_iteration(mdp), policy_iteration(mdp), linear_program(mdp), soft_value_iteration(mdp, 0.1)]
    v_star = exact_optimum(mdp)
    for sol in sols[:3]:
        assert max_error(sol.values, v_star) <= Fraction(sol.error_bound) <= Fraction(1e-10)
    assert np.max(np.abs(sols[0].values)) > 4e3


# ----------------------------------------------------------------------------- (b) soft, gamma = 1
def all_proper(seed: int, S: int = 15, A: int = 3) -> TabularMDP:
    """Every action ends the episode with probability 0.1-0.3 per step: every policy is proper, values bounded."""
    rng = np.random.default_rng(seed)
    P = rng.random((S + 1, A, S + 1)) * (rng.random((S + 1, A, S + 1)) < 0.5)
    P[:, :, S] += 0.1 + 0.2 * rng.random((S + 1, A))
    P /= P.sum(axis=2, keepdims=True)
    P[S] = 0.0
    P[S, :, S] = 1.0
    R = rng.normal(size=(S + 1, A)) * 5
    R[S] = 0.0
    return TabularMDP(P, R, 1.0, terminal=np.r_[np.zeros(S, dtype=bool), True])


@pytest.mark.parametrize("seed", [8, 16, 18])
def test_soft_gamma_one_converges_instead_of_stopping_early(seed):
    """Before issue 9 these stopped after 2 soft policy iterations (the change rose once) with errors of
    21.6, 17.9 and 23.1; now the certified error is at the default tol."""
    mdp = all_proper(seed)
    sol = soft_value_iteration(mdp, 0.1)
    v_soft, radius = soft_optimum(mdp, 0.1)
    assert max_error(sol.values, v_soft) + radius <= Decimal(sol.error_bound) <= Decimal("1e-10")


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.7])
def test_unbounded_soft_values_raise(beta):
    """The only way to stay in {0, 1} forever is deterministic (a0 at 0, a1 at 1: stationary law (1/9, 8/9), mean
    reward 17/9) and pays KL = log 2 per step against the uniform reference: soft gain 17/9 - beta log 2, positive
    below beta = 17 / (9 log 2) = 2.725. Before issue 9: values -7.4e16 (beta 0.1) and 103.6 (beta 1), no error."""
    with pytest.raises(UnboundedMDPError, match=r"unbounded at beta=.*states \[0, 1\]"):
        soft_value_iteration(unbounded_soft_mdp(), beta)


def test_soft_values_are_finite_above_the_threshold():
    mdp = unbounded_soft_mdp()
    sol = soft_value_iteration(mdp, 2.75)
    v_soft, radius = soft_optimum(mdp, 2.75)
    assert max_error(sol.values, v_soft) + radius <= Decimal(sol.error_bound) <= Decimal("1e-9")
    (states, lo, hi), = soft_loop_gains(mdp, 2.75)
    assert list(states) == [0, 1] and lo <= 17 / 9 - 2.75 * np.log(2) <= hi < 0


def self_loop() -> TabularMDP:
    """State 0: action 0 loops with reward +1, action 1 ends the episode with reward 0."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, :, 1] = 1.0
    return TabularMDP(P, np.array([[1.0, 0.0], [0.0, 0.0]]), 1.0, terminal=[False, True])


def test_self_loop_names_the_real_cause():
    """Nothing underflows here: the loop's reward (1 per step) beats its KL price (beta log 2) below
    beta = 1 / log 2, so the soft values are infinite. The old message blamed underflow."""
    with pytest.raises(UnboundedMDPError) as info:
        soft_value_iteration(self_loop(), 1.0)
    message = str(info.value)
    assert "unbounded" in message and "states [0]" in message and "KL" in message
    assert "underflow" not in message
    # above the threshold: Z = e^{V/beta} solves Z = (e^{1/beta} Z + 1) / 2 (deterministic: linear)
    for beta in (1.5, 2.0, 10.0):
        sol = soft_value_iteration(self_loop(), beta)
        exact = beta * np.log(0.5 / (1 - 0.5 * np.exp(1 / beta)))
        assert abs(sol.values[0] - exact) <= sol.error_bound + 4 * U * exact


def deterministic_mdp(seed: int, S: int = 5, A: int = 2) -> TabularMDP:
    rng = np.random.default_rng(seed)
    P = np.zeros((S + 1, A, S + 1))
    nxt = rng.integers(0, S + 1, size=(S, A))
    nxt[:, 0] = np.minimum(np.arange(S) + 1, S)  # action 0 walks to the terminal state: a proper reference
    P[np.arange(S)[:, None], np.arange(A)[None, :], nxt] = 1.0
    P[S, :, S] = 1.0
    R = rng.uniform(-1, 1, size=(S + 1, A))
    R[S] = 0.0
    return TabularMDP(P, R, 1.0, terminal=np.r_[np.zeros(S, dtype=bool), True])


@pytest.mark.parametrize("seed", range(12))
def test_deterministic_transitions_match_the_linear_equation(seed):
    """With deterministic transitions Z = exp(V/beta) solves the linear Z = M Z + b (M(s,s') = sum_a pi_ref
    e^{R/beta} [s' = next(s,a)] on the non-terminal states): the soft values are finite iff the Perron root
    rho(M) < 1. An independent check of both the unboundedness test and the values, the latter in scaled form
    (D M D^-1 with D = diag(e^{-V/beta}) has entries e^{(R + V(s') - V(s))/beta} <= 1, safe at any beta)."""
    mdp = deterministic_mdp(seed)
    beta = 0.7
    S = mdp.n_states - 1
    P = mdp.dense_P()
    M = np.einsum("sa,sat->st", 0.5 * np.exp(mdp.R[:S] / beta), P[:S, :, :S])
    rho = float(np.max(np.abs(np.linalg.eigvals(M))))
    if rho > 1 + 1e-9:
        with pytest.raises(UnboundedMDPError):
            soft_value_iteration(mdp, beta)
        return
    assert rho < 1 - 1e-9
    sol = soft_value_iteration(mdp, beta)
    V = sol.values
    logits = (mdp.R[:S, :, None] + V[None, None, :S] - V[:S, None, None]) / beta
    scaled = np.einsum("sat,sat->st", 0.5 * np.exp(logits), P[:S, :, :S])
    b_scaled = np.einsum("sa,sa->s", 0.5 * np.exp((mdp.R[:S] - V[:S, None]) / beta), P[:S, :, S])
    Y = np.linalg.solve(np.eye(S) - scaled, b_scaled)  # = exp((V_linear - V) / beta)
    np.testing.assert_allclose(beta * np.log(Y), 0.0, atol=sol.error_bound + 1e-12)


def test_linear_test_is_only_sufficient_with_stochastic_transitions():
    """One state: action 0 earns 1 and stays w.p. 1/2 (else ends), action 1 ends with 0; beta = 0.1. Then
    rho(M) = e^{10}/4 >> 1, yet every policy ends w.p. >= 1/2 per step and the soft value is the finite root of
    V = beta log((e^{(1 + V/2)/beta} + 1)/2) (V inside the expectation: Jensen makes the linear equation an
    upper bound only). Bisection in 50 digits gives it independently."""
    P = np.zeros((2, 2, 2))
    P[0, 0] = [0.5, 0.5]
    P[0, 1, 1] = P[1, :, 1] = 1.0
    mdp = TabularMDP(P, np.array([[1.0, 0.0], [0.0, 0.0]]), 1.0, terminal=[False, True])
    sol = soft_value_iteration(mdp, 0.1)
    with localcontext() as ctx:
        ctx.prec = 50
        b = Decimal("0.1")

        def excess(v):
            return b * (((1 + v / 2) / b).exp() + 1).ln() - b * Decimal(2).ln() - v

        lo, hi = Decimal(0), Decimal(10)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    assert abs(Decimal(sol.values[0]) - lo) <= Decimal(sol.error_bound) + (hi - lo)
    assert np.exp(10) / 4 > 1


# ----------------------------------------------------------------------------- (c) beta -> 0, from below
@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 0.9, 0.99]), st.sampled_from([0.01, 0.3, 1.0]))
def test_soft_values_approach_the_optimum_from_below(seed, gamma, beta):
    """Uniform reference: -beta log|A| / (1 - gamma) <= V_beta - V* <= 0. Upper: every policy's soft value is its
    plain value minus beta times a non-negative KL. Lower: the optimal deterministic policy pays exactly
    beta log|A| per step. The docstring before issue 9 had the direction reversed (0 <= V_beta - V*)."""
    rng = np.random.default_rng(seed)
    mdp = random_small_mdp(rng, 4, 3, gamma, 1.0, sparse=False, terminal=False)
    v_star = np.array([float(x) for x in exact_optimum(mdp)])
    sol = soft_value_iteration(mdp, beta)
    gap = sol.values - v_star
    slack = sol.error_bound + 4 * U * np.max(np.abs(v_star))
    assert np.all(gap <= slack)
    assert np.all(gap >= -beta * np.log(3) / (1 - gamma) - slack)
    assert np.all(gap < 0)  # strictly below: the reversed inequality of the old docstring fails everywhere


# ----------------------------------------------------------------------------- the error model itself
def test_transcendental_functions_meet_the_assumed_accuracy():
    """F4 of mdpalign.solve._rounding: numpy's float64 exp, expm1, log, log1p err by at most
    TRANSCENDENTAL_ULPS ulps (checked against correctly rounded 40-digit decimal values)."""
    rng = np.random.default_rng(0)
    z = np.concatenate([-rng.exponential(30, 1500), -rng.random(1500) * 1e-6, rng.uniform(-700, 0, 500)])
    pos = np.concatenate([rng.random(1500) + 1e-300, rng.exponential(1e3, 1000), rng.random(500) * 1e-8 + 0.5])
    s = -rng.random(1500) * 0.5
    cases = [(np.exp, z, lambda x: x.exp()), (np.expm1, z, lambda x: x.exp() - 1),
             (np.log, pos, lambda x: x.ln()), (np.log1p, s, lambda x: (1 + x).ln())]
    with localcontext() as ctx:
        ctx.prec = 40
        for f, xs, ref in cases:
            got = f(xs)
            for x, y in zip(xs, got):
                exact = ref(Decimal(float(x)))
                if exact == 0:
                    continue
                ulp = Decimal(float(np.spacing(abs(float(exact)))))
                assert abs(Decimal(float(y)) - exact) <= TRANSCENDENTAL_ULPS * ulp, (f.__name__, x)


@pytest.mark.parametrize("sparse", [False, True])
def test_row_sums_and_backup_bounds_against_fractions(sparse):
    """RowSums' zeta and delta are within eta of the exact row sums, and shifted_backup's X within E of
    R + gamma P W + gamma c zeta_exact (plain and normalised rows)."""
    rng = np.random.default_rng(1)
    mdp = random_small_mdp(rng, 6, 3, 0.999, 1e3, sparse=sparse, terminal=True, density=0.7, leak=True)
    rows = row_sums(mdp)
    P = mdp.dense_P()
    S, A = mdp.n_states, mdp.n_actions
    N = ~mdp.terminal
    for s in np.flatnonzero(N):
        for a in range(A):
            in_n = sum(Fraction(float(p)) for p, keep in zip(P[s, a], N) if keep) - 1
            whole = sum(Fraction(float(p)) for p in P[s, a]) - 1
            assert abs(Fraction(float(rows.zeta[s, a])) - in_n) <= Fraction(float(rows.eta[s, a]))
            assert abs(Fraction(float(rows.delta[s, a])) - whole) <= Fraction(float(rows.eta_row[s, a]))
    c = 1.234567e6
    W = np.where(N, rng.normal(size=S) * 50, 0.0)
    X, E = shifted_backup(mdp, c, W)
    g = Fraction(mdp.gamma)
    for s in np.flatnonzero(N):
        for a in range(A):
            exact = (Fraction(float(mdp.R[s, a])) + g * sum(Fraction(float(p)) * Fraction(float(w))
                                                           for p, w in zip(P[s, a], W))
                     + g * Fraction(c) * (sum(Fraction(float(p)) for p, keep in zip(P[s, a], N) if keep) - 1))
            assert abs(Fraction(float(X[s, a])) - exact) <= Fraction(float(E[s, a]))
    X, E = shifted_backup(mdp.with_gamma(1.0), 0.0, W, normalised=True)
    for s in np.flatnonzero(N):
        for a in range(A):
            row = [Fraction(float(p)) for p in P[s, a]]
            exact = Fraction(float(mdp.R[s, a])) + sum(p * Fraction(float(w)) for p, w in zip(row, W)) / sum(row)
            assert abs(Fraction(float(X[s, a])) - exact) <= Fraction(float(E[s, a]))


def test_sparse_and_dense_rows_agree():
    rng = np.random.default_rng(5)
    dense = random_small_mdp(rng, 5, 2, 0.99, 10.0, sparse=False, terminal=True, density=0.6)
    sparse = TabularMDP(sp.csr_matrix(dense.transition_matrix), dense.R, dense.gamma, terminal=dense.terminal)
    a, b = row_sums(dense), row_sums(sparse)
    np.testing.assert_array_equal(a.zeta, b.zeta)
    np.testing.assert_array_equal(a.nnz, b.nnz)
