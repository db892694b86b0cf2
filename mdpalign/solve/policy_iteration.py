"""Policy iteration with exact policy evaluation and a certified error bound."""
from __future__ import annotations

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._core import (
    EPS, ConvergenceError, Solution, check_max_iter, check_mdp, check_tol, evaluate_deterministic,
    check_deterministic_policy, is_proper, macqueen_bounds, proper_greedy_policy, q_values,
    ssp_certificate, SolverError, timer,
)

__all__ = ["policy_iteration"]


def policy_iteration(mdp: TabularMDP, tol: float = 1e-10, max_iter: int = 10_000,
                     linear_solver: str = "auto", initial_policy: np.ndarray | None = None) -> Solution:
    """Howard's policy iteration: evaluate exactly, improve greedily, until the policy is stable.

    Evaluation solves ``(I - gamma P_pi) V = r_pi`` on the non-terminal states: LAPACK below 1500
    states, SuperLU for sparse problems up to 3e5 states, GMRES with an ILU preconditioner
    (warm-started from the previous values) above (``linear_solver`` forces ``"direct"`` or
    ``"gmres"``). Improvement switches the action in ``s`` only when it gains more than
    ``max(0.01 tol (1-gamma), 64 eps |V|)`` — so the iteration cannot cycle on ties or rounding.

    Certificate, ``gamma < 1``: MacQueen's bounds from one backup of the final ``V``
    (``T V + c min(d,0) <= V* <= T V + c max(d,0)``, ``d = T V - V``, ``c = gamma/(1-gamma)``);
    ``error_bound = max(max(hi - V), max(V - lo))``, which also covers an inexact (Krylov)
    evaluation. The returned values are those of the returned policy.

    Certificate, ``gamma = 1`` (stochastic shortest path): start from a proper policy (built
    backwards from the terminal states over the transition graph, preferring the best immediate
    reward) and keep every iterate proper (see ``mdpalign.solve._core.ssp_certificate``); the
    values are ``V^pi`` (a lower bound on the proper optimum ``V*``) and the bound is
    ``max(U - V)`` for a floating-point super-solution ``U >= V*``. A policy improvement that
    closes a positive-reward loop raises :class:`~mdpalign.solve.UnboundedMDPError`.

    When the policy is stable the bound is whatever the arithmetic allows; if that is above
    ``tol`` (values near 1/(1-gamma) * 1e6 with gamma very close to 1) it is still returned,
    honestly, rather than raising. ``max_iter`` policy changes without stabilising raise
    :class:`~mdpalign.solve.ConvergenceError`.
    """
    start = timer()
    check_mdp(mdp)
    tol = check_tol(tol)
    max_iter = check_max_iter(max_iter)
    if linear_solver not in ("auto", "direct", "gmres"):
        raise SolverError(f"linear_solver must be 'auto', 'direct' or 'gmres'; got {linear_solver!r}")
    S = mdp.n_states
    rows = np.arange(S)
    R0 = np.where(mdp.terminal[:, None], 0.0, mdp.R)

    if initial_policy is not None:
        policy = check_deterministic_policy(mdp, initial_policy).copy()
    elif mdp.gamma == 1.0:
        policy, _ = proper_greedy_policy(mdp, R0, tie_tol=0.0)
    else:
        policy = R0.argmax(axis=1).astype(np.int64)

    if mdp.gamma == 1.0:
        if not is_proper(mdp, policy):
            raise SolverError("at gamma = 1 policy iteration needs a proper initial_policy "
                              "(one that reaches a terminal state with probability 1 from every state)")
        V, q, policy, bound, iters = ssp_certificate(mdp, policy, max_iter, linear_solver)
        return Solution(V, q, policy, bound, iters, "policy_iteration", timer() - start)

    V = None
    for it in range(1, max_iter + 1):
        V = evaluate_deterministic(mdp, policy, linear_solver, x0=V)
        q = q_values(mdp, V)
        TV = q.max(axis=1)
        best = q.argmax(axis=1)
        gain = q[rows, best] - q[rows, policy]
        switch_tol = max(0.01 * tol * (1.0 - mdp.gamma), 64 * EPS * max(1.0, float(np.max(np.abs(V)))))
        switch = (gain > switch_tol) & ~mdp.terminal
        if not switch.any():
            lo, hi = macqueen_bounds(mdp, V, TV)
            bound = float(max(np.max(np.abs(hi - V)), np.max(np.abs(V - lo))))
            return Solution(V, q, policy, bound, it, "policy_iteration", timer() - start)
        policy = policy.copy()
        policy[switch] = best[switch]
    raise ConvergenceError(f"policy iteration did not stabilise within {max_iter} iterations")
