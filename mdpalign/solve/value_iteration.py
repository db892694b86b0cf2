"""Value iteration stopped on a certified bound (MacQueen), not on "the change is small"."""
from __future__ import annotations

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._core import (
    macqueen_midpoint,
    EPS, ConvergenceError, Solution, SolverError, check_max_iter, check_mdp, check_tol,
    proper_greedy_policy, q_values, ssp_certificate, timer,
)

__all__ = ["value_iteration"]


def value_iteration(mdp: TabularMDP, tol: float = 1e-10, max_iter: int = 100_000,
                    initial_values: np.ndarray | None = None) -> Solution:
    """Bellman iterations ``V_{k+1} = T V_k`` (Jacobi sweeps) with a certified stop.

    ``gamma < 1``: after each sweep, with ``d = V_{k+1} - V_k`` on the non-terminal states and
    ``c = gamma / (1 - gamma)``, MacQueen's bounds give::

        V_{k+1} + c min(min d, 0)  <=  V*  <=  V_{k+1} + c max(max d, 0)

    (clipped at 0 because mass entering a terminal state does not carry constants). We stop when
    half the width ``c (max(max d,0) - min(min d,0)) / 2 <= tol`` and return the midpoint of the
    bounds and that half-width as ``error_bound``. The span seminorm of ``d`` contracts at least
    as fast as ``gamma``, often much faster, so this stops long before ``||d|| < tol (1-gamma)``;
    and unlike mdptoolbox's "change < epsilon" rule it is a certificate. ``policy`` is greedy
    with respect to ``Q`` of the returned values (ties: lowest action index).

    ``gamma = 1``: there is no contraction and no MacQueen bound. We iterate until the sup-norm
    change is below ``tol`` (a heuristic stop only), extract the greedy policy with ties broken
    toward termination (so it is proper), and certify it as policy iteration does: ``V^pi`` from
    a linear solve (lower bound), a floating-point super-solution (upper bound), with policy
    iteration steps polishing ``pi`` if the heuristic stop left it sub-optimal. ``iterations``
    counts sweeps plus polishing steps. The returned values are ``V^pi``.

    ``max_iter`` sweeps without reaching ``tol`` raise :class:`~mdpalign.solve.ConvergenceError`
    at ``gamma < 1``; at ``gamma = 1`` the certificate is attempted anyway.
    """
    start = timer()
    check_mdp(mdp)
    tol = check_tol(tol)
    max_iter = check_max_iter(max_iter)
    S = mdp.n_states
    gamma = mdp.gamma
    if initial_values is None:
        V = np.zeros(S)
    else:
        V = np.array(initial_values, dtype=np.float64)
        if V.shape != (S,) or not np.all(np.isfinite(V)):
            raise SolverError(f"initial_values must be a finite array of shape ({S},); got shape {V.shape}")
        V[mdp.terminal] = 0.0

    if gamma == 1.0:
        for k in range(1, max_iter + 1):
            q = q_values(mdp, V)
            TV = q.max(axis=1)
            change = float(np.max(np.abs(TV - V)))
            V = TV
            if change <= tol:
                break
        q = q_values(mdp, V)
        tie_tol = max(10 * tol, 1e3 * EPS * max(1.0, float(np.max(np.abs(V)))))
        policy, _ = proper_greedy_policy(mdp, q, tie_tol)
        V, q, policy, bound, polish = ssp_certificate(mdp, policy)
        return Solution(V, q, policy, bound, k + polish, "value_iteration", timer() - start)

    for k in range(1, max_iter + 1):
        TV = q_values(mdp, V).max(axis=1)
        midpoint, half_width = macqueen_midpoint(mdp, V, TV)
        V = TV
        if half_width <= tol:
            V = midpoint
            q = q_values(mdp, V)
            return Solution(V, q, q.argmax(axis=1).astype(np.int64), half_width, k,
                            "value_iteration", timer() - start)
    raise ConvergenceError(
        f"value iteration reached max_iter={max_iter} with certified error {half_width:.3g} > tol={tol:g}; "
        "raise max_iter or tol, or use policy_iteration"
    )
