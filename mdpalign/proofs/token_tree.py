r"""Token trees: the soft-optimal token policy by backward recursion ("From r to Q*", arXiv 2404.12358).

Objective: maximise ``E_{y ~ pi}[r(y)] - beta KL(pi(y) || pi_ref(y))`` over token-factored policies
``pi(y) = prod_t pi(y_t | y_<t)`` — equivalently, with per-token KL, the undiscounted soft MDP of
:meth:`mdpalign.envs.token_tree.TokenTree.to_mdp`. Backward recursion::

    V(complete y) = r(y)
    V(s)          = beta log sum_a pi_ref(a|s) exp(V(s.a)/beta)
    pi*(a|s)      = pi_ref(a|s) exp((V(s.a) - V(s))/beta)

Telescoping along a complete ``y = (a_1..a_T)`` with prefixes ``s_0 = root, .., s_T = y``::

    prod_t pi*(a_t|s_{t-1}) = pi_ref(y) exp((V(s_T) - V(s_0))/beta) = pi_ref(y) exp(r(y)/beta) / Z

with ``Z = exp(V(root)/beta) = E_{y~pi_ref}[exp(r(y)/beta)]``: the sequence-level KL-RL optimum.
Conversely every sequence distribution factorises uniquely into per-prefix conditionals on
prefixes of positive probability — all of them here, since ``pi_ref > 0`` — so the token policy
``pi*`` is the unique optimum at *every* prefix, visited or not.

Sequence-level DPO on a token-factored tabular policy, with every pair of complete sequences
compared under Bradley–Terry on ``r``: by :mod:`mdpalign.proofs.dpo` its unique optimum over
sequence distributions is ``pi_ref(y) exp(r(y)/beta)/Z``, hence (same factorisation argument) the
token policy ``pi*`` above at every prefix.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from mdpalign.proofs.base import ProofInputError, UniqueOptimum, check_scalar, pinned_all_pairs, pinned_array, _to_numpy

__all__ = ["soft_backward_recursion", "token_tree_optimum", "leaf_pair_table", "tree_sft_optimum"]


def soft_backward_recursion(tree: Any, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(V (n_prefixes,), log pi* (n_prefixes, V))`` by the recursion above (log-space, float64).

    Rows of ``log pi*`` at complete prefixes are ``log(1/V)`` (no decision is taken there).
    """
    beta = check_scalar(beta, "beta")
    n, Vsz = tree.n_prefixes, tree.vocab_size
    complete = np.asarray(tree.is_complete)
    children = np.asarray(tree.children)
    depth = np.asarray(tree.depth)
    log_ref = np.asarray(tree.ref_log_probs)
    values = np.zeros(n)
    values[tree.leaf_prefixes] = tree.leaf_rewards
    log_pi = np.full((n, Vsz), -np.log(Vsz))
    for d in range(int(depth.max()), -1, -1):
        ids = np.flatnonzero((depth == d) & ~complete)
        if ids.size == 0:
            continue
        q = log_ref[ids] + values[children[ids]] / beta  # (m, V), children all deeper: already computed
        lz = logsumexp(q, axis=1)
        values[ids] = beta * lz
        log_pi[ids] = q - lz[:, None]
    return values, log_pi


def token_tree_optimum(tree: Any, beta: float) -> UniqueOptimum:
    """The soft-optimal token policy of a :class:`~mdpalign.envs.token_tree.TokenTree` as an optimum
    over ``(n_prefixes, V)`` (constrained = incomplete prefixes).

    ``extras``: ``values`` (soft value per prefix), ``log_Z`` (``V(root)/beta``), ``leaf_policy``
    (``pi*(y)`` per leaf, from the closed form ``pi_ref(y) exp(r/beta)/Z`` — *not* from the recursion,
    so comparing the two checks the telescoping).
    """
    values, log_pi = soft_backward_recursion(tree, beta)
    constrained = ~np.asarray(tree.is_complete)
    rows: list = []
    for x in np.flatnonzero(constrained):
        rows += pinned_all_pairs(int(x), np.arange(tree.vocab_size), log_pi[x])
    leaf_ref = tree.leaf_log_probs(tree.ref_log_probs)
    leaf_log = leaf_ref + tree.leaf_rewards / beta
    leaf_log = leaf_log - logsumexp(leaf_log)
    return UniqueOptimum(
        objective="token_tree_soft",
        shape=(tree.n_prefixes, tree.vocab_size),
        policy=np.exp(log_pi),
        pinned=pinned_array(rows),
        vanishing=np.zeros((tree.n_prefixes, tree.vocab_size), bool),
        constrained=constrained,
        attained=True,
        derivation="soft backward recursion; telescopes to pi_ref(y) exp(r(y)/beta)/Z",
        extras={"values": values, "log_Z": values[0] / beta, "leaf_policy": np.exp(leaf_log), "beta": float(beta)},
    )


