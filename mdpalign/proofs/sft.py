r"""SFT (maximum likelihood on demonstrations): the optimum is the empirical distribution.

Population loss over a tabular softmax policy, demonstration weights ``D(x, y) >= 0``
(population: ``mu(x) pi_demo(y|x)``; sampled: counts)::

    L(pi) = - sum_x sum_y D(x, y) log pi(y|x)

Derivation. Per context, with ``n(x) = sum_y D(x, y) > 0`` and ``p(y|x) = D(x, y)/n(x)``,
``L_x = n(x) [ H(p) + KL(p || pi) ]`` (cross-entropy = entropy + KL), minimal iff ``pi(.|x) = p``.
Infimum ``sum_x n(x) H(p(.|x))``. Arms with ``D(x, y) = 0`` need ``pi(y|x) = 0``: unattainable with
finite logits, so the optimum is a *limit* (their logits -> -inf) and :func:`sft_optimum` returns a
:class:`~mdpalign.proofs.base.NoFiniteOptimum` with the empirical distribution as limit policy.
Contexts with ``n(x) = 0`` are unconstrained.

Length-normalised SFT (mean per-token log-prob) on sequences ``y`` of ``|y|`` tokens, over a
token-factored policy that can represent any sequence distribution (a tree-structured tabular
policy can): ``L(pi) = - sum_y D(y)/|y| log pi(y)``, a cross-entropy against the weights
``D(y)/|y|``, so ``pi*(y) = (D(y)/|y|) / sum_y' D(y')/|y'|`` — biased toward short responses.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mdpalign.proofs.base import Optimum, ProofInputError, as_log_policy, demo_table, optimum_from_target, proof_array

__all__ = ["sft_optimum", "length_normalised_sft_optimum", "sft_population_loss"]


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def sft_optimum(demos: Any, n_contexts: int | None = None, n_arms: int | None = None) -> Optimum:
    """Optimum of weighted maximum likelihood: ``pi*(y|x) = D(x, y) / sum_y' D(x, y')``.

    ``demos``: an ``(X, K)`` (or ``(K,)``) non-negative weight/count table, or
    :class:`mdpalign.data.DemoData`.
    ``infimum`` is the minimal loss ``sum_x n(x) H(p(.|x))``.
    """
    D = demo_table(demos, n_contexts, n_arms)
    n = D.sum(axis=1)
    if not (n > 0).any():
        raise ProofInputError("demonstrations carry zero total weight")
    constrained = n > 0
    p = np.where(constrained[:, None], D / np.where(n > 0, n, 1.0)[:, None], 0.0)
    return optimum_from_target(
        "sft",
        p,
        constrained=constrained,
        derivation="cross-entropy = n(x)[H(p) + KL(p || pi)]: minimal iff pi = p (empirical distribution).",
        diverging_if_zero="logits of arms never demonstrated -> -inf (their probability -> 0)",
        infimum=float((n * _entropy_rows(p)).sum()),
        extras={"counts": n},
    )


def sft_population_loss(demos: np.ndarray, probs: Any = None, *, log_probs: Any = None) -> float:
    """``- sum_{x,y} D(x,y) log pi(y|x)`` (float64; ``0 * log 0 = 0``) for an ``(X, K)`` table ``D``."""
    D = np.asarray(demos, dtype=np.float64)
    if D.ndim == 1:
        D = D[None, :]
    lp = as_log_policy(probs, log_probs=log_probs, shape=D.shape)
    return float(-np.where(D > 0, D * lp, 0.0).sum())


def length_normalised_sft_optimum(seq_weights: Any, lengths: Any) -> np.ndarray:
    """Sequence distribution minimising ``- sum_y D(y)/|y| log pi(y)``: ``pi*(y) ∝ D(y)/|y|``.

    ``seq_weights`` ``(X, N)`` or ``(N,)``: weight of each complete sequence; ``lengths`` ``(N,)``:
    number of counted tokens of each (>= 1). Returns ``(X, N)`` (rows with no weight are ``nan``).
    """
    D = proof_array(seq_weights, "seq_weights")
    if D.ndim == 1:
        D = D[None, :]
    L = proof_array(lengths, "lengths").reshape(-1)
    if L.shape != (D.shape[1],):
        raise ProofInputError(f"lengths has shape {L.shape}, expected ({D.shape[1]},)")
    if (L < 1).any():
        raise ProofInputError(f"every sequence needs >= 1 counted token; lengths[{int(np.argmin(L))}] = {L.min()}")
    if (D < 0).any() or not np.isfinite(D).all():
        raise ProofInputError("seq_weights must be finite and >= 0")
    w = D / L[None, :]
    tot = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, w / tot, np.nan)
