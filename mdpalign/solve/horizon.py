"""Finite-horizon backward induction (time-limited problems such as gymnasium's Frozen Lake)."""
from __future__ import annotations

import time

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import U, row_sums, shifted_backup
from mdpalign.solve.checks import check_horizon, check_mdp
from mdpalign.solve.results import Solution

__all__ = ["finite_horizon"]


def finite_horizon(mdp: TabularMDP, horizon: int) -> Solution:
    """Optimal time-dependent values and policies for ``horizon`` decisions, by backward induction.

    ``V_H = 0``; for ``t = H-1, ..., 0``: ``Q_t = R + gamma P V_{t+1}`` (terminal rows 0),
    ``V_t = max_a Q_t``, ``pi_t = argmax_a Q_t`` (ties: lowest action index; any maximiser is
    optimal at a finite horizon, so no tie-breaking toward termination is needed).

    Returns a :class:`~mdpalign.solve.Solution` with ``values`` (H+1, S) — ``values[t]`` is the
    optimal expected (discounted by ``mdp.gamma``) return with ``H - t`` steps left, so
    ``values[0]`` is the value at the start of an episode and ``values[H] = 0`` — ``q_values``
    (H, S, A), ``policy`` (H, S). The recursion has no truncation or stopping error; ``error_bound`` bounds
    its float64 rounding, ``max_t max_s |values[t, s] - V_t(s)|`` in exact arithmetic: each backup errs by at
    most ``E_t = max_s max_a E`` (:func:`~mdpalign.solve._rounding.shifted_backup` with ``c = 0``, from the same
    matrix product with ``|V_{t+1}|`` as a second column) and the exact backup is Lipschitz with constant
    ``L = gamma * max row sum`` (the stored rows sum to 1 only up to ~1e-16), so ``err_t <= E_t + L err_{t+1}``
    and the bound is ``err_0`` — about ``H (k + 4) u max|V|`` for rows of ``k`` non-zeros.
    """
    start = time.perf_counter()
    check_mdp(mdp)
    H = check_horizon(horizon)
    S, A = mdp.n_states, mdp.n_actions
    nonterm = ~mdp.terminal
    rows = row_sums(mdp)
    excess = float(np.max((rows.zeta + rows.eta)[nonterm], initial=0.0))
    lipschitz = mdp.gamma * (1.0 + max(excess, 0.0)) * (1 + 4 * U)
    values = np.zeros((H + 1, S))
    q = np.zeros((H, S, A))
    err = 0.0
    for t in range(H - 1, -1, -1):
        q[t], E = shifted_backup(mdp, 0.0, values[t + 1])
        values[t] = q[t].max(axis=1)
        err = (float(np.max(E.max(axis=1)[nonterm], initial=0.0)) + lipschitz * err) * (1 + 4 * U)
    policy = q.argmax(axis=2).astype(np.int64) if H else np.zeros((0, S), dtype=np.int64)
    return Solution(values, q, policy, err, H, "finite_horizon", time.perf_counter() - start, horizon=H)
