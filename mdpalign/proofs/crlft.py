r"""C-RLFT (OpenChat, arXiv 2309.11235): class-weighted SFT, with and without class conditioning.

Data: demonstrations ``(x, y, c)`` with population weight ``D[x, c, y]`` (``mu(x) P(c|x) D_c(y|x)``) and
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

from typing import Any

import numpy as np

from mdpalign.proofs.base import Optimum, ProofInputError, demo_table, _to_numpy
from mdpalign.proofs.sft import sft_optimum

__all__ = ["crlft_optimum", "crlft_table"]


def crlft_table(demos: Any, n_contexts: int, n_arms: int, n_classes: int) -> np.ndarray:
    """``D[x, c, y]`` from labelled rows (``context, action, cls, weight``) or an ``(X, C, K)`` array."""
    return demo_table(demos, n_contexts, n_arms, cls_field="cls", n_classes=n_classes)


def crlft_optimum(
    demos: Any,
    class_weights: Any,
    *,
    conditioned: bool,
    n_contexts: int | None = None,
    n_arms: int | None = None,
) -> Optimum:
    """Optimum of C-RLFT. ``demos``: ``(X, C, K)`` table or labelled rows (then give the sizes).

    ``conditioned=True`` returns an optimum over ``X * C`` states (``state = x * C + c``);
    ``conditioned=False`` over ``X`` states.
    """
    w = _to_numpy(class_weights, "class_weights").reshape(-1)
    C = len(w)
    if C < 1 or not np.isfinite(w).all() or (w <= 0).any():
        raise ProofInputError(f"class_weights must be finite and > 0, got {w}")
    if isinstance(demos, np.ndarray):
        D = _to_numpy(demos, "demos")
        if D.ndim != 3 or D.shape[1] != C:
            raise ProofInputError(f"demonstration table must be (X, C={C}, K), got {D.shape}")
        n_contexts, _, n_arms = D.shape
    elif n_contexts is None or n_arms is None:
        raise ProofInputError("labelled rows need n_contexts= and n_arms=")
    D = crlft_table(demos, n_contexts, n_arms, C)
    if conditioned:
        opt = sft_optimum(D.reshape(n_contexts * C, n_arms))
        object.__setattr__(opt, "objective", "crlft_conditioned")
        return opt
    opt = sft_optimum(np.einsum("c,xck->xk", w, D))
    object.__setattr__(opt, "objective", "crlft")
    return opt
