r"""ORPO on a bandit (one-token responses, NLL on the chosen response only).

Per-example loss (ORPO, arXiv 2403.07691; ``lam`` is the paper's lambda, TRL's ``beta``)::

    l(c, r) = - log pi(c) + lam * ( - log sigma( logodds pi(c) - logodds pi(r) ) ),   logodds p = log p - log(1 - p)

With one-token responses the length-averaged log-prob is ``log pi`` itself. Population loss:
``L = sum_{x,c,r} W[x,c,r] l(c, r)``. No reference policy is involved.

1. **One chosen, one rejected arm** (per context): no stationary point. ``dl/dtheta_c < 0`` for every
   finite ``theta``: ``-log pi_c`` has derivative ``-(1 - pi_c) < 0``; ``logodds pi_c`` increases with
   ``theta_c``, and ``pi_r`` decreases (``d pi_r/d theta_c = -pi_r pi_c``), so ``logodds pi_r`` decreases and
   the log-sigmoid term decreases too. Every minimising sequence tends to ``pi = delta_c``; the
   infimum is 0.
2. **Disjoint chosen and rejected supports** (general ``K``): let ``D_w(y|x) ∝ sum_r W[x,y,r]`` and
   ``n(x) = sum W[x]``. Then ``L >= sum_x n(x) [H(D_w) + KL(D_w || pi)] >= sum_x n(x) H(D_w)`` (the λ-term is
   ``> 0``); the bound is approached as ``pi -> D_w``: on that path ``logodds pi_c`` stays finite
   (when ``D_w`` has two or more arms) and ``logodds pi_r -> -inf`` for rejected arms (their ``pi_r -> 0``),
   so the λ-term -> 0. Conversely every minimising sequence has ``KL(D_w || pi) -> 0``, so
   ``pi -> D_w``: ORPO and SFT share the tabular limit, and the infimum ``n H(D_w)`` is not attained.
   Case 1 is the special case ``D_w = delta_c``.
3. **K = 2, contradictory preferences** ``W[a,b] = q n``, ``W[b,a] = (1 - q) n``, ``0 < q < 1``: with
   ``u = theta_a - theta_b`` we have ``pi_a = sigma(u)``, ``logodds pi_a = u = -logodds pi_b``, and
   ``L/n = q[-log sigma(u) - lam log sigma(2u)] + (1-q)[-log sigma(-u) - lam log sigma(-2u)]``.
   ``dL/du / n = sigma(u) + 2 lam sigma(2u) - q(1 + 2 lam)`` (using ``sigma(-v) = 1 - sigma(v)``), strictly
   increasing in ``u`` from ``-q(1+2lam)`` to ``(1-q)(1+2lam)``: a unique root ``u*``, the unique minimiser.
   **Correction to THEORY.md ("it sharpens q")**: it *flattens* q. At ``u0 = logit q`` the left side is
   ``q + 2 lam sigma(2 logit q)`` and ``sigma(2 logit q) = q^2/(q^2 + (1-q)^2)`` exceeds ``q`` for ``q > 1/2``,
   so ``u* < logit q``: ``pi_a = sigma(u*)`` lies strictly between ``1/2`` and ``q`` (for ``q > 1/2``; symmetric
   below). The odds-ratio term alone would give ``u = logit(q)/2``; NLL alone ``u = logit q``; ORPO lands
   between them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, log_expit

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    NoClosedFormError,
    NoFiniteOptimum,
    Optimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    pair_table,
    pinned_all_pairs,
    pinned_array,
    proof_array,
)

__all__ = ["orpo_optimum", "orpo_two_arm_root", "orpo_population_loss", "log_odds"]


def log_odds(log_p: np.ndarray) -> np.ndarray:
    """``log p - log(1 - p)`` from ``log p`` (float64, ``log1p(-exp)`` / ``log(-expm1)`` switch at log 2)."""
    log_p = proof_array(log_p, "log_p")
    with np.errstate(divide="ignore"):
        l1m = np.where(log_p < -np.log(2), np.log1p(-np.exp(log_p)), np.log(-np.expm1(log_p)))
    return log_p - l1m


def orpo_two_arm_root(q: float, lam: float) -> float:
    """Root ``u*`` of ``sigma(u) + 2 lam sigma(2u) = q (1 + 2 lam)``: the optimal ``log pi_a - log pi_b``."""
    lam = check_positive(lam, "lam", allow_zero=True, error=ProofInputError)
    if not (0 < q < 1):
        raise ProofInputError(f"q must be in (0, 1) for a finite optimum, got {q!r}")
    f = lambda u: expit(u) + 2 * lam * expit(2 * u) - q * (1 + 2 * lam)  # noqa: E731
    # the root lies between logit(q)/2 and logit(q) (see the module docstring); widen for safety
    lo, hi = -60.0, 60.0
    return float(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))


def orpo_population_loss(pairs: Any, lam: float, probs: Any = None, *, log_probs: Any = None, shape=None) -> float:
    """Exact population ORPO loss (numpy float64) for a win table ``(X, K, K)`` or
    :class:`mdpalign.data.PreferenceData`."""
    lam = check_positive(lam, "lam", allow_zero=True, error=ProofInputError)
    W = pair_table(pairs, *(shape if shape is not None else (None, None)))
    shape = W.shape[:2]
    lp = as_log_policy(probs, log_probs=log_probs, shape=tuple(shape))
    lo = log_odds(lp)
    z = lo[:, :, None] - lo[:, None, :]
    per = -lp[:, :, None] - lam * log_expit(z)
    return float(np.where(W > 0, W * per, 0.0).sum())


def orpo_optimum(pairs: Any, lam: float, n_contexts: int | None = None, n_arms: int | None = None) -> Optimum:
    """Characterise the ORPO minimisers in the cases with a closed form (module docstring, 1-3).

    ``pairs``: win table ``(X, K, K)`` or :class:`mdpalign.data.PreferenceData`. Raises
    :class:`NoClosedFormError` for a context that is neither disjoint-support nor the two-arm
    contradictory case.
    """
    lam = check_positive(lam, "lam", allow_zero=True, error=ProofInputError)
    W = pair_table(pairs, n_contexts, n_arms)
    X, K = W.shape[:2]
    policy = np.full((X, K), np.nan)
    constrained = np.zeros(X, bool)
    infimum = 0.0
    attained_rows = []
    roots = np.full(X, np.nan)
    for x in range(X):
        n = W[x].sum()
        if n <= 0:
            attained_rows.append(True)
            continue
        constrained[x] = True
        chosen = W[x].sum(axis=1)
        rejected = W[x].sum(axis=0)
        if not ((chosen > 0) & (rejected > 0)).any():
            dw = chosen / n
            policy[x] = dw
            ent = -np.where(dw > 0, dw * np.log(np.where(dw > 0, dw, 1.0)), 0.0).sum()
            infimum += n * ent
            attained_rows.append(False)
        elif K == 2:
            q = W[x, 0, 1] / n
            u = orpo_two_arm_root(q, lam)
            roots[x] = u
            policy[x] = [expit(u), expit(-u)]
            infimum += n * (
                q * (-log_expit(u) - lam * log_expit(2 * u)) + (1 - q) * (-log_expit(-u) - lam * log_expit(-2 * u))
            )
            attained_rows.append(True)
        else:
            raise NoClosedFormError(
                f"context {x}: some arm is both chosen and rejected with K = {K} > 2; ORPO has no closed form there"
            )
    vanishing = constrained[:, None] & (np.nan_to_num(policy, nan=1.0) <= 0)
    rows: list = []
    for x in np.flatnonzero(constrained):
        sup = np.flatnonzero(policy[x] > 0)
        rows += pinned_all_pairs(int(x), sup, np.log(np.where(policy[x] > 0, policy[x], 1.0)))
    attained = all(attained_rows)
    common = dict(
        objective="orpo",
        shape=(X, K),
        policy=policy if constrained.all() else None,
        pinned=pinned_array(rows),
        vanishing=vanishing,
        constrained=constrained,
        attained=attained,
        infimum=infimum,
        extras={"two_arm_roots": roots, "lam": lam, "win_table": W},
    )
    if not attained:
        return NoFiniteOptimum(
            diverging="logits of rejected (and never-chosen) arms -> -inf; ORPO loss -> n H(D_w), never reached",
            derivation="disjoint chosen/rejected supports: L >= n[H(D_w) + KL(D_w || pi)], approached only as "
            "pi -> D_w",
            **common,
        )
    if not constrained.all():
        return PinnedDifferences(
            derivation="contexts without pairs are free; K = 2 contradictory rows pinned", **common
        )
    return UniqueOptimum(derivation="K = 2 contradictory: root of sigma(u) + 2 lam sigma(2u) = q(1 + 2 lam)", **common)
