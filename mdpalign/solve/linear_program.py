"""The primal linear program of an MDP, solved by HiGHS: a third, independent route to V*."""
from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import EPS
from mdpalign.solve.backups import q_values
from mdpalign.solve.certificates import ssp_certificate
from mdpalign.solve.checks import check_mdp, check_tol
from mdpalign.solve.policy_iteration import policy_iteration
from mdpalign.solve.properness import proper_greedy_policy
from mdpalign.solve.results import Solution, UnboundedMDPError

__all__ = ["linear_program"]


def linear_program(mdp: TabularMDP, tol: float = 1e-10) -> Solution:
    """``min_V  sum_s mu_s V_s  s.t.  V_s >= R(s,a) + gamma sum_s' P(s'|s,a) V_s'`` for all (s, a).

    Variables are the non-terminal values (terminal values are 0); ``mu`` is uniform (any
    strictly positive weights give the same minimiser: the least super-solution of ``T``, which
    is ``V*`` for gamma < 1 and the proper optimum at gamma = 1). The constraint matrix is built
    sparse, ``(E - gamma P)`` restricted to the non-terminal states, and solved by
    ``scipy.optimize.linprog(method="highs")`` with feasibility tolerances 1e-10.

    HiGHS values are only as good as its tolerances, so the result is turned into a certified one:
    the greedy policy of the LP values (ties toward termination at gamma = 1) is handed to
    :func:`~mdpalign.solve.policy_iteration`, which evaluates it exactly, refines and certifies it (MacQueen
    bounds with rounding for gamma < 1; verified lower bound and super-solution upper bound at gamma = 1), and
    polishes it if it is not optimal (a degenerate LP). ``iterations`` counts the LP's simplex/IPM iterations
    plus those policy-iteration steps (1 when the LP's policy is optimal). A bound above ``tol`` (float64's
    floor, see :func:`~mdpalign.solve.policy_iteration`) comes with a
    :class:`~mdpalign.solve.CertificateFloorWarning`.
    An infeasible LP at gamma = 1 means no super-solution exists: :class:`UnboundedMDPError`.
    """
    start = time.perf_counter()
    check_mdp(mdp)
    tol = check_tol(tol)
    S, A = mdp.n_states, mdp.n_actions
    nonterm = np.flatnonzero(~mdp.terminal)
    n = nonterm.size
    col_of = np.full(S, -1)
    col_of[nonterm] = np.arange(n)

    flat = sp.csr_matrix(mdp.transition_matrix)
    rows = (nonterm[:, None] * A + np.arange(A)[None, :]).ravel()
    P_sub = flat[rows][:, nonterm]
    E = sp.csr_matrix((np.ones(rows.size), (np.arange(rows.size), np.repeat(np.arange(n), A))),
                      shape=(rows.size, n))
    A_ub = -(E - mdp.gamma * P_sub)
    b_ub = -mdp.R[nonterm].ravel()
    res = linprog(np.full(n, 1.0 / n), A_ub=A_ub.tocsc(), b_ub=b_ub, bounds=(None, None), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status == 2:
        raise UnboundedMDPError("the MDP linear program is infeasible: no V satisfies V >= T V, so some policy "
                                "collects positive reward forever (gamma = 1); the values are unbounded")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the MDP linear program: {res.message}")
    lp_iters = int(getattr(res, "nit", 0) or 0)
    V_lp = np.zeros(S)
    V_lp[nonterm] = res.x
    q = q_values(mdp, V_lp)

    if mdp.gamma == 1.0:
        tie_tol = max(1e-7, 1e3 * EPS * max(1.0, float(np.max(np.abs(V_lp)))))
        policy, _ = proper_greedy_policy(mdp, q, tie_tol)
        V, q, policy, bound, polish = ssp_certificate(mdp, policy, tol=tol, method="linear_program")
        return Solution(V, q, policy, bound, lp_iters + polish, "linear_program", time.perf_counter() - start)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = policy_iteration(mdp, tol=tol, initial_policy=q.argmax(axis=1).astype(np.int64))
    for w in caught:  # re-emitted under this solver's name
        message = str(w.message).replace("policy_iteration:", "linear_program (certified by policy iteration):", 1)
        warnings.warn(w.category(message), stacklevel=2)
    return Solution(sol.values, sol.q_values, sol.policy, sol.error_bound, lp_iters + sol.iterations,
                    "linear_program", time.perf_counter() - start)
