"""Checks of the solvers' arguments (tolerance, iteration budget, MDP, horizon, policies); :class:`SolverError`
naming the argument."""
from __future__ import annotations

import numpy as np

from mdpalign.checks import as_integer, check_positive
from mdpalign.mdp import TabularMDP
from mdpalign.solve.results import SolverError


def check_tol(tol: float) -> float:
    return check_positive(tol, "tol", error=SolverError)


def check_max_iter(max_iter: int) -> int:
    number = as_integer(max_iter)
    if number is None or number < 1:
        raise SolverError(f"max_iter must be a positive integer; got {max_iter!r}")
    return number


def check_mdp(mdp) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise SolverError(f"expected a mdpalign.TabularMDP; got {type(mdp).__name__}")
    return mdp


def check_horizon(horizon) -> int:
    number = as_integer(horizon)
    if number is None or number < 0:
        raise SolverError(f"horizon must be a non-negative integer; got {horizon!r}")
    return number


def check_deterministic_policy(mdp: TabularMDP, policy) -> np.ndarray:
    policy = np.asarray(policy)
    S, A = mdp.n_states, mdp.n_actions
    if policy.shape != (S,) or not np.issubdtype(policy.dtype, np.integer):
        raise SolverError(f"a deterministic policy must be an integer array of shape ({S},); "
                          f"got shape {policy.shape}, dtype {policy.dtype}")
    if policy.min() < 0 or policy.max() >= A:
        bad = np.flatnonzero((policy < 0) | (policy >= A))
        raise SolverError(f"policy has actions outside [0, {A}) at states {bad[:5].tolist()}")
    return policy.astype(np.int64)


def check_policy_probs(mdp: TabularMDP, policy) -> np.ndarray:
    """(S, A) probabilities of a deterministic (S,) or stochastic (S, A) policy; SolverError if invalid."""
    try:
        return mdp.policy_as_matrix(policy)
    except ValueError as exc:
        raise SolverError(str(exc)) from exc
