"""Contextual bandits with Bradley–Terry preferences, and the data alignment objectives train on.

A bandit has contexts x ~ mu (``context_probs``), arms y (a response is one arm), a reward
r(x, y) (``rewards``, shape ``(X, K)``) and a reference policy pi_ref(y | x) (``ref_policy``,
strictly positive rows summing to 1, so that log pi_ref is finite).

Two kinds of data, with the same containers (:mod:`mdpalign.data`):

* **exact (population) data** — one row per distinct (context, arm[, arm]) with its probability
  as ``weight``; a loss summed with these weights *is* the population loss, which is what the
  closed-form optima in ``mdpalign.proofs`` are about;
* **sampled data** — n i.i.d. rows of weight 1/n each. Sampled and exact data use the same
  pair distribution, so the exact data is the expectation of the sampled data, row by row.

Preferences follow Bradley–Terry (1952): P(i ≻ j | x) = sigma(r(x, i) − r(x, j)).

Plain numpy; no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import networkx as nx
import numpy as np
from scipy.special import expit

from mdpalign.data import DemoData, LabeledDemoData, PreferenceData
from mdpalign.errors import MdpalignError

__all__ = [
    "InvalidBanditError", "ContextualBandit",
    "k_armed_bandit", "random_contextual_bandit", "bt_preference_probs",
    "preference_pairs", "sample_preference_pairs", "comparison_graph", "comparison_components", "win_graph",
    "exact_demonstrations", "sample_demonstrations", "mixed_quality_demonstrations",
]

#: Largest tolerated deviation of a distribution from summing to 1.
_SUM_TOL = 1e-9


class InvalidBanditError(MdpalignError, ValueError):
    """Bandit arrays, policies or data requests that do not make sense; the message says which."""


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise InvalidBanditError(f"rng must be a numpy Generator, an int seed or None; got {type(rng).__name__}")


def _check_distribution(name: str, p: np.ndarray, positive: bool) -> None:
    if not np.all(np.isfinite(p)):
        raise InvalidBanditError(f"{name} has non-finite entries at {np.argwhere(~np.isfinite(p))[:5].tolist()}")
    if positive and np.any(p <= 0):
        raise InvalidBanditError(
            f"{name} must be strictly positive (log pi_ref must be finite); zero or negative at "
            f"{np.argwhere(p <= 0)[:5].tolist()}"
        )
    if np.any(p < 0):
        raise InvalidBanditError(f"{name} has negative entries at {np.argwhere(p < 0)[:5].tolist()}")
    sums = p.sum(axis=-1)
    off = np.abs(sums - 1.0) > _SUM_TOL
    if np.any(off):
        where = np.argwhere(np.atleast_1d(off))[0].tolist()
        raise InvalidBanditError(
            f"{name} is not a distribution: row {where} sums to {np.atleast_1d(sums)[tuple(where)]:.12g}, not 1"
        )


# --------------------------------------------------------------------------- the bandit
@dataclass(frozen=True, eq=False)
class ContextualBandit:
    """Rewards ``(X, K)``, reference policy ``(X, K)`` and context distribution ``(X,)``.

    Validated on construction: K >= 2, finite rewards, ``ref_policy`` rows strictly positive and
    summing to 1, ``context_probs`` non-negative summing to 1 (default uniform). Arrays are
    stored as read-only float64.
    """

    rewards: np.ndarray
    ref_policy: np.ndarray
    context_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        r = np.array(self.rewards, dtype=np.float64)
        if r.ndim != 2:
            raise InvalidBanditError(f"rewards must have shape (n_contexts, n_arms); got shape {r.shape}")
        X, K = r.shape
        if X < 1:
            raise InvalidBanditError("a bandit needs at least one context")
        if K < 2:
            raise InvalidBanditError(f"a bandit needs at least 2 arms to choose between; got {K}")
        if not np.all(np.isfinite(r)):
            raise InvalidBanditError(f"rewards has non-finite entries at {np.argwhere(~np.isfinite(r))[:5].tolist()}")
        ref = np.array(self.ref_policy, dtype=np.float64)
        if ref.shape != (X, K):
            raise InvalidBanditError(f"ref_policy must have shape {(X, K)} like rewards; got {ref.shape}")
        _check_distribution("ref_policy", ref, positive=True)
        if self.context_probs is None:
            mu = np.full(X, 1.0 / X)
        else:
            mu = np.array(self.context_probs, dtype=np.float64)
            if mu.shape != (X,):
                raise InvalidBanditError(f"context_probs must have shape ({X},); got {mu.shape}")
            _check_distribution("context_probs", mu, positive=False)
        for name, a in (("rewards", r), ("ref_policy", ref), ("context_probs", mu)):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def n_contexts(self) -> int:
        return self.rewards.shape[0]

    @property
    def n_arms(self) -> int:
        return self.rewards.shape[1]

    @property
    def log_ref(self) -> np.ndarray:
        """log pi_ref, ``(X, K)``."""
        return np.log(self.ref_policy)

    def check_policy(self, policy, name: str = "policy") -> np.ndarray:
        """Validate a policy ``(X, K)`` (or ``(K,)`` when X = 1) and return it as ``(X, K)`` float64."""
        p = np.array(policy, dtype=np.float64)
        if p.shape == (self.n_arms,) and self.n_contexts == 1:
            p = p[None, :]
        if p.shape != (self.n_contexts, self.n_arms):
            raise InvalidBanditError(
                f"{name} must have shape {(self.n_contexts, self.n_arms)}; got {p.shape}"
            )
        _check_distribution(name, p, positive=False)
        return p


def k_armed_bandit(
    n_arms: int,
    *,
    seed=None,
    rewards=None,
    ref_policy=None,
    reward_scale: float = 1.0,
) -> ContextualBandit:
    """A K-armed bandit (one context).

    ``rewards`` default to ``reward_scale * N(0, 1)`` draws from ``seed``; ``ref_policy``
    defaults to uniform.
    """
    K = int(n_arms)
    if K < 2:
        raise InvalidBanditError(f"a bandit needs at least 2 arms; got n_arms={n_arms}")
    if rewards is None:
        rewards = reward_scale * _as_rng(seed).standard_normal(K)
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape != (K,):
        raise InvalidBanditError(f"rewards must have shape ({K},) for a {K}-armed bandit; got {rewards.shape}")
    ref = np.full(K, 1.0 / K) if ref_policy is None else np.asarray(ref_policy, dtype=np.float64)
    if ref.shape != (K,):
        raise InvalidBanditError(f"ref_policy must have shape ({K},) for a {K}-armed bandit; got {ref.shape}")
    return ContextualBandit(rewards[None, :], ref[None, :], np.ones(1))


def random_contextual_bandit(
    n_contexts: int,
    n_arms: int,
    *,
    seed,
    reward_scale: float = 1.0,
    ref_concentration: float | None = 1.0,
    context_concentration: float | None = None,
) -> ContextualBandit:
    """A random contextual bandit.

    rewards ~ reward_scale * N(0, 1); pi_ref(.|x) ~ Dirichlet(ref_concentration) (``None``:
    uniform), floored at 1e-12 and renormalised so that log pi_ref stays finite for small
    concentrations; mu ~ Dirichlet(context_concentration) (``None``: uniform).
    """
    X, K = int(n_contexts), int(n_arms)
    if X < 1:
        raise InvalidBanditError(f"n_contexts must be >= 1; got {n_contexts}")
    if K < 2:
        raise InvalidBanditError(f"a bandit needs at least 2 arms; got n_arms={n_arms}")
    rng = _as_rng(seed)
    rewards = reward_scale * rng.standard_normal((X, K))
    if ref_concentration is None:
        ref = np.full((X, K), 1.0 / K)
    else:
        if not ref_concentration > 0:
            raise InvalidBanditError(f"ref_concentration must be positive; got {ref_concentration}")
        ref = rng.dirichlet(np.full(K, float(ref_concentration)), size=X)
        ref = np.maximum(ref, 1e-12)
        ref /= ref.sum(axis=1, keepdims=True)
    if context_concentration is None:
        mu = np.full(X, 1.0 / X)
    else:
        if not context_concentration > 0:
            raise InvalidBanditError(f"context_concentration must be positive; got {context_concentration}")
        mu = rng.dirichlet(np.full(X, float(context_concentration)))
    return ContextualBandit(rewards, ref, mu)


def bt_preference_probs(bandit: ContextualBandit) -> np.ndarray:
    """Bradley–Terry preference probabilities ``p[x, i, j] = sigma(r(x, i) − r(x, j))``, ``(X, K, K)``.

    ``p[x, i, j] + p[x, j, i] = 1`` and ``p[x, i, i] = 1/2``.
    """
    r = bandit.rewards
    return expit(r[:, :, None] - r[:, None, :])


def _deterministic_preference_probs(bandit: ContextualBandit) -> np.ndarray:
    """1 if r_i > r_j, 0 if r_i < r_j, 1/2 on exact ties."""
    r = bandit.rewards
    d = r[:, :, None] - r[:, None, :]
    return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))


# --------------------------------------------------------------------------- pair coverage
Coverage = Literal["all", "partial"] | Sequence


def _random_spanning_tree(K: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A uniformly random labelled tree would need Wilson's algorithm; a random attachment order
    is enough here: arm order[t] joins a random earlier arm."""
    order = rng.permutation(K)
    return [tuple(sorted((int(order[t]), int(order[rng.integers(t)])))) for t in range(1, K)]


