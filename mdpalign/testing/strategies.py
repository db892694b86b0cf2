"""Hypothesis strategies for the problems mdpalign's own property tests draw (and yours can too).

Sizes are drawn by Hypothesis and shrink first (fewest contexts, arms, states, shortest sequences), the numbers
inside a problem come from a drawn seed (which shrinks to 0) through the library's own generators, so a failing
example shrinks to a small problem that ``random_contextual_bandit(X, K, seed=...)`` & co. rebuild exactly.

* :func:`bandits` — :class:`mdpalign.envs.bandits.ContextualBandit`;
* :func:`preference_data` — ``(bandit, PreferenceData)`` with ``coverage`` ``"all"`` | ``"partial"`` and ``labels``
  ``"bt"`` | ``"deterministic"``;
* :func:`demonstrations` — ``(X, K)`` demonstration weight tables (``full_support=False``: some arms unseen);
* :func:`class_labelled_data` — ``(X, C, K)`` class-labelled demonstration tables;
* :func:`token_trees` — :class:`mdpalign.envs.token_tree.TokenTree`;
* :func:`tabular_mdps` — :class:`mdpalign.mdp.TabularMDP` with terminal states (proper at ``gamma = 1``);
* :func:`frozen_lake_maps` — valid Frozen Lake maps (rows over ``SFHG``, a path from S to G).

``random_mdp`` and ``mdp_params`` are the generator and parameter strategy behind :func:`tabular_mdps` (the solver
tests use them directly).
"""
from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - hypothesis is a test dependency, not a runtime one
    raise ImportError("mdpalign.testing.strategies needs hypothesis: pip install hypothesis") from exc

import networkx as nx
import numpy as np
import scipy.sparse as sp

from mdpalign.envs.bandits import preference_pairs, random_contextual_bandit
from mdpalign.envs.token_tree import random_token_tree
from mdpalign.mdp import TabularMDP

__all__ = [
    "seeds", "betas", "arms", "contexts",
    "bandits", "preference_data", "demonstrations", "class_labelled_data", "token_trees", "token_tree_shapes",
    "tabular_mdps", "mdp_params", "random_mdp", "frozen_lake_maps",
]

#: the building blocks of the property tests (THEORY.md's ranges: beta in [0.2, 3], 2-4 arms, 1-2 contexts)
seeds = st.integers(0, 2**31 - 1)
betas = st.floats(0.2, 3.0)
arms = st.integers(2, 4)
contexts = st.integers(1, 2)


def _strategy(v):
    return v if isinstance(v, st.SearchStrategy) else st.just(v)


@st.composite
def bandits(draw, n_contexts=contexts, n_arms=arms, reward_scale: float = 1.0):
    """A random contextual bandit: rewards ``reward_scale * N(0, 1)``, ``pi_ref ~ Dirichlet(1)``."""
    X, K = draw(_strategy(n_contexts)), draw(_strategy(n_arms))
    return random_contextual_bandit(X, K, seed=draw(seeds), reward_scale=reward_scale)


@st.composite
def preference_data(draw, coverage="all", labels="bt", n_contexts=contexts, n_arms=arms, connected=True):
    """``(bandit, data)``: exact population preference pairs of a random bandit (``partial`` needs >= 3 arms)."""
    cov, lab = draw(_strategy(coverage)), draw(_strategy(labels))
    K = draw(_strategy(n_arms))
    if cov == "partial":
        K = max(K, 3)
    b = draw(bandits(n_contexts, K))
    seed = draw(seeds)
    return b, preference_pairs(b, coverage=cov, labels=lab, connected=draw(_strategy(connected)), seed=seed)


