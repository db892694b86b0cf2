"""Policy iteration with exact policy evaluation and a certified error bound."""
from __future__ import annotations

import time

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import EPS
from mdpalign.solve.backups import hard_reduce, q_values
from mdpalign.solve.certificates import discounted_certificate, ssp_certificate, warn_floor
from mdpalign.solve.checks import check_deterministic_policy, check_max_iter, check_mdp, check_tol
from mdpalign.solve.linear import evaluate_deterministic, refine_evaluation
from mdpalign.solve.properness import is_proper, proper_greedy_policy
from mdpalign.solve.results import ConvergenceError, Solution, SolverError

__all__ = ["policy_iteration"]


def policy_iteration(mdp: TabularMDP, tol: float = 1e-10, max_iter: int = 10_000,
                     linear_solver: str = "auto", initial_policy: np.ndarray | None = None) -> Solution:
    """Howard's policy iteration: evaluate exactly, improve greedily, until the policy is stable.

    Evaluation solves ``(I - gamma P_pi) V = r_pi`` on the non-terminal states: LAPACK below 1500
    states, SuperLU for sparse problems up to 3e5 states, GMRES with an ILU preconditioner
    (warm-started from the previous values) above (``linear_solver`` forces ``"direct"`` or
    ``"gmres"``). Improvement switches the action in ``s`` only when it gains more than
    ``max(0.01 tol (1-gamma), 64 eps |V|)`` — so the iteration cannot cycle on ties or rounding.

    Certificate, ``gamma < 1``: once the policy is stable its evaluation is refined (two steps of iterative
    refinement with the residual formed relative to the values' midrange, ``V = c + W``, so that it is rounded
    at the scale of ``|W|``, not ``|V|``) and certified by MacQueen's bounds from one more backup, with a
    rigorous bound ``E`` on that backup's rounding (:func:`~mdpalign.solve.certificates.discounted_certificate`); an
    action that this backup proves better by more than ``E_best + E_current`` (and ``0.01 tol (1-gamma)``) is
    switched and iteration resumes. The returned values are those of the returned policy (``c + W``, rounded once
    to float64).

    Certificate, ``gamma = 1`` (stochastic shortest path): start from a proper policy (built
    backwards from the terminal states over the transition graph, preferring the best immediate
    reward) and keep every iterate proper (see ``mdpalign.solve.certificates.ssp_certificate``); the
    values are ``V^pi`` (a lower bound on the proper optimum ``V*``, up to the verified evaluation error) and the
    bound also covers ``U - V`` for a verified super-solution ``U >= V*``. A policy improvement that closes a
    positive-reward loop raises :class:`~mdpalign.solve.UnboundedMDPError`.

    When the policy is stable the bound is whatever float64 allows; if that is above ``tol`` (``tol`` below the
    floor ``~ (1 + gamma/(1-gamma)) E + u |V|`` of the module docstring of ``mdpalign.solve.certificates``) it is still
    returned, honestly, with a :class:`~mdpalign.solve.CertificateFloorWarning`. ``max_iter`` policy changes
    without stabilising raise :class:`~mdpalign.solve.ConvergenceError`.
    """
    start = time.perf_counter()
    check_mdp(mdp)
    tol = check_tol(tol)
    max_iter = check_max_iter(max_iter)
    if linear_solver not in ("auto", "direct", "gmres"):
        raise SolverError(f"linear_solver must be 'auto', 'direct' or 'gmres'; got {linear_solver!r}")
    S = mdp.n_states
    rows = np.arange(S)
    nonterm = ~mdp.terminal
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
        V, q, policy, bound, iters = ssp_certificate(mdp, policy, max_iter, linear_solver, tol=tol)
        return Solution(V, q, policy, bound, iters, "policy_iteration", time.perf_counter() - start)

    V = None
    for it in range(1, max_iter + 1):
        V, solver = evaluate_deterministic(mdp, policy, linear_solver, x0=V, return_solver=True)
        q = q_values(mdp, V)
        best = q.argmax(axis=1)
        gain = q[rows, best] - q[rows, policy]
        switch_tol = max(0.01 * tol * (1.0 - mdp.gamma), 64 * EPS * max(1.0, float(np.max(np.abs(V)))))
        switch = (gain > switch_tol) & nonterm
        if not switch.any():
            c, W = refine_evaluation(mdp, policy, V, solver, shift=True)
            cert = discounted_certificate(mdp, c, W, hard_reduce, midpoint=False)
            X, E = cert.X, cert.E_X  # Q = gamma c + X, each entry within E of the exact backup of c + W
            best = X.argmax(axis=1)
            proven = X[rows, best] - X[rows, policy] - E[rows, best] - E[rows, policy]
            switch = (proven > 0.01 * tol * (1.0 - mdp.gamma)) & nonterm
            if not switch.any():
                if cert.bound > tol:
                    warn_floor("policy_iteration", cert.bound, tol, cert.floor, cert.values, mdp.gamma)
                # Q of the returned values, from the certificate's backup of c + W (no further mat-vec)
                q = np.where(nonterm[:, None], mdp.gamma * c + X, 0.0)
                return Solution(cert.values, q, policy, cert.bound, it, "policy_iteration", time.perf_counter() - start)
            V = cert.values
        policy = policy.copy()
        policy[switch] = best[switch]
    raise ConvergenceError(f"policy iteration did not stabilise within {max_iter} iterations")
