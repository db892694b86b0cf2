"""The data regimes a loss is checked in: small exactly described problems, generated from a seed.

Each regime is a population (exact weights, no sampling) on a tabular problem small enough to fit to a certified
stationary point in well under a second. Rewards are drawn as ``beta * N(0, 1)`` (preference probabilities
``sigma(r_i - r_j)``), so that the optimum's log-ratios ``r / beta`` stay O(1) whatever ``beta`` the user checks
at: a nearly deterministic optimum has so little curvature that float64 cannot certify it.

Preference and reward-model losses (the regimes of the DPO analysis in THEORY.md):

* ``bt_all_pairs`` — 3 arms, every pair compared, Bradley–Terry labels: DPO's optimum is the KL-RL optimum.
* ``partial_coverage`` — 4 arms, two groups compared only within: only compared differences are pinned.
* ``deterministic`` — 3 arms, every pair, the higher-reward arm always wins: no finite minimiser for DPO.
* ``two_arm`` — 2 arms, contradictory labels ``P(a > b) = p``: ``pi_a / pi_b = (ref_a / ref_b) (p / (1-p))^(1/beta)``.

Demonstration losses: ``full_support`` (3 arms, 2 contexts, every arm demonstrated), ``unseen_arms`` (one arm
never demonstrated: no finite minimiser), ``token_tree`` (sequences of lengths 1 and 2 over a vocabulary of 2,
end-of-sequence token 0: the reduction over tokens decides the optimum). Class-weighted losses: ``conditioned``
(the policy sees the class) and ``unconditioned``. Online policy losses: ``bandit`` (4 arms), ``two_arm`` and
``token_tree`` (vocabulary 2, length <= 3: lengths differ within a subtree; sequence-level reward ``beta * N(0, 1)``:
a per-token KL is myopic there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from mdpalign.envs.bandits import ContextualBandit, preference_pairs
from mdpalign.envs.token_tree import random_token_tree
from mdpalign.proofs import pair_table
from mdpalign.testing.errors import UnknownRegimeError

__all__ = ["REGIMES", "Problem", "make_problem", "resolve_regimes"]

#: kind -> its regimes, in the order they run (the default is all of them)
REGIMES: dict[str, tuple[str, ...]] = {
    "preference": ("bt_all_pairs", "partial_coverage", "deterministic", "two_arm"),
    "reward_model": ("bt_all_pairs", "partial_coverage", "deterministic", "two_arm"),
    "demonstration": ("full_support", "unseen_arms", "token_tree"),
    "class_weighted": ("conditioned", "unconditioned"),
    "online_policy": ("bandit", "two_arm", "token_tree"),
}

_ARMS = {"bt_all_pairs": 3, "partial_coverage": 4, "deterministic": 3, "two_arm": 2, "bandit": 4}


@dataclass(frozen=True, eq=False)
class Problem:
    """One regime's problem, complete enough to reproduce a failure by hand.

    ``ref_policy`` ``(X, K)``; ``rewards`` ``(X, K)`` (preference labels are ``sigma(r_i - r_j)``); ``W``
    ``(X, K, K)`` total weight of "``i`` chosen over ``j`` in context ``x``" (preference / reward-model kinds);
    ``demos`` ``(X, K)`` demonstration weights, or ``(X, C, K)`` for class-labelled data, or ``(n_leaves,)`` on a
    token ``tree``; ``class_weights`` ``(C,)``.
    """

    kind: str
    regime: str
    seed: int
    beta: float
    ref_policy: np.ndarray
    rewards: np.ndarray | None = None
    W: np.ndarray | None = None
    demos: np.ndarray | None = None
    class_weights: np.ndarray | None = None
    tree: Any = None
    labels: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        if self.tree is not None:
            return (self.tree.n_prefixes, self.tree.vocab_size)
        X, K = self.ref_policy.shape
        if self.kind == "class_weighted" and self.regime == "conditioned":
            return (X * self.demos.shape[1], K)
        return (X, K)

    def describe(self) -> str:
        """The problem as Python literals: enough to rebuild it without mdpalign's generators."""
        f = lambda a: np.array2string(np.asarray(a), precision=6, separator=", ", max_line_width=200)  # noqa: E731
        labels = ": " + self.labels if self.labels else ""
        lines = [f"regime {self.regime!r} (seed {self.seed}, beta {self.beta:g}){labels}"]
        if self.tree is not None:
            lines.append(f"  token tree: vocab {self.tree.vocab_size}, max length {self.tree.max_length}, "
                         f"eos {self.tree.eos}; leaves {self.tree.sequences()}")
            if self.demos is not None:
                lines.append(f"  leaf weights D = {f(self.demos)}")
            else:
                lines.append(f"  leaf rewards = {f(self.tree.leaf_rewards)}")
            lines.append(f"  ref_policy (per prefix) = {f(self.ref_policy)}")
            return "\n".join(lines)
        lines.append(f"  ref_policy = {f(self.ref_policy)}")
        if self.rewards is not None:
            lines.append(f"  rewards = {f(self.rewards)}")
        if self.W is not None:
            x, i, j = np.nonzero(self.W > 0)
            rows = ", ".join(f"x{a}: {b}>{c} w={self.W[a, b, c]:.4g}" for a, b, c in zip(x, i, j))
            lines.append(f"  pairs (weight of 'chosen > rejected'): {rows}")
        if self.demos is not None:
            lines.append(f"  demonstration weights = {f(self.demos)}")
        if self.class_weights is not None:
            lines.append(f"  class weights = {f(self.class_weights)}")
        return "\n".join(lines)


