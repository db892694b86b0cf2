"""Value iteration stopped on a certified bound (MacQueen, rounding included), not on "the change is small"."""
from __future__ import annotations

import time

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import EPS
from mdpalign.solve.backups import hard_reduce, q_values
from mdpalign.solve.certificates import iterate_discounted, ssp_certificate
from mdpalign.solve.checks import check_max_iter, check_mdp, check_tol
from mdpalign.solve.properness import proper_greedy_policy
from mdpalign.solve.results import Solution, SolverError

__all__ = ["value_iteration"]


def value_iteration(mdp: TabularMDP, tol: float = 1e-10, max_iter: int = 100_000,
                    initial_values: np.ndarray | None = None) -> Solution:
    """Bellman iterations ``V_{k+1} = T V_k`` (Jacobi sweeps) with a certified stop.

    ``gamma < 1``: after each sweep, with ``d = V_{k+1} - V_k`` on the non-terminal states and
    ``c = gamma / (1 - gamma)``, MacQueen's bounds give::

        V_{k+1} + c min(min d, 0)  <=  V*  <=  V_{k+1} + c max(max d, 0)

    (clipped at 0 because mass entering a terminal state does not carry constants). We return the midpoint of
    the bounds once its certified half-width is ``<= tol``; the certificate
    (:func:`~mdpalign.solve.certificates.discounted_certificate`) recomputes one backup with a rigorous bound on its
    rounding and on the rows' defect from summing to 1, so ``error_bound`` holds in exact arithmetic. The
    span of ``d`` contracts at least as fast as gamma, often much faster, so this stops long before
    ``||d|| < tol (1-gamma)``; and unlike mdptoolbox's "change < epsilon" rule it is a certificate. Iterates are
    kept relative to their midrange (``V = c + W``), so rounding scales with ``|W|`` rather than ``|V|``.
    ``policy`` is greedy with respect to ``Q`` of the returned values (ties: lowest action index).

    When float64 cannot certify ``tol`` (``tol`` below the floor ``~ (1 + c) E + u |V|`` of the module docstring
    of ``mdpalign.solve.certificates``, or the residual's span stalls at its rounding noise, which in slowly mixing
    chains can be ``c`` times that), iteration stops there instead of running to ``max_iter``: the honest
    bound is returned with a :class:`~mdpalign.solve.CertificateFloorWarning`.

    ``gamma = 1``: there is no contraction and no MacQueen bound. We iterate until the sup-norm
    change is below ``tol`` (a heuristic stop only), extract the greedy policy with ties broken
    toward termination (so it is proper), and certify it as policy iteration does: ``V^pi`` from
    a linear solve (lower bound), a verified super-solution (upper bound), with policy
    iteration steps polishing ``pi`` if the heuristic stop left it sub-optimal. ``iterations``
    counts sweeps plus polishing steps. The returned values are ``V^pi``.

    ``max_iter`` sweeps without reaching ``tol`` (and without stalling at the floor) raise
    :class:`~mdpalign.solve.ConvergenceError` at ``gamma < 1``; at ``gamma = 1`` the certificate is attempted anyway.
    """
    start = time.perf_counter()
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
        for k in range(1, max_iter + 1):  # noqa: B007 - k, the sweeps taken, is read after the loop
            q = q_values(mdp, V)
            TV = q.max(axis=1)
            change = float(np.max(np.abs(TV - V)))
            V = TV
            if change <= tol:
                break
        q = q_values(mdp, V)
        tie_tol = max(10 * tol, 1e3 * EPS * max(1.0, float(np.max(np.abs(V)))))
        policy, _ = proper_greedy_policy(mdp, q, tie_tol)
        V, q, policy, bound, polish = ssp_certificate(mdp, policy, tol=tol, method="value_iteration")
        return Solution(V, q, policy, bound, k + polish, "value_iteration", time.perf_counter() - start)

    cert, k = iterate_discounted(mdp, hard_reduce, tol, max_iter, V, "value_iteration")
    q = q_values(mdp, cert.values)
    return Solution(cert.values, q, q.argmax(axis=1).astype(np.int64), cert.bound, k, "value_iteration",
                    time.perf_counter() - start)
