r"""DPO on a contextual bandit: Bradley–Terry maximum likelihood in disguise.

Population loss over a tabular softmax policy, win weights ``W[x, i, j]`` (the total weight of
rows "``i`` chosen over ``j`` in context ``x``"; population data: ``mu(x) w_ij P(i > j)``)::

    L(pi) = - sum_x sum_{i,j} W[x,i,j] log sigma(beta (g_x(i) - g_x(j))),   g_x = log pi(.|x) - log pi_ref(.|x)

Derivation. With ``s = beta g`` the loss is exactly the negative Bradley–Terry log-likelihood of the
scores ``s`` — and on a tabular policy ``g`` ranges over all of ``R^K`` modulo one constant per
context (``log pi = log pi_ref + g - log sum pi_ref e^g``), so minimising over ``pi`` is minimising over
the scores. Hence, per context:

* The BT negative log-likelihood is convex in ``s`` and strictly convex on each connected
  comparison component modulo its constant (its Hessian is the Laplacian with edge weights
  ``(W_ij + W_ji) sigma(d) sigma(-d) > 0``). A finite minimiser exists iff every bipartition of each
  comparison component has wins both ways (Zermelo 1929, Ford 1957) — equivalently, iff each
  weakly connected component of the directed win graph ``i -> j`` (``W_ij > 0``) is *strongly*
  connected. Then ``beta g`` equals the BT maximum-likelihood scores, unique up to one constant per
  component: :class:`PinnedDifferences` (only compared differences fixed; uncompared arms and the
  per-component offsets free — different starts give the same loss and different policies), or a
  :class:`UniqueOptimum` when one component covers all arms.
* All pairs compared with Bradley–Terry labels, ``W_ij ∝ w_ij sigma(r_i - r_j)`` with ``w_ij = w_ji``:
  the stationarity condition ``sum_j w_ij [sigma(r_i - r_j) - sigma(s_i - s_j)] = 0`` holds at
  ``s = r``, and the minimiser is unique, so ``beta g = r + c``: ``pi* = pi_ref exp(r/beta)/Z``, the
  KL-RL optimum (:func:`mdpalign.proofs.kl_rl.kl_rl_optimum`).
* Two arms with ``P(a > b) = p`` (contradictory labels): ``s_a - s_b = logit(p)``, i.e.
  ``pi_a/pi_b = (pi_ref,a/pi_ref,b) (p/(1-p))^(1/beta)`` (:func:`dpo_two_arm_log_ratio`).
* When the Ford condition fails (e.g. deterministic labels) no finite minimiser exists. Let the
  strongly connected components (SCCs) of the win graph be condensed into a DAG. The infimum is
  ``sum over SCCs of their own BT minimum``: put the scores at their within-SCC optimum plus ``M``
  times a topological level and let ``M -> infinity``. Conversely every minimising sequence must
  drive each cross-SCC term to 0 (so ``beta (g_w - g_l) -> +infinity`` on every cross-SCC win) and each
  SCC's own loss to its minimum (so within-SCC differences -> their BT scores, by strict convexity).
  Hence arms of every SCC beaten from outside *vanish*; within-SCC log-ratios stay pinned; the
  limit policy is unique only when one source SCC remains and every arm is compared. Under
  gradient descent with step ``eta`` the gap of an isolated deterministic pair obeys
  ``beta Delta + e^{beta Delta} ≈ 2 eta beta^2 t + const`` (the ODE ``dDelta/dt = 2 eta beta sigma(-beta Delta)``), so
  ``Delta ~ log(t)/beta``.
"""
from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
from scipy.special import expit, log_expit, logit

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    NoFiniteOptimum,
    Optimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    check_policy_table,
    log_normalise,
    make_optimum,
    optimum_kind,
    pair_table,
    pinned_all_pairs,
    pinned_array,
    proof_array,
)

__all__ = [
    "bradley_terry_scores",
    "bradley_terry_nll",
    "win_table_graph",
    "ford_condition",
    "dpo_optimum",
    "dpo_two_arm_log_ratio",
    "dpo_population_loss",
]


def bradley_terry_nll(W: np.ndarray, s: np.ndarray) -> float:
    """``- sum_ij W_ij log sigma(s_i - s_j)`` for one context."""
    d = s[:, None] - s[None, :]
    return float(-(W * log_expit(d)).sum())


