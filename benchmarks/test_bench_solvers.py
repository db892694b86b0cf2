"""Solver benchmark: our certified solvers vs pymdptoolbox (hiive fork).

Two ways to run it::

    python -m pytest benchmarks/test_bench_solvers.py --benchmark-only      # pytest-benchmark timings
    python benchmarks/test_bench_solvers.py [--big]                          # the Markdown table

Accuracy is max_s |V - V*| with V* from our policy iteration (certified < 1e-10), cross-checked
against the HiGHS linear program where that is affordable. mdptoolbox is timed with its
defaults (epsilon = 0.01) and with a tightened epsilon chosen so that its answer is accurate
to 1e-8, for a like-for-like comparison.
"""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mdpalign.mdp import TabularMDP
from mdpalign.solve import linear_program, policy_iteration, value_iteration

GAMMA = 0.99


# ----------------------------------------------------------------------------- problems
def frozen_lake_8x8() -> TabularMDP:
    from mdpalign.envs.frozen_lake import frozen_lake

    return frozen_lake("8x8", slippery=True, gamma=GAMMA).mdp


def random_dense(S: int = 1000, A: int = 10, seed: int = 0) -> TabularMDP:
    """Every row a uniform draw on the simplex corner-weighted (P ~ U(0,1)^3, normalised)."""
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) ** 3
    P /= P.sum(axis=2, keepdims=True)
    return TabularMDP(P, rng.random((S, A)), GAMMA)