def _covered_pairs(bandit: ContextualBandit, coverage, partial_fraction: float, connected: bool | None,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """For each context, an ``(m, 2)`` array of compared unordered pairs (i < j), sorted."""
    X, K = bandit.n_contexts, bandit.n_arms
    all_pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    if isinstance(coverage, str):
        if coverage == "all":
            return [np.array(all_pairs, dtype=np.int64)] * X
        if coverage != "partial":
            raise InvalidBanditError(f"coverage must be 'all', 'partial' or a list of pairs; got {coverage!r}")
        if not 0.0 < partial_fraction <= 1.0:
            raise InvalidBanditError(f"partial_fraction must lie in (0, 1]; got {partial_fraction}")
        m = max(1, int(round(partial_fraction * len(all_pairs))))
        out = []
        for _ in range(X):
            if connected is True:
                chosen = set(_random_spanning_tree(K, rng))
                rest = [p for p in all_pairs if p not in chosen]
                extra = max(0, m - len(chosen))
                for idx in rng.permutation(len(rest))[:extra]:
                    chosen.add(rest[idx])
            elif connected is False:
                if K < 3:
                    raise InvalidBanditError("connected=False needs at least 3 arms: with 2 arms a disconnected "
                                             "comparison graph has no pair at all")
                # split the arms in two non-empty groups and compare only within groups
                perm = rng.permutation(K)
                cut = int(rng.integers(1, K))
                group = np.empty(K, dtype=np.int64)
                group[perm[:cut]] = 0
                group[perm[cut:]] = 1
                inside = [p for p in all_pairs if group[p[0]] == group[p[1]]]
                chosen = {inside[i] for i in rng.permutation(len(inside))[:max(1, min(m, len(inside)))]}
            elif connected is None:
                chosen = {all_pairs[i] for i in rng.permutation(len(all_pairs))[:m]}
            else:
                raise InvalidBanditError(f"connected must be True, False or None; got {connected!r}")
            out.append(np.array(sorted(chosen), dtype=np.int64))
        return out
    # explicit pairs (i, j) for every context, or triples (x, i, j)
    items = [tuple(int(v) for v in p) for p in coverage]
    if not items:
        raise InvalidBanditError("coverage lists no pairs")
    width = {len(p) for p in items}
    if width not in ({2}, {3}):
        raise InvalidBanditError("coverage must list pairs (i, j) for every context or triples (x, i, j); "
                                 f"got items of lengths {sorted(width)}")
    per_ctx: list[set] = [set() for _ in range(X)]
    for p in items:
        x, i, j = (p if len(p) == 3 else (None, *p))
        if i == j or not (0 <= i < K and 0 <= j < K):
            raise InvalidBanditError(f"coverage pair {p} must name two different arms in [0, {K})")
        targets = range(X) if x is None else [x]
        if x is not None and not 0 <= x < X:
            raise InvalidBanditError(f"coverage triple {p} names context {x} outside [0, {X})")
        for xx in targets:
            key = (min(i, j), max(i, j))
            if key in per_ctx[xx]:
                raise InvalidBanditError(f"coverage lists the pair {key} twice for context {xx}")
            per_ctx[xx].add(key)
    return [np.array(sorted(s), dtype=np.int64).reshape(-1, 2) for s in per_ctx]


def _pair_weight_lookup(bandit: ContextualBandit, pairs: list[np.ndarray], pair_weights) -> list[np.ndarray]:
    """w_ij for each covered pair: given ``(K, K)`` or ``(X, K, K)`` (symmetric use of [i, j], i < j),
    or by default uniform over the compared pairs of each context (summing to 1)."""
    X, K = bandit.n_contexts, bandit.n_arms
    if pair_weights is None:
        return [np.full(len(p), 1.0 / len(p)) if len(p) else np.zeros(0) for p in pairs]
    w = np.asarray(pair_weights, dtype=np.float64)
    if w.shape == (K, K):
        w = np.broadcast_to(w, (X, K, K))
    if w.shape != (X, K, K):
        raise InvalidBanditError(f"pair_weights must have shape ({K}, {K}) or ({X}, {K}, {K}); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidBanditError("pair_weights must be finite and non-negative")
    return [w[x, p[:, 0], p[:, 1]] if len(p) else np.zeros(0) for x, p in enumerate(pairs)]


def _label_probs(bandit: ContextualBandit, labels: str) -> np.ndarray:
    if labels == "bt":
        return bt_preference_probs(bandit)
    if labels == "deterministic":
        return _deterministic_preference_probs(bandit)
    raise InvalidBanditError(f"labels must be 'bt' (Bradley–Terry) or 'deterministic'; got {labels!r}")


def preference_pairs(
    bandit: ContextualBandit,
    coverage: Coverage = "all",
    labels: Literal["bt", "deterministic"] = "bt",
    *,
    partial_fraction: float = 0.5,
    pair_weights=None,
    connected: bool | None = True,
    seed=None,
) -> PreferenceData:
    """Exact (population) preference data.

    For every context x and compared unordered pair {i, j}, two rows (x, i ≻ j) and (x, j ≻ i)
    with weights

        weight = mu(x) · w_ij · P(winner ≻ loser | x)

    so that the population DPO loss is ``sum weight · −log sigma(beta (g_w − g_l))``. Rows of
    weight 0 are dropped (deterministic labels keep only the higher-reward winner; an exact reward
    tie keeps both rows at 1/2).

    coverage:
        ``"all"`` pairs; ``"partial"``: per context a random subset of
        ``round(partial_fraction · K(K−1)/2)`` pairs (at least 1), drawn from ``seed``:
        ``connected=True`` starts from a random spanning tree, so every context's comparison
        graph is connected (at least K−1 pairs); ``connected=False`` compares arms only within
        the two sides of a random split, so there are at least two components (K >= 3);
        ``connected=None`` draws the pairs uniformly (connectivity not controlled). Or an explicit
        list of pairs ``(i, j)`` (every context) or triples ``(x, i, j)``.
    pair_weights:
        w_ij as ``(K, K)`` or ``(X, K, K)`` read at [i, j] with i < j. Default: uniform over the
        compared pairs of each context, 1/m_x, so the weights sum to 1 and equal the expectation
        of :func:`sample_preference_pairs` (pair drawn with probability mu(x) w_ij, rows 1/n).
    """
    rng = _as_rng(seed)
    probs = _label_probs(bandit, labels)
    pairs = _covered_pairs(bandit, coverage, partial_fraction, connected, rng)
    wts = _pair_weight_lookup(bandit, pairs, pair_weights)
    ctx, win, lose, weight = [], [], [], []
    for x, (p, w) in enumerate(zip(pairs, wts)):
        if not len(p):
            continue
        i, j = p[:, 0], p[:, 1]
        base = bandit.context_probs[x] * w
        for a, b in ((i, j), (j, i)):
            ctx.append(np.full(len(a), x))
            win.append(a)
            lose.append(b)
            weight.append(base * probs[x, a, b])
    ctx, win, lose, weight = (np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for v in (ctx, win, lose, weight))
    keep = weight > 0
    # order rows by (context, pair, winner) for readability
    order = np.lexsort((win[keep], np.maximum(win, lose)[keep], np.minimum(win, lose)[keep], ctx[keep]))
    return PreferenceData(ctx[keep][order], win[keep][order], lose[keep][order], weight[keep].astype(np.float64)[order],
                          bandit.n_contexts, bandit.n_arms)


def sample_preference_pairs(
    bandit: ContextualBandit,
    n: int,
    rng,
    coverage: Coverage = "all",
    labels: Literal["bt", "deterministic"] = "bt",
    *,
    partial_fraction: float = 0.5,
    pair_weights=None,
    connected: bool | None = True,
) -> PreferenceData:
    """n sampled preference rows (weight 1/n each): x ~ mu, {i, j} ~ w_·(x) (normalised over the
    compared pairs), winner ~ P(· ≻ ·) from ``labels``. With ``coverage="partial"`` the compared
    pairs are drawn from ``rng`` first (as in :func:`preference_pairs`). The expectation of the
    returned ``weight_table()`` is the exact data's when the pair weights sum to 1 per context."""
    n = int(n)
    if n < 1:
        raise InvalidBanditError(f"n must be a positive number of samples; got {n}")
    rng = _as_rng(rng)
    probs = _label_probs(bandit, labels)
    pairs = _covered_pairs(bandit, coverage, partial_fraction, connected, rng)
    wts = _pair_weight_lookup(bandit, pairs, pair_weights)
    mu = bandit.context_probs.copy()
    totals = np.array([w.sum() for w in wts])
    if np.any((mu > 0) & (totals <= 0)):
        x = int(np.flatnonzero((mu > 0) & (totals <= 0))[0])
        raise InvalidBanditError(f"context {x} has positive probability but no pair with positive weight to sample")
    x = rng.choice(bandit.n_contexts, size=n, p=mu)
    chosen = np.empty(n, dtype=np.int64)
    rejected = np.empty(n, dtype=np.int64)
    for xx in np.unique(x):
        rows = np.flatnonzero(x == xx)
        k = rng.choice(len(pairs[xx]), size=len(rows), p=wts[xx] / totals[xx])
        i, j = pairs[xx][k, 0], pairs[xx][k, 1]
        i_wins = rng.random(len(rows)) < probs[xx, i, j]
        chosen[rows] = np.where(i_wins, i, j)
        rejected[rows] = np.where(i_wins, j, i)
    return PreferenceData(x, chosen, rejected, np.full(n, 1.0 / n), bandit.n_contexts, bandit.n_arms)


def comparison_graph(data: PreferenceData, x: int) -> nx.Graph:
    """Undirected comparison graph of context x: all arms as nodes, an edge {i, j} (attribute
    ``weight`` = total weight of both orders) for each pair compared with positive weight."""
    if not 0 <= x < data.n_contexts:
        raise InvalidBanditError(f"context {x} outside [0, {data.n_contexts})")
    g = nx.Graph()
    g.add_nodes_from(range(data.n_arms))
    rows = np.flatnonzero((data.context == x) & (data.weight > 0))
    for r in rows:
        i, j = int(data.chosen[r]), int(data.rejected[r])
        w = g.edges[i, j]["weight"] if g.has_edge(i, j) else 0.0
        g.add_edge(i, j, weight=w + float(data.weight[r]))
    return g


def comparison_components(data: PreferenceData, x: int) -> list[frozenset[int]]:
    """Connected components of context x's comparison graph, sorted by smallest arm.

    Only differences of scores inside a component are identified by the data."""
    comps = nx.connected_components(comparison_graph(data, x))
    return sorted((frozenset(c) for c in comps), key=min)


def win_graph(data: PreferenceData, x: int) -> nx.DiGraph:
    """Directed graph winner → loser for context x (attribute ``weight``). A finite Bradley–Terry
    maximum-likelihood fit exists iff every component of the comparison graph is strongly
    connected here (Zermelo 1929; Ford 1957)."""
    if not 0 <= x < data.n_contexts:
        raise InvalidBanditError(f"context {x} outside [0, {data.n_contexts})")
    g = nx.DiGraph()
    g.add_nodes_from(range(data.n_arms))
    for r in np.flatnonzero((data.context == x) & (data.weight > 0)):
        i, j = int(data.chosen[r]), int(data.rejected[r])
        w = g.edges[i, j]["weight"] if g.has_edge(i, j) else 0.0
        g.add_edge(i, j, weight=w + float(data.weight[r]))
    return g


# --------------------------------------------------------------------------- demonstrations
def exact_demonstrations(bandit: ContextualBandit, policy) -> DemoData:
    """Population demonstrations: one row per (x, a) with weight mu(x) · policy(a | x) > 0."""
    pi = bandit.check_policy(policy)
    w = bandit.context_probs[:, None] * pi
    x, a = np.nonzero(w > 0)
    return DemoData(x, a, w[x, a], bandit.n_contexts, bandit.n_arms)


def sample_demonstrations(bandit: ContextualBandit, n: int, policy, rng) -> DemoData:
    """n demonstrations (weight 1/n each): x ~ mu, a ~ policy(· | x)."""
    n = int(n)
    if n < 1:
        raise InvalidBanditError(f"n must be a positive number of samples; got {n}")
    pi = bandit.check_policy(policy)
    rng = _as_rng(rng)
    x = rng.choice(bandit.n_contexts, size=n, p=bandit.context_probs)
    a = _sample_rows(pi[x], rng)
    return DemoData(x, a, np.full(n, 1.0 / n), bandit.n_contexts, bandit.n_arms)


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``probs`` (inverse CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


def mixed_quality_demonstrations(
    bandit: ContextualBandit,
    expert_policy,
    suboptimal_policy,
    *,
    expert_fraction: float = 0.5,
    class_rewards: tuple[float, float] | None = (1.0, 0.1),
    n: int | None = None,
    rng=None,
) -> LabeledDemoData:
    """Mixed-quality, class-labelled demonstrations (C-RLFT's input; OpenChat, arXiv 2309.11235).

    A row's class c is 0 (expert, probability ``expert_fraction``) or 1 (sub-optimal); its arm is
    drawn from the class's policy. ``n=None`` gives the exact data, one row per (c, x, a) with

        weight = mu(x) · P(c) · pi_c(a | x),

    otherwise n samples of weight 1/n drawn with ``rng``. ``class_rewards`` (expert, sub-optimal)
    are carried along for the objective (OpenChat uses 1 and 0.1); ``None`` leaves them out.
    """
    if not 0.0 <= expert_fraction <= 1.0:
        raise InvalidBanditError(f"expert_fraction must lie in [0, 1]; got {expert_fraction}")
    pis = np.stack([bandit.check_policy(expert_policy, "expert_policy"),
                    bandit.check_policy(suboptimal_policy, "suboptimal_policy")])
    p_cls = np.array([expert_fraction, 1.0 - expert_fraction])
    X, K = bandit.n_contexts, bandit.n_arms
    if n is None:
        w = p_cls[:, None, None] * bandit.context_probs[None, :, None] * pis
        c, x, a = np.nonzero(w > 0)
        return LabeledDemoData(x, a, c, w[c, x, a], class_rewards, X, K)
    n = int(n)
    if n < 1:
        raise InvalidBanditError(f"n must be a positive number of samples (or None for exact data); got {n}")
    if rng is None:
        raise InvalidBanditError("sampling mixed-quality data (n given) needs an rng")
    rng = _as_rng(rng)
    x = rng.choice(X, size=n, p=bandit.context_probs)
    c = (rng.random(n) >= expert_fraction).astype(np.int64)
    a = _sample_rows(pis[c, x], rng)
    return LabeledDemoData(x, a, c, np.full(n, 1.0 / n), class_rewards, X, K)