def leaf_pair_table(tree: Any, *, labels: str = "bt") -> np.ndarray:
    """Win table ``(1, N, N)`` over the leaves with every ordered pair compared once:
    ``W[i, j] = sigma(r_i - r_j)`` (``labels="bt"``) or ``1[r_i > r_j]`` (``"deterministic"``)."""
    r = np.asarray(tree.leaf_rewards, dtype=np.float64)
    d = r[:, None] - r[None, :]
    if labels == "bt":
        W = 1.0 / (1.0 + np.exp(-d))
    elif labels == "deterministic":
        W = (d > 0).astype(np.float64)
    else:
        raise ProofInputError(f"labels must be 'bt' or 'deterministic', got {labels!r}")
    np.fill_diagonal(W, 0.0)
    return W[None]


def tree_sft_optimum(tree: Any, leaf_weights: Any, *, length_normalised: bool = False):
    """SFT on a token tree with demonstration weight ``D(y)`` per leaf (``(n_leaves,)``, >= 0).

    Sum form ``- sum_y D(y) log pi(y)``: per prefix ``s`` it is a cross-entropy with weights
    ``M(s.a) = sum_{y extends s.a} D(y)``, so ``pi*(a|s) = M(s.a)/M(s)`` — telescoping to ``pi*(y) = D(y)/sum D``.
    Length-normalised form ``- sum_y D(y)/|y| log pi(y)`` (the per-sequence mean NLL): the same with
    ``D(y)/|y|``, i.e. ``pi*(y) ∝ D(y)/|y|``. Prefixes with ``M(s) = 0`` are unconstrained; children
    with ``M = 0`` vanish (a limit, no finite logits).
    """
    from mdpalign.proofs.base import optimum_from_target

    D = _to_numpy(leaf_weights, "leaf_weights").reshape(-1)
    if D.shape != (tree.n_leaves,) or (D < 0).any() or not np.isfinite(D).all() or D.sum() <= 0:
        raise ProofInputError(f"leaf_weights must be (n_leaves,) = ({tree.n_leaves},), finite, >= 0, not all 0")
    w = D / tree.leaf_lengths if length_normalised else D
    mass = np.zeros(tree.n_prefixes)
    mass[tree.leaf_prefixes] = w
    depth = np.asarray(tree.depth)
    for d in range(int(depth.max()), 0, -1):
        ids = np.flatnonzero(depth == d)
        np.add.at(mass, tree.parent[ids], mass[ids])
    complete = np.asarray(tree.is_complete)
    kids = np.where(complete[:, None], 0, tree.children)
    child_mass = np.where(complete[:, None], 0.0, mass[kids])
    constrained = ~complete & (mass > 0)
    target = np.where(constrained[:, None], child_mass / np.where(mass > 0, mass, 1.0)[:, None], 0.0)
    return optimum_from_target(
        "tree_sft_mean" if length_normalised else "tree_sft",
        target,
        constrained=constrained,
        derivation="per-prefix cross-entropy with subtree masses: pi*(a|s) = M(s.a)/M(s)",
        diverging_if_zero="logits of tokens leading only to undemonstrated sequences -> -inf",
        extras={"prefix_mass": mass},
        free=~complete & (mass <= 0),
    )
