"""What the solvers return and raise: :class:`Solution`, :class:`SoftSolution`, the solver errors and the
certificate-floor warning."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mdpalign.errors import MdpalignError


class SolverError(MdpalignError, ValueError):
    """Bad solver input (tolerance, temperature, policy shape, ...); the message says which."""


class UnboundedMDPError(SolverError):
    """At ``gamma = 1`` some policy cycles forever among non-terminal states with positive mean reward (for the
    KL-regularised values: positive mean reward minus beta times the KL penalty)."""


class ConvergenceError(MdpalignError, RuntimeError):
    """The solver hit ``max_iter`` before its certified bound reached ``tol``."""


class CertificateFloorWarning(UserWarning):
    """The returned ``error_bound`` is above the requested ``tol`` because float64 cannot certify ``tol`` here.

    The message names the bound that was reached and the rounding floor (module docstring of
    ``mdpalign.solve.certificates``); the solution is still returned, with its honest bound.
    """


@dataclass(frozen=True)
class Solution:
    """Result of an exact solver.

    Infinite horizon: ``values`` (S,), ``q_values`` (S, A), ``policy`` (S,) int64 greedy and
    deterministic. Finite horizon H (:func:`~mdpalign.solve.finite_horizon`): ``values`` (H+1, S)
    with ``values[t]`` the optimal value at time ``t``, i.e. with ``H - t`` steps left
    (``values[H] = 0``); ``q_values`` (H, S, A); ``policy`` (H, S).

    ``error_bound`` is a certified bound on ``max_s |values[s] - V*(s)|``, rounding included (see the module
    docstring of ``mdpalign.solve.certificates``; at ``gamma = 1`` ``V*`` is the optimum over proper policies).
    """

    values: np.ndarray
    q_values: np.ndarray
    policy: np.ndarray
    error_bound: float
    iterations: int
    method: str
    elapsed: float
    horizon: int | None = None


@dataclass(frozen=True)
class SoftSolution(Solution):
    """Solution of the KL-regularised problem; ``policy`` is the argmax of ``policy_probs``.

    ``policy_probs`` (S, A) = ``pi_ref * exp((Q - V) / beta)`` normalised per state (computed as
    ``softmax(log pi_ref + Q / beta)`` so that rows sum to 1 exactly); ``log_policy`` its log
    (``-inf`` where the reference is 0).
    """

    policy_probs: np.ndarray = field(default=None)
    log_policy: np.ndarray = field(default=None)
    beta: float = float("nan")
