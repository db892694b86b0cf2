r"""IPO on a contextual bandit: weighted least squares on the comparison graph.

Per-example loss (IPO paper arXiv 2310.12036, TRL's ``loss_type="ipo"``; ``tau`` is TRL's ``beta``)::

    (h - 1/(2 tau))^2,    h = g(chosen) - g(rejected),    g = log pi - log pi_ref

Population loss with win weights ``W[x, i, j]`` (total weight of "``i`` chosen over ``j``")::

    L(g) = sum_{i,j} W_ij (g_i - g_j - c)^2,   c = 1/(2 tau)

Derivation. ``dL/dg_i = 2 sum_j N_ij (g_i - g_j) - 2 c sum_j (W_ij - W_ji)`` with ``N = W + W^T``, so the
stationary points solve ``L_N g = b``, ``L_N`` the graph Laplacian of ``N``, ``b_i = c sum_j (W_ij - W_ji)``
— the same as THEORY.md's ``b_i = sum_j w_ij t_ij`` with pair weight ``w_ij = N_ij`` and target
``t_ij = (p_ij - 1/2)/tau``, ``p_ij = W_ij/N_ij`` (expand ``p (d - c)^2 + (1-p)(d + c)^2 = (d - c(2p-1))^2 + const``).
The loss is a convex quadratic, so every stationary point is a minimiser: ``g = L_N^+ b`` plus one
arbitrary constant per connected component of the comparison graph (``b`` sums to 0 on each
component, so it lies in the range of ``L_N``). Finite for *every* data set, deterministic labels
included — unlike DPO. Unique (as a policy) iff one component covers all arms.

Pairs drawn from ``mu x mu`` (``W_ij = mu_i mu_j P(i > j)`` for ``i != j``): the normal equation of
arm ``y`` reads ``g_y sum_y' mu_y' - sum_y' mu_y' g_y' = sum_y' mu_y' (P(y > y') - 1/2)/tau``, hence
``g_y = p(y > mu)/tau + const`` with ``p(y > mu) = sum_y' mu_y' P(y > y')`` (``P(y > y) := 1/2``):
``pi* ∝ pi_ref exp(p(y > mu)/tau)`` when ``mu > 0`` everywhere (IPO paper, Prop. 1's fixed point).
"""
from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    Optimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    check_policy_table,
    log_normalise,
    pair_table,
    pinned_all_pairs,
    pinned_array,
    proof_array,
)

__all__ = ["ipo_optimum", "ipo_mu_optimum", "ipo_scores", "ipo_population_loss"]


def ipo_scores(W_x: Any, tau: float) -> np.ndarray:
    """Minimum-norm least-squares solution ``g = L^+ b`` ``(K,)`` for one context's win table."""
    W = np.asarray(W_x, dtype=np.float64)
    tau = check_positive(tau, "tau", error=ProofInputError)
    N = W + W.T
    L = np.diag(N.sum(axis=1)) - N
    b = (W - W.T).sum(axis=1) / (2 * tau)
    return np.linalg.pinv(L, hermitian=True) @ b


def ipo_population_loss(ref_policy: Any, pairs: Any, tau: float, probs: Any = None, *, log_probs: Any = None) -> float:
    """Exact population IPO loss ``sum W_ij (g_i - g_j - 1/(2 tau))^2`` (numpy float64)."""
    ref = check_policy_table(ref_policy)
    X, K = ref.shape
    W = pair_table(pairs, X, K)
    tau = check_positive(tau, "tau", error=ProofInputError)
    g = as_log_policy(probs, log_probs=log_probs, shape=(X, K)) - np.log(ref)
    d = g[:, :, None] - g[:, None, :] - 1.0 / (2 * tau)
    return float((W * d**2).sum())


def ipo_optimum(ref_policy: Any, pairs: Any, tau: float) -> Optimum:
    """Minimisers of population IPO: ``g = L^+ b`` per context, one free constant per component.

    ``extras``: ``g`` (min-norm solution ``(X, K)``), ``components`` per context, ``infimum`` via
    :attr:`Optimum.infimum`.
    """
    ref = check_policy_table(ref_policy)
    X, K = ref.shape
    W = pair_table(pairs, X, K)
    tau = check_positive(tau, "tau", error=ProofInputError)
    log_ref = np.log(ref)
    G = np.zeros((X, K))
    constrained = np.zeros(X, bool)
    policy = np.full((X, K), np.nan)
    rows: list = []
    comps_all = []
    for x in range(X):
        N = W[x] + W[x].T
        if not (N > 0).any():
            comps_all.append([])
            continue
        constrained[x] = True
        G[x] = ipo_scores(W[x], tau)
        g = nx.Graph()
        g.add_nodes_from(range(K))
        g.add_edges_from(zip(*np.nonzero(N > 0)))
        comps = [sorted(c) for c in nx.connected_components(g) if len(c) > 1]
        comps_all.append(comps)
        for c in comps:
            rows += pinned_all_pairs(x, np.asarray(c), log_ref[x] + G[x])
        if len(comps) == 1 and len(comps[0]) == K:
            policy[x] = np.exp(log_normalise(log_ref[x] + G[x]))
    d = G[:, :, None] - G[:, None, :] - 1.0 / (2 * tau)
    infimum = float((W * d**2).sum())
    unique = constrained.all() and np.isfinite(policy).all()
    common = dict(
        objective="ipo",
        shape=(X, K),
        policy=policy if unique else None,
        pinned=pinned_array(rows),
        vanishing=np.zeros((X, K), bool),
        constrained=constrained,
        attained=True,
        infimum=infimum,
        extras={"g": G, "components": comps_all, "tau": tau, "win_table": W},
    )
    if unique:
        return UniqueOptimum(
            derivation="convex quadratic; connected comparison graph: g = L^+ b up to a constant.", **common
        )
    return PinnedDifferences(
        derivation="convex quadratic; g = L^+ b up to one constant per comparison component, uncompared arms free.",
        **common,
    )


def ipo_mu_optimum(ref_policy: Any, mu: Any, pref_probs: Any, tau: float) -> np.ndarray:
    """``pi*(y|x) ∝ pi_ref(y|x) exp(p(y > mu_x)/tau)`` for pairs drawn from ``mu x mu`` (``mu > 0``).

    ``mu`` ``(X, K)`` sampling distribution, ``pref_probs`` ``(X, K, K)`` with ``P(i > j) + P(j > i) = 1``;
    the diagonal is read as 1/2 whatever it holds.
    """
    ref = check_policy_table(ref_policy)
    X, K = ref.shape
    mu = check_policy_table(mu, "mu")
    P = proof_array(pref_probs, "pref_probs")
    if mu.shape != (X, K) or P.shape != (X, K, K):
        raise ProofInputError(f"mu must be (X, K) = {(X, K)} and pref_probs (X, K, K); got {mu.shape}, {P.shape}")
    if np.abs(P + np.swapaxes(P, 1, 2) - 1)[:, ~np.eye(K, dtype=bool)].max(initial=0) > 1e-9:
        raise ProofInputError("pref_probs must satisfy P(i > j) + P(j > i) = 1 off the diagonal")
    P = P.copy()
    P[:, np.arange(K), np.arange(K)] = 0.5
    p_vs_mu = np.einsum("xij,xj->xi", P, mu)
    return np.exp(log_normalise(np.log(ref) + p_vs_mu / check_positive(tau, "tau", error=ProofInputError)))