@st.composite
def demonstrations(draw, n_contexts=contexts, n_arms=arms, full_support: bool = True):
    """An ``(X, K)`` weight table, rows ``Dirichlet(1) * U(0.5, 1)``; ``full_support=False`` zeroes ``K // 2`` arms
    of every row (at least one arm kept)."""
    X, K = draw(_strategy(n_contexts)), draw(_strategy(n_arms))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    D = rng.dirichlet(np.ones(K), size=X) * np.random.default_rng(seed + 1).uniform(0.5, 1, (X, 1))
    if not full_support:
        for x in range(X):
            D[x, rng.choice(K, size=max(1, K // 2), replace=False)] = 0.0
            if not (D[x] > 0).any():  # pragma: no cover - K // 2 < K
                D[x, 0] = 1.0
    return D


@st.composite
def class_labelled_data(draw, n_contexts=contexts, n_arms=arms, n_classes=2):
    """An ``(X, C, K)`` table ``Dirichlet(1)`` over ``(c, y)`` per context."""
    X, K, C = draw(_strategy(n_contexts)), draw(_strategy(n_arms)), draw(_strategy(n_classes))
    rng = np.random.default_rng(draw(seeds))
    return rng.dirichlet(np.ones(C * K), size=X).reshape(X, C, K)


#: (vocabulary size, maximum length, end-of-sequence kind) as the token-tree tests draw them
token_tree_shapes = st.tuples(st.integers(2, 4), st.integers(1, 4), st.sampled_from(["first", "last", None]))


@st.composite
def token_trees(draw, shapes=token_tree_shapes, reward_scale: float = 1.0):
    """A random token tree (EOS ``"first"`` = token 0, ``"last"`` = token V-1, ``None`` = fixed length)."""
    V, L, kind = draw(shapes)
    eos = {"first": 0, "last": V - 1, None: None}[kind] if isinstance(kind, str) or kind is None else int(kind)
    return random_token_tree(V, L, seed=draw(seeds), eos=eos, reward_scale=reward_scale)


def random_mdp(seed: int, S: int, A: int, gamma: float, sparse: bool, n_terminal: int = 1,
               zero_cost: bool = False, density: float = 0.4) -> TabularMDP:
    """Random MDP with terminal states; at gamma = 1 guaranteed proper and without positive cycles.

    The last ``n_terminal`` states are terminal (none is allowed when gamma < 1). Transitions: random sparse rows;
    action 0 of state s additionally moves to s+1 (or a terminal state) with probability >= 0.2, so "always
    action 0" is proper. Rewards: a bonus for *entering* a terminal state (expected over the
    row) minus a non-negative cost (zero when ``zero_cost``: Frozen-Lake-like, many ties and
    zero-reward loops), so no policy has a positive-reward cycle.
    """
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    mask = rng.random((S, A, S)) < density
    P[mask] = rng.random(int(mask.sum()))
    nonterm = S - n_terminal
    for s in range(S):
        for a in range(A):
            if P[s, a].sum() == 0:
                P[s, a, rng.integers(S)] = 1.0
            P[s, a] /= P[s, a].sum()
        P[s, 0] *= 0.8
        if n_terminal == 0:
            P[s, 0, (s + 1) % S] += 0.2
        else:
            P[s, 0, s + 1 if s < nonterm - 1 else nonterm + rng.integers(n_terminal)] += 0.2
    terminal = np.zeros(S, dtype=bool)
    terminal[nonterm:] = True
    P[terminal] = 0.0
    for t in np.flatnonzero(terminal):
        P[t, :, t] = 1.0
    bonus = rng.random(S) * (rng.random(S) < 0.5)
    bonus[~terminal] = 0.0
    R = P @ bonus
    if not zero_cost:
        R = R - rng.random((S, A)) * (rng.random((S, A)) < 0.7)
    R[terminal] = 0.0
    if gamma < 1 and rng.random() < 0.5:
        R = R + rng.normal(size=(S, A))  # arbitrary signs are fine when discounted
        R[terminal] = 0.0
    flat = sp.csr_matrix(P.reshape(S * A, S)) if sparse else P
    return TabularMDP(flat, R, gamma, terminal=terminal)


def mdp_params(sparse=None, gamma=None) -> st.SearchStrategy:
    """Keyword arguments of :func:`random_mdp` (``sparse`` / ``gamma``: a value or strategy; default: drawn)."""
    return st.fixed_dictionaries({
        "seed": seeds,
        "S": st.integers(2, 30),
        "A": st.integers(1, 4),
        "gamma": st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]) if gamma is None else _strategy(gamma),
        "sparse": st.booleans() if sparse is None else _strategy(sparse),
        "n_terminal": st.integers(0, 3),
        "zero_cost": st.booleans(),
        "density": st.sampled_from([0.1, 0.4, 1.0]),
    }).filter(lambda p: p["S"] > p["n_terminal"] and (p["n_terminal"] > 0 or p["gamma"] < 1))


def tabular_mdps(sparse=None, gamma=None) -> st.SearchStrategy:
    """Random :class:`TabularMDP` (:func:`random_mdp` of :func:`mdp_params`)."""
    return mdp_params(sparse, gamma).map(lambda p: random_mdp(**p))


def _reachable(rows: list[str]) -> bool:
    n, m = len(rows), len(rows[0])
    g = nx.grid_2d_graph(n, m)
    g.remove_nodes_from([(r, c) for r in range(n) for c in range(m) if rows[r][c] == "H"])
    return nx.has_path(g, (0, 0), (n - 1, m - 1))


_LAKE_SIDES = st.integers(2, 6)
_HOLE_RATES = st.floats(0.0, 0.4)


@st.composite
def frozen_lake_maps(draw, rows=_LAKE_SIDES, cols=_LAKE_SIDES, hole_rate=_HOLE_RATES):
    """A valid map (``S`` top-left, ``G`` bottom-right, a hole-free path between them): holes shrink away."""
    n, m, rate = draw(_strategy(rows)), draw(_strategy(cols)), draw(_strategy(hole_rate))
    cells = draw(st.lists(st.floats(0.0, 1.0), min_size=n * m, max_size=n * m))
    grid = [["H" if cells[r * m + c] < rate else "F" for c in range(m)] for r in range(n)]
    grid[0][0], grid[n - 1][m - 1] = "S", "G"
    out = ["".join(row) for row in grid]
    if not _reachable(out):  # clear the holes off one monotone path instead of rejecting (no filter health check)
        for c in range(m):
            grid[0][c] = "F" if grid[0][c] == "H" else grid[0][c]
        for r in range(n):
            grid[r][m - 1] = "F" if grid[r][m - 1] == "H" else grid[r][m - 1]
        out = ["".join(row) for row in grid]
    return out
