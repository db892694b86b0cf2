"""Exact evaluation of given policies: values, occupancy measures, success probabilities."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from mdpalign.mdp import TabularMDP, reachable_mask
from mdpalign.solve.checks import check_horizon, check_mdp, check_policy_probs
from mdpalign.solve.linear import _evaluate_from, solve_linear
from mdpalign.solve.results import SolverError

__all__ = ["evaluate", "occupancy", "state_success_probabilities", "closed_nonterminal_classes"]


def _time_policies(mdp: TabularMDP, policy, horizon: int | None) -> list[np.ndarray]:
    """A list of (S, A) matrices: one (stationary) or H (time-dependent (H, S) / (H, S, A))."""
    S, A = mdp.n_states, mdp.n_actions
    policy = np.asarray(policy)
    if policy.shape in ((S,), (S, A)):
        return [check_policy_probs(mdp, policy)]
    if horizon is not None and policy.ndim >= 2 and policy.shape[0] == horizon and policy.shape[1:] in ((S,), (S, A)):
        return [check_policy_probs(mdp, p) for p in policy]
    allowed = f"({S},) or ({S}, {A})" + ("" if horizon is None else f", or time-dependent ({horizon}, {S}) / "
                                                                     f"({horizon}, {S}, {A})")
    raise SolverError(f"policy must have shape {allowed}; got {policy.shape}")


def _support(P) -> sp.csr_matrix:
    M = sp.csr_matrix(P, dtype=np.float64)
    M.data = (M.data > 0).astype(np.float64)
    M.eliminate_zeros()
    return M


def closed_nonterminal_classes(mdp: TabularMDP, P_pi) -> np.ndarray:
    """Boolean (S,): non-terminal states lying in a closed communicating class of the chain ``P_pi``.

    These are the states an improper policy can never leave; every other non-terminal state is
    transient (left for good with probability 1).
    """
    G = _support(P_pi)
    n_comp, comp = connected_components(G, directed=True, connection="strong")
    coo = G.tocoo()
    leaves = comp[coo.row] != comp[coo.col]
    open_comp = np.zeros(n_comp, dtype=bool)
    open_comp[comp[coo.row[leaves]]] = True
    open_comp[comp[mdp.terminal]] = True
    return ~open_comp[comp] & ~mdp.terminal


def evaluate(mdp: TabularMDP, policy, horizon: int | None = None) -> np.ndarray:
    """Exact value of a deterministic ``(S,)`` or stochastic ``(S, A)`` policy.

    Infinite horizon: ``V = r_pi + gamma P_pi V`` with ``V = 0`` on terminal states, solved
    directly on the non-terminal states. At ``gamma = 1`` an *improper* policy is allowed: the
    states of its closed non-terminal classes (loops it never leaves) have a well-defined total
    reward only if the reward there is 0, and then their value is exactly 0; any other state is
    transient and solved from ``(I - P_TT) V_T = r_T`` (nonsingular). A non-zero reward inside a
    closed class (the sum diverges or oscillates) raises :class:`~mdpalign.solve.SolverError`.

    ``horizon=H``: finite-horizon values by backward recursion, returned as (H+1, S) with
    ``values[t]`` the expected (discounted) return with ``H - t`` steps left (the convention of
    :func:`~mdpalign.solve.finite_horizon`); the policy may then also be time-dependent,
    ``(H, S)`` or ``(H, S, A)``.
    """
    check_mdp(mdp)
    if horizon is not None:
        H = check_horizon(horizon)
        pis = _time_policies(mdp, policy, H)
        values = np.zeros((H + 1, mdp.n_states))
        for t in range(H - 1, -1, -1):
            pi = pis[t if len(pis) > 1 else 0]
            values[t] = (pi * mdp.q_from_values(values[t + 1])).sum(axis=1)
        return values
    pi = _time_policies(mdp, policy, None)[0]
    P_pi, r_pi = mdp.policy_transitions(pi)
    r_pi = np.where(mdp.terminal, 0.0, r_pi)
    if mdp.gamma < 1.0:
        return _evaluate_from(mdp, P_pi, r_pi)
    closed = closed_nonterminal_classes(mdp, P_pi)
    if closed.any():
        scale = max(1.0, float(np.max(np.abs(mdp.R))))
        bad = closed & (np.abs(r_pi) > 1e-12 * scale)
        if bad.any():
            raise SolverError(
                f"gamma = 1 and the policy loops forever among states {np.flatnonzero(closed)[:10].tolist()} "
                f"collecting non-zero reward (e.g. {r_pi[bad][0]:g} at state {int(np.flatnonzero(bad)[0])}): "
                "its total reward is undefined or infinite"
            )
    transient = np.flatnonzero(~closed & ~mdp.terminal)
    V = np.zeros(mdp.n_states)
    if transient.size:
        P_t = sp.csr_matrix(P_pi)[transient][:, transient]
        M = sp.identity(transient.size, format="csr") - P_t
        V[transient] = solve_linear(M if mdp.is_sparse else M.toarray(), r_pi[transient], "direct")
    return V


def occupancy(mdp: TabularMDP, policy, horizon: int | None = None) -> np.ndarray:
    """Discounted state-action occupancy ``d(s, a) = sum_t gamma^t P(s_t = s, a_t = a)``, (S, A).

    The chain starts from ``mdp.initial`` and follows ``policy``. Only non-terminal states are
    counted (terminal states carry no decision and no reward; their rows are 0), so that for every
    policy ``sum_{s,a} d(s,a) R(s,a) = initial @ V^pi`` and, with no terminal states,
    ``sum d = 1/(1-gamma)``. Divide by ``d.sum()`` for the normalised visitation.

    Infinite horizon: ``rho^T (I - gamma P_NN) = initial_N^T`` on the non-terminal states N, then
    ``d = rho[:, None] * pi``. At ``gamma = 1``, ``d.sum()`` is the expected number of steps to
    termination; an improper policy that reaches one of its closed loops from the initial
    distribution has infinite occupancy and raises :class:`~mdpalign.solve.SolverError`.
    ``horizon=H``: ``sum_{t<H}`` by forward propagation (policy may be time-dependent).
    """
    check_mdp(mdp)
    S = mdp.n_states
    nonterm = ~mdp.terminal
    if horizon is not None:
        H = check_horizon(horizon)
        pis = _time_policies(mdp, policy, H)
        d = np.zeros((S, mdp.n_actions))
        p = mdp.initial.copy()
        disc = 1.0
        Ps = [mdp.policy_transitions(pi)[0].T for pi in pis]
        for t in range(H):
            k = t if len(pis) > 1 else 0
            d += disc * np.where(nonterm, p, 0.0)[:, None] * pis[k]
            p = np.asarray(Ps[k] @ p).ravel()
            disc *= mdp.gamma
        return d
    pi = _time_policies(mdp, policy, None)[0]
    P_pi, _ = mdp.policy_transitions(pi)
    keep = nonterm.copy()
    if mdp.gamma == 1.0:
        closed = closed_nonterminal_classes(mdp, P_pi)
        if closed.any():
            reach = reachable_mask(_support(P_pi), np.flatnonzero(mdp.initial > 0))
            hit = closed & reach
            if hit.any():
                raise SolverError(
                    f"gamma = 1 and the policy reaches states {np.flatnonzero(hit)[:10].tolist()} that it never "
                    "leaves: the expected number of visits is infinite (the policy is improper)"
                )
            keep &= ~closed
    idx = np.flatnonzero(keep)
    rho = np.zeros(S)
    if idx.size:
        P_n = sp.csr_matrix(P_pi)[idx][:, idx] if sp.issparse(P_pi) else P_pi[np.ix_(idx, idx)]
        if sp.issparse(P_n):
            M = (sp.identity(idx.size, format="csr") - mdp.gamma * P_n).T.tocsr()
        else:
            M = (np.eye(idx.size) - mdp.gamma * P_n).T
        rho[idx] = solve_linear(M, mdp.initial[idx], "direct")
    return rho[:, None] * pi


def _goal_mask(mdp: TabularMDP, goal_states) -> np.ndarray:
    S = mdp.n_states
    g = np.asarray(goal_states)
    if g.dtype == bool:
        if g.shape != (S,):
            raise SolverError(f"a boolean goal mask must have shape ({S},); got {g.shape}")
        mask = g.copy()
    else:
        g = g.ravel()
        if g.size and not np.issubdtype(g.dtype, np.integer):
            raise SolverError(f"goal_states must be state indices or a boolean mask; got dtype {g.dtype}")
        if g.size and (g.min() < 0 or g.max() >= S):
            raise SolverError(f"goal_states {g[(g < 0) | (g >= S)][:5].tolist()} are outside [0, {S})")
        mask = np.zeros(S, dtype=bool)
        mask[g.astype(np.int64)] = True
    if not mask.any():
        raise SolverError("goal_states is empty")
    return mask


def state_success_probabilities(mdp: TabularMDP, policy, goal_states, horizon: int | None = None) -> np.ndarray:
    """Probability, from each state, of ever entering the goal set (within ``horizon`` steps if given).

    Goal states are made absorbing targets: ``h = 1`` on G; on the states X that can reach G
    along the policy's transitions (outside G), ``(I - P_XX) h_X = P_XG 1`` — nonsingular since
    from every state of X the chain leaves X with positive probability; ``h = 0`` elsewhere.
    With ``horizon=H``: ``h_H = 1_G``, ``h_t = 1_G + 1_{not G} P_pi_t h_{t+1}``, returning
    ``h_0`` (the policy may be time-dependent). Discounting plays no role. Returns (S,);
    ``mdp.initial @ h`` is the success probability of an episode.
    """
    check_mdp(mdp)
    goal = _goal_mask(mdp, goal_states)
    if horizon is not None:
        H = check_horizon(horizon)
        pis = _time_policies(mdp, policy, H)
        h = goal.astype(np.float64)
        Ps = [mdp.policy_transitions(pi)[0] for pi in pis]
        for t in range(H - 1, -1, -1):
            h = np.where(goal, 1.0, np.asarray(Ps[t if len(Ps) > 1 else 0] @ h).ravel())
        return h
    pi = _time_policies(mdp, policy, None)[0]
    P_pi, _ = mdp.policy_transitions(pi)

    can_reach = reachable_mask(sp.csr_matrix(_support(P_pi)).T, np.flatnonzero(goal))
    X = np.flatnonzero(can_reach & ~goal)
    h = goal.astype(np.float64)
    if X.size:
        P = sp.csr_matrix(P_pi)
        P_XX = P[X][:, X]
        b = np.asarray(P[X] @ goal.astype(np.float64)).ravel()
        M = sp.identity(X.size, format="csr") - P_XX
        h[X] = solve_linear(M if mdp.is_sparse else M.toarray(), b, "direct")
    return h