def bradley_terry_scores(W: Any, *, tol: float = 1e-13, max_iter: int = 200) -> np.ndarray:
    """Maximum-likelihood Bradley–Terry scores of a strongly connected win matrix ``W`` ``(n, n)``.

    Damped Newton on ``- sum_ij W_ij log sigma(s_i - s_j)`` with the gauge ``s_0 = 0`` (the Hessian
    restricted to ``s_1..s_{n-1}`` is a grounded Laplacian, positive definite on a connected
    comparison graph). Stops when the gradient's max-norm is below ``tol * sum(W)``. Raises
    :class:`ProofInputError` if ``W`` is not strongly connected (no finite MLE, Ford's condition).
    """
    W = proof_array(W, "W")
    n = W.shape[0]
    if W.shape != (n, n) or (W < 0).any() or not np.isfinite(W).all():
        raise ProofInputError(f"win matrix must be square, finite, >= 0; got shape {W.shape}")
    if n == 1:
        return np.zeros(1)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(*np.nonzero(W > 0)))
    if not nx.is_strongly_connected(g):
        raise ProofInputError("win matrix is not strongly connected: no finite Bradley-Terry MLE (Ford's condition)")
    N = W + W.T
    s = np.zeros(n)
    f = bradley_terry_nll(W, s)
    scale = W.sum()
    for _ in range(max_iter):
        d = s[:, None] - s[None, :]
        grad = -(W * expit(-d)).sum(axis=1) + (W.T * expit(d)).sum(axis=1)
        if np.abs(grad).max() <= tol * scale:
            return s - s[0]
        c = N * expit(d) * expit(-d)
        H = np.diag(c.sum(axis=1)) - c
        step = np.zeros(n)
        step[1:] = np.linalg.solve(H[1:, 1:], grad[1:])
        t = 1.0
        while True:
            s_new = s - t * step
            f_new = bradley_terry_nll(W, s_new)
            # Armijo, up to the loss's own rounding: near the optimum the predicted decrease
            # (~|grad|^2) falls below float64 resolution of f, and a strict test then accepts only
            # tiny, lucky steps and stalls (seen on 6-arm all-pairs data, seed 6295).
            if f_new <= f - 1e-4 * t * float(grad @ step) + 4 * np.finfo(float).eps * abs(f) or t < 1e-12:
                break
            t *= 0.5
        if t < 1e-12:  # at machine precision of the loss: accept the full Newton step
            s_new = s - step
            f_new = bradley_terry_nll(W, s_new)
        s, f = s_new, f_new
    d = s[:, None] - s[None, :]
    grad = -(W * expit(-d)).sum(axis=1) + (W.T * expit(d)).sum(axis=1)
    if np.abs(grad).max() > 1e3 * tol * scale:
        raise RuntimeError(f"Bradley-Terry Newton did not converge: max |grad| = {np.abs(grad).max():.3e}")
    return s - s[0]


def win_table_graph(W_x: np.ndarray) -> nx.DiGraph:
    """Directed win graph of one context: edge ``i -> j`` with ``weight = W[i, j] > 0``."""
    g = nx.DiGraph()
    for i, j in zip(*np.nonzero(W_x > 0)):
        g.add_edge(int(i), int(j), weight=float(W_x[i, j]))
    return g


def ford_condition(W_x: Any) -> bool:
    """Zermelo/Ford: a finite BT maximiser exists iff every weakly connected component of the win
    graph is strongly connected (every bipartition of a comparison component has wins both ways)."""
    g = win_table_graph(np.asarray(W_x, dtype=np.float64))
    return all(nx.is_strongly_connected(g.subgraph(c)) for c in nx.weakly_connected_components(g))


def dpo_two_arm_log_ratio(p: float, beta: float, ref_a: float = 0.5, ref_b: float = 0.5) -> float:
    """``log pi_a - log pi_b = log(ref_a/ref_b) + logit(p)/beta`` for contradictory labels ``P(a > b) = p``."""
    if not (0 < p < 1):
        raise ProofInputError(f"p must be in (0, 1) for a finite optimum, got {p!r}")
    if not (beta > 0):
        raise ProofInputError(f"beta must be > 0, got {beta!r}")
    return float(np.log(ref_a) - np.log(ref_b) + logit(p) / beta)


def dpo_population_loss(ref_policy: Any, pairs: Any, beta: float, probs: Any = None, *, log_probs: Any = None) -> float:
    """Exact population DPO loss (numpy float64) — an implementation independent of the torch code."""

    ref = check_policy_table(ref_policy)
    X, K = ref.shape
    W = pair_table(pairs, X, K)
    g = as_log_policy(probs, log_probs=log_probs, shape=(X, K)) - np.log(ref)
    d = beta * (g[:, :, None] - g[:, None, :])
    return float(-(W * log_expit(d)).sum())


