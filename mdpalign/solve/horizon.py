"""Finite-horizon backward induction (time-limited problems such as gymnasium's Frozen Lake)."""
from __future__ import annotations

import numpy as np

from mdpalign.mdp import TabularMDP
from mdpalign.solve._core import Solution, check_horizon, check_mdp, timer

__all__ = ["finite_horizon"]


def finite_horizon(mdp: TabularMDP, horizon: int) -> Solution:
    """Optimal time-dependent values and policies for ``horizon`` decisions, by backward induction.

    ``V_H = 0``; for ``t = H-1, ..., 0``: ``Q_t = R + gamma P V_{t+1}`` (terminal rows 0),
    ``V_t = max_a Q_t``, ``pi_t = argmax_a Q_t`` (ties: lowest action index; any maximiser is
    optimal at a finite horizon, so no tie-breaking toward termination is needed).

    Returns a :class:`~mdpalign.solve.Solution` with ``values`` (H+1, S) — ``values[t]`` is the
    optimal expected (discounted by ``mdp.gamma``) return with ``H - t`` steps left, so
    ``values[0]`` is the value at the start of an episode and ``values[H] = 0`` — ``q_values``
    (H, S, A), ``policy`` (H, S). The recursion is exact: ``error_bound`` is 0, meaning "no
    truncation or stopping error"; the only error is float64 rounding in H backups (relative
    ~H * 1e-16).
    """
    start = timer()
    check_mdp(mdp)
    H = check_horizon(horizon)
    S, A = mdp.n_states, mdp.n_actions
    values = np.zeros((H + 1, S))
    q = np.zeros((H, S, A))
    for t in range(H - 1, -1, -1):
        q[t] = mdp.q_from_values(values[t + 1])
        values[t] = q[t].max(axis=1)
    policy = q.argmax(axis=2).astype(np.int64) if H else np.zeros((0, S), dtype=np.int64)
    return Solution(values, q, policy, 0.0, H, "finite_horizon", timer() - start, horizon=H)
