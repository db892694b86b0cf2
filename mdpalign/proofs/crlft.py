r"""C-RLFT (OpenChat, arXiv 2309.11235): class-weighted SFT, with and without class conditioning.

Data: demonstrations ``(x, y, c)`` (:class:`mdpalign.data.LabeledDemoData`: ``context, action, label``) with population
weight ``D[x, c, y]`` (``mu(x) P(c|x) D_c(y|x)``) and
a weight ``w_c > 0`` per class (``exp(r_c/beta)``, or OpenChat's constants 1.0 / 0.1). Loss::

    L = - sum_{x,c,y} w_c D[x,c,y] log pi(y | x [, c])

(OpenChat's token-level normalisation by ``sum_i w_i`` is a positive constant and moves no optimum.)

* **Class-conditioned policy** ``pi(y|x, c)`` (one softmax per ``(x, c)``): the loss splits into one
  weighted cross-entropy per ``(x, c)``, scaled by the constant ``w_c``, so
  ``pi*(y|x, c) = D_c(y|x) = D[x,c,y] / sum_y' D[x,c,y']`` whatever the weights — they cancel.
* **Unconditioned policy** ``pi(y|x)``: one cross-entropy against ``sum_c w_c D[x,c,y]``, so
  ``pi*(y|x) ∝ sum_c w_c P(c|x) D_c(y|x)``. With ``w_c = exp(r_c/beta)`` this is the KL-RL optimum for the
  mixture reference ``m(y|x) = sum_c P(c|x) D_c(y|x)`` and the reward
  ``beta log E[exp(r_c/beta) | x, y]`` (posterior over the class of ``y``):
  ``m(y) exp(r~(y)/beta) = sum_c P(c|x) D_c(y|x) exp(r_c/beta)``.

So the weights act only through parameters shared across classes. Arms with no demonstration in
a (context, class) go to 0 — a limit, as in SFT.

Conditioned policies are indexed ``state = x * C + c`` (row-major over ``(X, C)``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mdpalign.data import LabeledDemoData
from mdpalign.proofs.base import Optimum, ProofInputError, data_sizes, proof_array, table_array
from mdpalign.proofs.sft import sft_optimum

__all__ = ["crlft_optimum", "crlft_table"]


def crlft_table(demos: Any, n_contexts: int | None, n_arms: int | None, n_classes: int) -> np.ndarray:
    """``D[x, c, y]`` ``(X, C, K)``: :class:`mdpalign.data.LabeledDemoData` (its
    :meth:`~mdpalign.data.LabeledDemoData.weight_table`) or an ``(X, C, K)`` non-negative table."""
    if isinstance(demos, LabeledDemoData):
        data_sizes(demos, "demonstrations", n_contexts, n_arms)
        if demos.n_labels != n_classes:
            raise ProofInputError(f"demonstrations have {demos.n_labels} labels, class_weights give {n_classes}")
        return demos.weight_table()
    if not isinstance(demos, np.ndarray) and not hasattr(demos, "detach"):
        raise ProofInputError(f"demonstrations must be a mdpalign.data.LabeledDemoData or an (X, C, K) table; "
                              f"got {type(demos).__name__}")
    D = proof_array(demos, "demonstrations")
    if D.ndim != 3 or D.shape[1] != n_classes:
        raise ProofInputError(f"demonstration table must be (X, C={n_classes}, K), got {D.shape}")
    expect = D.shape if n_contexts is None or n_arms is None else (n_contexts, n_classes, n_arms)
    return table_array(D, "demonstration table", expect)


def crlft_optimum(
    demos: Any,
    class_weights: Any,
    *,
    conditioned: bool,
    n_contexts: int | None = None,
    n_arms: int | None = None,
) -> Optimum:
    """Optimum of C-RLFT. ``demos``: ``(X, C, K)`` table or :class:`mdpalign.data.LabeledDemoData`.

    ``conditioned=True`` returns an optimum over ``X * C`` states (``state = x * C + c``);
    ``conditioned=False`` over ``X`` states.
    """
    w = proof_array(class_weights, "class_weights").reshape(-1)
    C = len(w)
    if C < 1 or not np.isfinite(w).all() or (w <= 0).any():
        raise ProofInputError(f"class_weights must be finite and > 0, got {w}")
    D = crlft_table(demos, n_contexts, n_arms, C)
    X, _, K = D.shape
    if conditioned:
        return replace(sft_optimum(D.reshape(X * C, K)), objective="crlft_conditioned")
    return replace(sft_optimum(np.einsum("c,xck->xk", w, D)), objective="crlft")