def resolve_regimes(kind: str, regimes: Any = None) -> tuple[str, ...]:
    known = REGIMES[kind]
    if regimes is None:
        return known
    names = (regimes,) if isinstance(regimes, str) else tuple(regimes)
    if not names:
        raise UnknownRegimeError(f"no regime given; {kind} losses have: {', '.join(known)}")
    for n in names:
        if n not in known:
            raise UnknownRegimeError(f"unknown regime {n!r} for {kind} losses; choose from {', '.join(known)}")
    return names


def _ref(rng: np.random.Generator, X: int, K: int) -> np.ndarray:
    ref = rng.dirichlet(np.full(K, 2.0), size=X)
    ref = np.maximum(ref, 0.02)  # no nearly-zero reference mass: log-ratios stay O(1)
    return ref / ref.sum(axis=1, keepdims=True)


def _pairs(kind: str, regime: str, seed: int, beta: float) -> Problem:
    rng = np.random.default_rng([seed, 12])
    K = _ARMS[regime]
    ref = _ref(rng, 1, K)
    if regime == "two_arm":
        u = rng.uniform(0.5, 2.0)  # the optimum's log-ratio over the reference, in nats
        p = float(expit(beta * u))
        rewards = np.array([[beta * u, 0.0]])
        W = np.array([[[0.0, p], [1.0 - p, 0.0]]])
        return Problem(kind, regime, seed, beta, ref, rewards, W,
                       labels=f"contradictory labels, P(0 > 1) = {p:.6g}", extras={"p": p})
    rewards = beta * rng.standard_normal((1, K))
    b = ContextualBandit(rewards, ref, np.ones(1))
    if regime == "bt_all_pairs":
        data, labels = preference_pairs(b, coverage="all", labels="bt"), "Bradley-Terry labels, every pair compared"
    elif regime == "partial_coverage":
        data = preference_pairs(b, coverage="partial", labels="bt", connected=False, seed=int(rng.integers(2**31)))
        labels = "Bradley-Terry labels, two groups of arms compared only within"
    elif regime == "deterministic":
        data = preference_pairs(b, coverage="all", labels="deterministic")
        labels = "deterministic labels (higher reward wins), every pair"
    else:  # pragma: no cover - resolve_regimes rejects it
        raise UnknownRegimeError(regime)
    W = pair_table(data, 1, K)  # the proofs' one reader of preference rows
    return Problem(kind, regime, seed, beta, ref, rewards, W / W.sum(), labels=labels)


def _demos(regime: str, seed: int, beta: float) -> Problem:
    rng = np.random.default_rng([seed, 13])
    if regime == "token_tree":
        tree = random_token_tree(2, 2, seed=int(rng.integers(2**31)), eos=0)
        D = rng.dirichlet(np.full(tree.n_leaves, 3.0))
        return Problem("demonstration", regime, seed, beta, tree.ref_policy, tree=tree, demos=D,
                       labels=f"sequences of lengths {sorted(set(tree.leaf_lengths.tolist()))}")
    X, K = 2, 3
    D = rng.dirichlet(np.full(K, 3.0), size=X) * rng.uniform(0.5, 1.0, (X, 1))
    if regime == "unseen_arms":
        D[:, int(rng.integers(K))] = 0.0
    return Problem("demonstration", regime, seed, beta, _ref(rng, X, K), demos=D / D.sum(),
                   labels="one arm never demonstrated" if regime == "unseen_arms" else "every arm demonstrated")


def _classes(regime: str, seed: int, beta: float) -> Problem:
    rng = np.random.default_rng([seed, 14])
    X, C, K = 2, 2, 3
    D = rng.dirichlet(np.full(C * K, 3.0), size=X).reshape(X, C, K)
    # OpenChat's class rewards 1 and 0.1: weights exp(r_c/beta), scaled by the largest (same optimum, O(1) loss)
    w = np.array([1.0, float(np.exp(-0.9 / max(beta, 1e-3)))])
    return Problem("class_weighted", regime, seed, beta, _ref(rng, X, K), demos=D / D.sum(), class_weights=w,
                   labels="class-conditioned policy" if regime == "conditioned" else "one policy for both classes")


def _online(regime: str, seed: int, beta: float) -> Problem:
    rng = np.random.default_rng([seed, 15])
    if regime == "token_tree":
        tree = random_token_tree(2, 3, seed=int(rng.integers(2**31)), eos=0, reward_scale=beta)
        return Problem("online_policy", regime, seed, beta, tree.ref_policy, tree=tree,
                       labels="sequences of 1-2 tokens, sequence reward; exact expectation over responses")
    K = _ARMS[regime]
    ref = _ref(rng, 1, K)
    rewards = beta * rng.standard_normal((1, K))
    return Problem("online_policy", regime, seed, beta, ref, rewards,
                   labels="exact expectation over responses; advantages r - E_pi[r]")


def make_problem(kind: str, regime: str, seed: int, beta: float) -> Problem:
    """The problem of ``regime`` for a ``kind`` of loss, drawn from ``seed`` (deterministic)."""
    resolve_regimes(kind, (regime,))
    if kind in ("preference", "reward_model"):
        return _pairs(kind, regime, seed, beta)
    if kind == "demonstration":
        return _demos(regime, seed, beta)
    if kind == "class_weighted":
        return _classes(regime, seed, beta)
    return _online(regime, seed, beta)
