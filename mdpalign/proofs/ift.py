r"""IFT (arXiv 2405.11870) as the reference code computes it (:func:`mdpalign.objectives.ift_loss`,
``form="reference"``), on a tabular token-tree policy whose fused input at step ``t`` gives the logits
``(1 - lam) theta_{s_t} + lam theta_{s^_t}``, ``s^_t`` = the child of ``s_{t-1}`` along the pass-1 greedy
token ``argmax theta_{s_{t-1}}`` (no gradient through the argmax).

1. ``lam = 0`` and ``decay = 0``: the reference code then uses weights 1, so the loss per sequence is
   the mean NLL ``(1/|y|) sum_t l_t`` — length-normalised SFT, whose tree optimum is
   ``pi*(y) ∝ D(y)/|y|`` (:func:`ift_sft_limit_optimum` / :func:`mdpalign.proofs.token_tree.tree_sft_optimum`).
   For equal-length sequences it is plain SFT.
2. Deterministic demonstrations (one sequence ``y`` per prompt), any ``lam`` in ``[0, 1)``, any decay:
   every per-token loss ``l_t >= 0`` and the IFT loss is 0 iff every ``l_t = 0``; along
   ``theta_{s_t}[y_t] -> +inf`` (others fixed) the greedy predictions follow ``y``, so ``s^_t = s_t``,
   the fused logits equal ``theta_{s_t}`` and the loss -> 0. The infimum 0 is not attained, and any
   minimising sequence has ``pi(y_t | s_t) -> 1`` on the demonstrated path (once greedy follows ``y``
   the fused input *is* ``s_t``): the SFT limit. Prefixes off the path are free — IFT differs from SFT
   there only through the gradient that leaks to ``theta_{s^_t}`` while predictions are wrong.
3. Stochastic demonstrations, ``decay = 0``, fixed length 2 (``eos=None``), a unique modal first
   token ``m`` of ``D(y_1)`` with ``D(.|m) > 0``, ``0 <= lam < 1``: the loss is
   ``sum_{a,b} D(a,b) [l_1 + l_2]/2`` with ``l_1 = -log softmax(theta_root)[a]`` and
   ``l_2 = -log softmax((1-lam) theta_a + lam theta_{m^})[b]``, ``m^ = argmax theta_root``.
   ``theta_root`` enters only ``l_1`` with a gradient: ``pi(.|root) = D(y_1)``, hence ``m^ = m``.
   For ``a = m`` the fused logits are ``theta_m``: ``pi(.|m) = D(.|m)``. For ``a != m``, ``theta_a`` is free
   and enters only its own cross-entropy, minimal iff ``(1-lam) theta_a + lam theta_m = log D(.|a) + c``;
   with ``theta_m = log D(.|m) + c'``::

       pi(b|a) = softmax(theta_a)_b ∝ [ D(b|a) / D(b|m)^lam ]^(1/(1-lam))

   — a lam-distorted SFT (minimising over ``theta_a`` first leaves ``theta_m``'s own problem unchanged,
   so the joint optimum is this one). THEORY.md's formula is confirmed.
4. ``decay > 0``: no closed form; ``v`` (not detached) makes the loss a ratio of sums. Tests check
   stationarity of the fitted policy by its gradient and that it differs from SFT.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mdpalign.proofs.base import Optimum, ProofInputError, optimum_from_target, proof_array
from mdpalign.proofs.token_tree import tree_sft_optimum

__all__ = ["ift_sft_limit_optimum", "ift_deterministic_optimum", "ift_depth2_optimum"]


def ift_sft_limit_optimum(tree: Any, leaf_weights: Any) -> Optimum:
    """``lam = 0``, ``decay = 0``: the per-sequence-mean SFT optimum ``pi*(y) ∝ D(y)/|y|`` on ``tree``."""
    return replace(tree_sft_optimum(tree, leaf_weights, length_normalised=True), objective="ift(lam=0, decay=0)")


def ift_deterministic_optimum(tree: Any, leaf: int) -> Optimum:
    """One demonstrated leaf: the limit ``pi(y_t|s_t) -> 1`` on its path, other prefixes free."""
    if not 0 <= int(leaf) < tree.n_leaves:
        raise ProofInputError(f"leaf {leaf} outside [0, {tree.n_leaves})")
    w = np.zeros(tree.n_leaves)
    w[int(leaf)] = 1.0
    return replace(tree_sft_optimum(tree, w), objective="ift(deterministic)")


def ift_depth2_optimum(tree: Any, joint: Any, lam: float) -> Optimum:
    """Case 3 of the module docstring. ``tree``: a TokenTree with ``max_length=2`` and ``eos=None``;
    ``joint`` ``(V, V)``: ``D(y_1, y_2)``, non-negative, summing to > 0."""
    if tree.max_length != 2 or tree.eos is not None:
        raise ProofInputError("ift_depth2_optimum needs a fixed-length tree: max_length=2, eos=None")
    V = tree.vocab_size
    D = proof_array(joint, "joint")
    if D.shape != (V, V) or (D < 0).any() or not np.isfinite(D).all() or D.sum() <= 0:
        raise ProofInputError(f"joint must be a finite, non-negative (V, V) = ({V}, {V}) table with positive mass")
    lam = float(lam)
    if not 0.0 <= lam < 1.0:
        raise ProofInputError(f"lam must lie in [0, 1) for a finite distortion, got {lam}")
    D = D / D.sum()
    first = D.sum(axis=1)
    order = np.sort(first)
    if V > 1 and order[-1] - order[-2] <= 1e-12:
        raise ProofInputError("the modal first token is not unique: the greedy prediction is ambiguous")
    m = int(np.argmax(first))
    cond_m = D[m] / first[m]
    if (cond_m <= 0).any():
        raise ProofInputError(f"D(.|m) must be positive for the modal token m={m}; got {cond_m}")
    target = np.zeros((tree.n_prefixes, V))
    constrained = np.zeros(tree.n_prefixes, bool)
    target[0] = first
    constrained[0] = True
    for a in range(V):
        p = int(tree.children[0, a])
        if first[a] <= 0:
            continue
        constrained[p] = True
        cond = D[a] / first[a]
        if a == m:
            target[p] = cond
            continue
        with np.errstate(divide="ignore"):
            logit = (np.log(cond) - lam * np.log(cond_m)) / (1.0 - lam)
        logit = np.where(cond > 0, logit, -np.inf)
        e = np.exp(logit - logit[cond > 0].max())
        target[p] = e / e.sum()
    complete = np.asarray(tree.is_complete)
    return optimum_from_target(
        "ift(depth 2, decay=0)",
        target,
        constrained=constrained,
        derivation="pi(.|root) = D(y1); pi(.|m) = D(.|m); pi(b|a) ∝ [D(b|a)/D(b|m)^lam]^(1/(1-lam)) for a != m",
        extras={"modal_token": m, "lam": lam},
        free=~complete & ~constrained,
    )
