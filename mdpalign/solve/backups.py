"""Bellman backups: ``Q = R + gamma P V``, the greedy backup, MacQueen's bounds and the span limits, and the hard
``max_a`` reduction with its rounding bound."""
from __future__ import annotations

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import (
    SAFETY,
    U,
)
from mdpalign.solve.results import SolverError


def q_values(mdp: TabularMDP, values: np.ndarray) -> np.ndarray:
    """``Q = R + gamma P V`` with terminal rows 0."""
    return mdp.q_from_values(values)


def greedy_backup(mdp: TabularMDP, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T V, Q)``."""
    q = q_values(mdp, values)
    return q.max(axis=1), q


def macqueen_bounds(mdp: TabularMDP, values: np.ndarray, backed_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on ``V*`` from one backup ``backed_up = T values`` (gamma < 1), in exact arithmetic.

    ``T V + C min(min d, 0) <= V* <= T V + C max(max d, 0)`` with ``d = T V - V`` over the non-terminal states
    and ``C = gamma / (1 - gamma)`` (clipping at 0 dropped without terminal states): equation (1) of the module
    docstring for rows summing to exactly 1, taking ``backed_up`` as the exact backup. It does not account for
    rounding; the solvers use :func:`discounted_certificate`, which does.
    """
    gamma = mdp.gamma
    if gamma >= 1.0:
        raise SolverError("MacQueen bounds need gamma < 1")
    nonterm = ~mdp.terminal
    d = (backed_up - values)[nonterm]
    c = gamma / (1.0 - gamma)
    low, high = span_limits(mdp, d)
    lo = backed_up + c * low
    hi = backed_up + c * high
    lo[mdp.terminal] = 0.0
    hi[mdp.terminal] = 0.0
    return lo, hi


def span_limits(mdp: TabularMDP, d: np.ndarray) -> tuple[float, float]:
    """``(min d, max d)``, clipped to include 0 when the MDP has terminal states.

    Without terminal states ``T(V + c) = T V + gamma c`` (up to the row-sum defect) and the unclipped span gives
    MacQueen's original (much tighter, for fast-mixing chains) bounds; mass that enters a terminal state drops
    the constant, which is the same as counting ``d = 0`` there.
    """
    low, high = float(np.min(d, initial=0.0 if d.size == 0 else np.inf)), float(np.max(d, initial=-np.inf))
    if d.size == 0:
        return 0.0, 0.0
    if mdp.terminal.any():
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high



def hard_reduce(X: np.ndarray, E_X: np.ndarray | None = None):
    """``max_a`` of a (shifted) backup; with ``E_X`` also its rounding bound.

    The exact maximum lies in ``[max(X - E), max(X + E)]``, so the computed ``max X`` errs by at most the larger
    distance to those ends, ``max_a (X_a - max X + E_a)`` and ``max X - max_a (X_a - E_a)``: an action whose error
    is large but that cannot be the maximiser does not count. The differences ``X_a - max X`` are exact for the
    near-maximal actions (Sterbenz) and the remaining roundings are within ``4 u max E`` of the actions that
    matter (those with ``X_a - max X + E_a >= 0``, i.e. ``|X_a - max X| <= E_a``).
    """
    TX = X.max(axis=1)
    if E_X is None:
        return TX
    gap = X - TX[:, None]
    up = (gap + E_X).max(axis=1)
    down = -(gap - E_X).max(axis=1)
    return TX, SAFETY * (np.maximum(up, down) * (1 + 4 * U) + 4 * U * E_X.max(axis=1))
