"""Properness at gamma = 1: does a policy reach a terminal state with probability 1, and the greedy policy
whose ties are broken toward termination."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mdpalign.mdp import TabularMDP, reachable_mask
from mdpalign.solve.checks import check_policy_probs
from mdpalign.solve.results import UnboundedMDPError


def _reaches_terminal(mdp: TabularMDP, P_support) -> np.ndarray:
    """Boolean (S,): states from which the chain with support ``P_support`` (S x S) reaches a terminal state."""
    return reachable_mask(sp.csr_matrix(P_support).T, np.flatnonzero(mdp.terminal))


def is_proper(mdp: TabularMDP, policy) -> bool:
    """Whether ``policy`` (deterministic or stochastic) reaches a terminal state w.p. 1 from every state.

    For a finite chain this is: from every state some path of positive probability reaches the
    terminal set (otherwise a closed class of non-terminal states exists).
    """
    pi = check_policy_probs(mdp, policy)
    P_pi, _ = mdp.policy_transitions(pi)
    P_pi = sp.csr_matrix(P_pi)
    P_pi.data = (P_pi.data > 0).astype(np.float64)
    P_pi.eliminate_zeros()
    return bool(_reaches_terminal(mdp, P_pi).all())


def _as_csc_flat(mdp: TabularMDP) -> sp.csc_matrix:
    flat = mdp.transition_matrix
    return sp.csc_matrix(flat) if not sp.issparse(flat) else flat.tocsc()


def proper_greedy_policy(mdp: TabularMDP, q: np.ndarray, tie_tol: float) -> tuple[np.ndarray, bool]:
    """Greedy policy on ``q`` whose ties are broken toward termination (the "attractor").

    ``O(s) = {a : q[s, a] >= max_a q[s, a] - tie_tol}``. Start from ``T_0`` = terminal states and
    repeatedly add every state ``s`` with an action ``a in O(s)`` that enters the current set
    with positive probability, assigning the best such ``a``. By induction every added state
    reaches the terminal set with positive probability along its assigned actions, so on the
    added states the policy is proper. States never added have no optimal action leading toward
    termination: the optimum there is improper (e.g. a zero-reward loop that beats every way
    out). Those get, by the same construction with *all* actions allowed, the best action that
    leads toward termination, so the returned policy is always proper (a proper policy exists by
    TabularMDP's validation at gamma = 1); the flag says whether every state got an action in
    ``O(s)``.

    Returns ``(policy, all_near_optimal)``.
    """
    S, A = mdp.n_states, mdp.n_actions
    q = np.asarray(q, dtype=np.float64)
    qmax = q.max(axis=1)
    near_opt = q >= (qmax - tie_tol)[:, None]
    policy = q.argmax(axis=1).astype(np.int64)
    in_set = mdp.terminal.copy()
    P_csc = _as_csc_flat(mdp)
    indptr, indices, data = P_csc.indptr, P_csc.indices, P_csc.data
    # rank actions: near-optimal first, then by q.
    score = np.where(near_opt, 1.0, 0.0)

    def grow(frontier: np.ndarray, allowed: np.ndarray) -> None:
        while frontier.size:
            starts, ends = indptr[frontier], indptr[frontier + 1]
            lengths = ends - starts
            if lengths.sum() == 0:
                return
            idx = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(lengths.sum())
            rows = indices[idx][data[idx] > 0]
            s, a = np.divmod(rows, A)
            keep = ~in_set[s] & allowed[s, a]
            s, a = s[keep], a[keep]
            if s.size == 0:
                return
            # per state, the best candidate action: highest (near-optimal, q)
            order = np.lexsort((-q[s, a], -score[s, a], s))
            s, a = s[order], a[order]
            first = np.ones(s.size, dtype=bool)
            first[1:] = s[1:] != s[:-1]
            s, a = s[first], a[first]
            policy[s] = a
            in_set[s] = True
            frontier = s

    grow(np.flatnonzero(in_set), near_opt)
    all_near_optimal = bool(in_set.all())
    if not all_near_optimal:
        grow(np.flatnonzero(in_set), np.ones((S, A), dtype=bool))
        if not in_set.all():  # pragma: no cover - TabularMDP guarantees a proper policy at gamma = 1
            raise UnboundedMDPError(
                f"no proper policy: states {np.flatnonzero(~in_set)[:10].tolist()} cannot terminate"
            )
    return policy, all_near_optimal