def _dpo_context(W_x: np.ndarray, log_ref_x: np.ndarray, beta: float, x: int) -> dict | None:
    """One context of :func:`dpo_optimum`: BT scores per strongly connected component, the components beaten
    from outside (they vanish), the pinned differences and, where it is one policy, the limit row."""
    K = len(log_ref_x)
    g = win_table_graph(W_x)
    if g.number_of_edges() == 0:
        return None
    sccs = [sorted(c) for c in nx.strongly_connected_components(g)]
    member = {a: k for k, c in enumerate(sccs) for a in c}
    beaten, cross = set(), []
    for w, l in g.edges:
        if member[w] != member[l]:
            beaten.add(member[l])
            cross.append((x, w, l))
    scores = np.full(K, np.nan)
    vanishing = np.zeros(K, bool)
    rows: list = []
    for k, c in enumerate(sccs):
        scores[c] = bradley_terry_scores(W_x[np.ix_(c, c)])
        rows += pinned_all_pairs(x, np.asarray(c), np.where(np.isnan(scores), 0.0, log_ref_x + scores / beta))
        if k in beaten:
            vanishing[c] = True
    weak = list(nx.weakly_connected_components(g))
    policy = np.full(K, np.nan)
    sources = [k for k in range(len(sccs)) if k not in beaten]
    if len(weak) == 1 and len(weak[0]) == K and len(sources) == 1:
        c = sccs[sources[0]]
        row = np.full(K, -np.inf)
        row[c] = log_ref_x[c] + scores[c] / beta
        policy = np.exp(log_normalise(row))
    return {"sccs": sccs, "cross": cross, "scores": scores, "vanishing": vanishing, "rows": rows, "policy": policy,
            "ford": all(nx.is_strongly_connected(g.subgraph(c)) for c in weak)}


_DPO_DERIVATIONS = {
    NoFiniteOptimum: "Ford's condition fails: SCCs beaten from outside vanish; within-SCC BT scores pinned.",
    UniqueOptimum: "one strongly connected comparison component per context: beta*g = BT MLE.",
    PinnedDifferences: "Ford's condition holds; only compared differences beta*(g_i - g_j) are pinned "
    "(one free offset per comparison component, uncompared arms free).",
}


def dpo_optimum(ref_policy: Any, pairs: Any, beta: float) -> Optimum:
    """Characterise the minimisers of population DPO (see the module docstring).

    ``ref_policy`` ``(X, K)``; ``pairs``: :class:`mdpalign.data.PreferenceData` or a win table ``W``
    ``(X, K, K)``.
    ``extras``: ``scores`` (BT scores per strongly connected component, ``nan`` for uncompared arms,
    gauge: 0 at each SCC's smallest arm), ``sccs``, ``cross_wins`` (``(x, winner, loser)`` whose
    ``beta (g_w - g_l)`` diverges), ``ford`` (per context: does a finite optimum exist?).

    The pinned set is per comparison component, not every pair of a support, so the result is not a target
    policy for :func:`~mdpalign.proofs.base.optimum_from_target`; both share its tail,
    :func:`~mdpalign.proofs.base.make_optimum`.
    """
    ref = check_policy_table(ref_policy)
    X, K = ref.shape
    beta = check_positive(beta, "beta", error=ProofInputError)
    W = pair_table(pairs, X, K)
    log_ref = np.log(ref)
    scores = np.full((X, K), np.nan)
    vanishing = np.zeros((X, K), bool)
    constrained = np.zeros(X, bool)
    policy = np.full((X, K), np.nan)
    rows: list = []
    sccs_all, cross, ford = [], [], []
    for x in range(X):
        ctx = _dpo_context(W[x], log_ref[x], beta, x)
        if ctx is None:
            sccs_all.append([])
            ford.append(True)
            continue
        constrained[x] = True
        sccs_all.append(ctx["sccs"])
        cross += ctx["cross"]
        ford.append(ctx["ford"])
        scores[x], vanishing[x], policy[x] = ctx["scores"], ctx["vanishing"], ctx["policy"]
        rows += ctx["rows"]
    determined = np.isfinite(policy).all(axis=1) | ~constrained
    free = ~constrained | ~determined.all()
    kind = optimum_kind(vanishing, free)
    where = ", ".join(f"x={x}: {w}>{l}" for x, w, l in cross[:6]) + (" ..." if len(cross) > 6 else "")
    return make_optimum(
        "dpo", policy if determined.all() else None, pinned_array(rows), vanishing, constrained, free,
        diverging=f"beta*(g_w - g_l) -> +inf on cross-component wins ({where}); ~log(steps)/beta under GD",
        derivation=_DPO_DERIVATIONS[kind],
        extras={"scores": scores, "sccs": sccs_all, "cross_wins": cross, "ford": ford, "win_table": W, "beta": beta},
    )
