"""Exact tabular solvers with certified error bounds.

Every solver takes a :class:`~mdpalign.mdp.TabularMDP` and returns a :class:`Solution`
(values, q_values, greedy policy, a certified ``error_bound`` on ``max |values - V*|`` that includes
floating-point rounding, iterations, method, elapsed seconds). When float64 cannot certify the requested
``tol``, the honest, larger bound is returned with a :class:`CertificateFloorWarning`. ``gamma = 1`` is a stochastic
shortest-path problem: the
optimum is taken over proper policies and every returned greedy policy is proper.
"""
from __future__ import annotations

from mdpalign.solve.backups import macqueen_bounds
from mdpalign.solve.evaluate import evaluate, occupancy, state_success_probabilities
from mdpalign.solve.horizon import finite_horizon
from mdpalign.solve.linear_program import linear_program
from mdpalign.solve.policy_iteration import policy_iteration
from mdpalign.solve.properness import is_proper, proper_greedy_policy
from mdpalign.solve.results import (
    CertificateFloorWarning,
    ConvergenceError,
    SoftSolution,
    Solution,
    SolverError,
    UnboundedMDPError,
)
from mdpalign.solve.soft import soft_loop_gains, soft_value_iteration
from mdpalign.solve.value_iteration import value_iteration

__all__ = [
    "Solution", "SoftSolution", "SolverError", "UnboundedMDPError", "ConvergenceError", "CertificateFloorWarning",
    "policy_iteration", "value_iteration", "linear_program", "soft_value_iteration", "finite_horizon",
    "evaluate", "occupancy", "state_success_probabilities", "is_proper", "proper_greedy_policy", "macqueen_bounds",
    "soft_loop_gains",
    "solve", "METHODS",
]

#: Names accepted by :func:`solve`.
METHODS = {
    "pi": policy_iteration,
    "vi": value_iteration,
    "lp": linear_program,
    "soft": soft_value_iteration,
}


def solve(mdp, method: str = "pi", **kwargs) -> Solution:
    """Dispatch to a solver: ``"pi"`` policy iteration, ``"vi"`` value iteration, ``"lp"`` linear
    program, ``"soft"`` soft value iteration (needs ``beta=``); ``horizon=H`` (with ``"pi"``, ``"vi"``
    or ``"lp"``) runs :func:`finite_horizon` instead. Keyword arguments go to the solver."""
    if method not in METHODS:
        raise SolverError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    horizon = kwargs.pop("horizon", None)
    if horizon is not None:
        if method == "soft":
            raise SolverError("a finite horizon is solved by backward induction; the soft solver has no horizon")
        if kwargs:
            raise SolverError(f"finite_horizon takes no options besides horizon; got {sorted(kwargs)}")
        return finite_horizon(mdp, horizon)
    if method == "soft" and "beta" not in kwargs:
        raise SolverError("method 'soft' needs beta= (the KL temperature)")
    return METHODS[method](mdp, **kwargs)