def grid_world(nrow: int, ncol: int, slip: float = 0.2, seed: int = 0) -> TabularMDP:
    """Windy grid: 4 moves, the intended one w.p. 1-slip, else one of the 4 uniformly; walls block.

    Goal (terminal, +1 on entry) in the far corner; step cost 0.01; 5% of the cells are bogs
    with an extra cost of 1. S = nrow * ncol, A = 4, 5 non-zeros per row at most.
    """
    rng = np.random.default_rng(seed)
    S, A = nrow * ncol, 4
    r, c = np.divmod(np.arange(S), ncol)
    moves = np.array([(0, -1), (1, 0), (0, 1), (-1, 0)])
    dest = np.empty((S, 4), dtype=np.int64)
    for k, (dr, dc) in enumerate(moves):
        dest[:, k] = np.clip(r + dr, 0, nrow - 1) * ncol + np.clip(c + dc, 0, ncol - 1)
    goal = S - 1
    rows, cols, vals = [], [], []
    for a in range(A):
        for k in range(4):
            p = (1 - slip) * (k == a) + slip / 4
            rows.append(np.arange(S) * A + a)
            cols.append(dest[:, k])
            vals.append(np.full(S, p))
    rows, cols, vals = map(np.concatenate, (rows, cols, vals))
    keep = (rows // A) != goal
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    rows = np.concatenate([rows, goal * A + np.arange(A)])
    cols = np.concatenate([cols, np.full(A, goal)])
    vals = np.concatenate([vals, np.ones(A)])
    P = sp.csr_matrix((vals, (rows, cols)), shape=(S * A, S))
    terminal = np.zeros(S, dtype=bool)
    terminal[goal] = True
    bog = rng.random(S) < 0.05
    R = -0.01 - 1.0 * bog[:, None] + np.asarray(P[:, goal].todense()).reshape(S, A)
    R[goal] = 0.0
    return TabularMDP(P, R, GAMMA, terminal=terminal)


PROBLEMS = {
    "frozen-lake-8x8": frozen_lake_8x8,
    "random-dense-1000x10": random_dense,
    "grid-5000x4": lambda: grid_world(50, 100),
}


# ----------------------------------------------------------------------------- mdptoolbox
def toolbox_inputs(mdp: TabularMDP):
    """P as (A, S, S) (dense array, or a list of CSR matrices for a sparse MDP), R as (S, A)."""
    S, A = mdp.n_states, mdp.n_actions
    if mdp.is_sparse:
        flat = mdp.transition_matrix
        P = [flat[np.arange(S) * A + a].tocsr() for a in range(A)]
    else:
        P = np.ascontiguousarray(mdp.P.transpose(1, 0, 2))
    return P, np.array(mdp.R)


def toolbox_pi(P, R, gamma):
    import hiive.mdptoolbox.mdp as tb

    solver = tb.PolicyIteration(P, R, gamma, max_iter=10_000, eval_type=0, skip_check=True)
    solver.run()
    return np.array(solver.V)


def toolbox_vi(P, R, gamma, epsilon=0.01):
    import hiive.mdptoolbox.mdp as tb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = tb.ValueIteration(P, R, gamma, epsilon=epsilon, max_iter=10_000_000, skip_check=True)
        solver.run()
    return np.array(solver.V)


# ----------------------------------------------------------------------------- timing helpers
def best_time(fn, repeat: int = 3, budget: float = 60.0):
    """(min wall time over up to ``repeat`` runs, last result); stops repeating past ``budget`` s."""
    times, out = [], None
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return min(times), out


def accuracy_matched_epsilon(P, R, v_star, target=1e-8):
    """Largest mdptoolbox VI epsilon (powers of 10) whose answer is within ``target`` of V*."""
    for eps in [10.0**-k for k in range(2, 16)]:
        V = toolbox_vi(P, R, GAMMA, eps)
        if np.max(np.abs(V - v_star)) <= target:
            return eps
    return None


def table(problems=PROBLEMS, big: bool = False) -> str:
    lines = ["| problem | solver | time (s) | max abs error vs V* | speed-up of ours |",
             "|---|---|---:|---:|---:|"]
    for name, make in problems.items():
        mdp = make()
        star = policy_iteration(mdp, tol=1e-12)
        v_star = star.values
        if mdp.n_states * mdp.n_actions <= 20_000:
            lp = linear_program(mdp)
            assert np.max(np.abs(lp.values - v_star)) <= 1e-9, "LP and PI disagree"
        P, R = toolbox_inputs(mdp)
        t_pi, s_pi = best_time(lambda mdp=mdp: policy_iteration(mdp))
        t_vi, s_vi = best_time(lambda mdp=mdp: value_iteration(mdp))
        t_tpi, v_tpi = best_time(lambda P=P, R=R: toolbox_pi(P, R, GAMMA), repeat=2)
        t_tvi, v_tvi = best_time(lambda P=P, R=R: toolbox_vi(P, R, GAMMA), repeat=2)
        eps = accuracy_matched_epsilon(P, R, v_star)
        rows = [
            ("ours: policy_iteration", t_pi, np.max(np.abs(s_pi.values - v_star)), f"bound {s_pi.error_bound:.1e}"),
            ("ours: value_iteration", t_vi, np.max(np.abs(s_vi.values - v_star)), f"bound {s_vi.error_bound:.1e}"),
            ("mdptoolbox PolicyIteration", t_tpi, np.max(np.abs(v_tpi - v_star)), f"{t_tpi / t_pi:.1f}x (vs our PI)"),
            ("mdptoolbox ValueIteration eps=0.01", t_tvi, np.max(np.abs(v_tvi - v_star)),
             f"{t_tvi / t_vi:.1f}x (vs our VI)"),
        ]
        if eps is not None:
            t_tvi2, v_tvi2 = best_time(lambda P=P, R=R, eps=eps: toolbox_vi(P, R, GAMMA, eps), repeat=2)
            rows.append((f"mdptoolbox ValueIteration eps={eps:g} (accuracy-matched)", t_tvi2,
                         np.max(np.abs(v_tvi2 - v_star)),
                         f"{t_tvi2 / t_vi:.1f}x (vs our VI), {t_tvi2 / t_pi:.1f}x (vs our PI)"))
        else:
            rows.append(("mdptoolbox ValueIteration: no epsilon reaches 1e-8", float("nan"), float("nan"), "-"))
        for solver, t, err, note in rows:
            lines.append(f"| {name} (S={mdp.n_states}, A={mdp.n_actions}) | {solver} | {t:.4f} | {err:.1e} | {note} |")
    if big:
        for nrow, ncol in ((316, 316),):
            mdp = grid_world(nrow, ncol)
            for label, fn in (
                ("ours: policy_iteration (SuperLU)", lambda mdp=mdp: policy_iteration(mdp, linear_solver="direct")),
                ("ours: policy_iteration (GMRES+ILU)", lambda mdp=mdp: policy_iteration(mdp, linear_solver="gmres")),
                ("ours: value_iteration", lambda mdp=mdp: value_iteration(mdp)),
            ):
                t, s = best_time(fn, repeat=1)
                lines.append(f"| grid-{mdp.n_states}x4 (S={mdp.n_states}, A=4) | {label} | {t:.3f} | "
                             f"bound {s.error_bound:.1e} | {s.iterations} iterations |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def problem(request):
    mdp = PROBLEMS[request.param]()
    return request.param, mdp, policy_iteration(mdp, tol=1e-12).values


def test_ours_policy_iteration(benchmark, problem):
    _, mdp, v_star = problem
    sol = benchmark.pedantic(policy_iteration, args=(mdp,), rounds=3, iterations=1)
    assert np.max(np.abs(sol.values - v_star)) <= 1e-8


def test_ours_value_iteration(benchmark, problem):
    _, mdp, v_star = problem
    sol = benchmark.pedantic(value_iteration, args=(mdp,), rounds=3, iterations=1)
    assert np.max(np.abs(sol.values - v_star)) <= 1e-8


def test_mdptoolbox_policy_iteration(benchmark, problem):
    _, mdp, v_star = problem
    P, R = toolbox_inputs(mdp)
    V = benchmark.pedantic(toolbox_pi, args=(P, R, GAMMA), rounds=2, iterations=1)
    benchmark.extra_info["max_abs_error"] = float(np.max(np.abs(V - v_star)))


def test_mdptoolbox_value_iteration_default(benchmark, problem):
    _, mdp, v_star = problem
    P, R = toolbox_inputs(mdp)
    V = benchmark.pedantic(toolbox_vi, args=(P, R, GAMMA), rounds=2, iterations=1)
    benchmark.extra_info["max_abs_error"] = float(np.max(np.abs(V - v_star)))


def test_ours_policy_iteration_100k(benchmark):
    mdp = grid_world(316, 316)
    sol = benchmark.pedantic(policy_iteration, args=(mdp,), rounds=1, iterations=1)
    assert sol.error_bound <= 1e-10


if __name__ == "__main__":
    print(table(big="--big" in sys.argv))
