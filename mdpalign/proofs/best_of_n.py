r"""Best-of-n sampling and RAFT (best-of-n, then supervised fine-tuning on the winners, iterated).

Best-of-n of a policy ``pi`` under a reward ``r``: draw ``y_1..y_n ~ pi`` i.i.d., return one with the
largest reward. Group the arms of a context into *reward classes* (equal ``r``, compared exactly) and
let ``F(c) = pi(r <= r_c)``, ``F^-(c) = pi(r < r_c)``, ``m_c = F - F^-`` the class mass. The winner's class
is ``c`` iff every draw has ``r <= r_c`` and not every draw has ``r < r_c``:

    P(class c) = F(c)^n - F^-(c)^n.

Within the winning class, any tie rule that looks only at rewards and positions in the sample
(first maximal index, uniform among the maxima) picks a position independently of which arms of the
class fill the tied positions, and those are i.i.d. ``pi`` restricted to the class. Hence

    pi_n(y) = [F(y)^n - F^-(y)^n] * pi(y) / m_{class(y)}       (ties share in proportion to pi).

Bounds (Beirami et al., arXiv 2401.01879): ``KL(pi_n || pi) <= log n - (n - 1)/n`` — equality for a
reward without atoms; with atoms (a finite bandit always has them) the class-level distribution is a
coarsening of the atomless one (break ties by an independent uniform), so by data processing the KL
is at most the bound, and within-class ratios equal ``pi``'s so they add nothing. Win rate against
an independent ``y ~ pi``: ``P(r(y_n) > r(y)) + P(r(y_n) = r(y))/2 = sum_c (F^n - F^-^n)(F + F^-)/2 <=
sum_c n/(n+1) (F^{n+1} - F^-^{n+1}) = n/(n+1)`` — per class it is ``int_{F^-}^{F} (u - mid) d(u^n) >= 0`` by
Chebyshev's integral inequality (``u - mid`` and ``n u^{n-1}`` both increase) — so the strict win rate is
below ``n/(n+1)`` as well.

RAFT (Dong et al., arXiv 2304.06767) with perfect SFT: each round replaces ``pi`` by ``pi_n``. The top
class mass obeys ``q -> 1 - (1 - q)^n`` (``F = 1`` there), so ``1 - q_t = (1 - q_0)^{n^t}`` -> 0 doubly
exponentially for ``n >= 2``; every other class's mass is at most ``1 - q_t``; within-class ratios never
change. The limit is ``pi_0`` restricted to the argmax-reward class, renormalised — whatever ``n``:
no finite logits (the gaps to the losing classes diverge), :func:`raft_limit`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mdpalign.proofs.base import (
    Optimum,
    ProofInputError,
    check_policy_table,
    optimum_from_target,
)
from mdpalign.proofs.kl_rl import _check_rewards

__all__ = [
    "best_of_n_policy",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "best_of_n_win_rate",
    "raft_iterates",
    "raft_limit",
]


def _check_n(n: Any, name: str = "n") -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ProofInputError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)


def _classes(r_row: np.ndarray, p_row: np.ndarray):
    """Per arm: class mass ``m``, ``F`` and ``F^-`` (classes by exact reward equality)."""
    levels, inv = np.unique(r_row, return_inverse=True)
    mass = np.bincount(inv, weights=p_row, minlength=len(levels))
    F_level = np.cumsum(mass)
    F = F_level[inv]
    m = mass[inv]
    return m, F, np.maximum(F - m, 0.0), inv


def _win_class_prob(F: np.ndarray, m: np.ndarray, n: int) -> np.ndarray:
    """``F^n - (F - m)^n`` without cancellation: ``F^n (1 - (1 - m/F)^n)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(F > 0, m / np.where(F > 0, F, 1.0), 0.0)
        out = F**n * -np.expm1(n * np.log1p(-np.minimum(frac, 1.0)))
    return np.where(m > 0, np.where(frac >= 1.0, F**n, out), 0.0)


def best_of_n_policy(rewards: Any, policy: Any, n: int) -> np.ndarray:
    """``pi_n(y|x) = [F(y)^n - F^-(y)^n] pi(y|x) / pi(class of y | x)`` ``(X, K)`` (module docstring).

    ``rewards`` ``(X, K)`` or ``(K,)``; ``policy`` rows summing to 1 (zeros allowed); ``n >= 1``
    (``n = 1`` returns ``policy``). Reward ties are exact float equality.
    """
    p = check_policy_table(policy, "policy", allow_zero=True)
    r = _check_rewards(rewards, p.shape)
    n = _check_n(n)
    out = np.zeros_like(p)
    for x in range(p.shape[0]):
        m, F, _, _ = _classes(r[x], p[x])
        share = np.where(m > 0, p[x] / np.where(m > 0, m, 1.0), 0.0)
        out[x] = _win_class_prob(F, m, n) * share
    return out


def best_of_n_kl(rewards: Any, policy: Any, n: int) -> np.ndarray:
    """Exact ``KL(pi_n || pi)`` per context ``(X,)`` (``0 log 0 = 0``)."""
    p = check_policy_table(policy, "policy", allow_zero=True)
    pn = best_of_n_policy(rewards, p, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(pn > 0, pn * (np.log(pn) - np.log(np.where(p > 0, p, 1.0))), 0.0)
    return t.sum(axis=1)


def best_of_n_kl_bound(n: int) -> float:
    """``log n - (n - 1)/n`` (Beirami et al., arXiv 2401.01879): an upper bound on ``KL(pi_n || pi)``."""
    n = _check_n(n)
    return float(np.log(n) - (n - 1) / n)


def best_of_n_win_rate(rewards: Any, policy: Any, n: int, *, ties: str = "half") -> np.ndarray:
    """``P(r(y_n) > r(y)) [+ P(r(y_n) = r(y))/2 with ties="half"]`` per context, ``y_n ~ pi_n``, ``y ~ pi``."""
    if ties not in ("half", "strict"):
        raise ProofInputError(f"ties must be 'half' or 'strict', got {ties!r}")
    p = check_policy_table(policy, "policy", allow_zero=True)
    r = _check_rewards(rewards, p.shape)
    pn = best_of_n_policy(r, p, n)
    out = np.zeros(p.shape[0])
    for x in range(p.shape[0]):
        m, _, Fm, _ = _classes(r[x], p[x])
        out[x] = (pn[x] * (Fm + (m / 2 if ties == "half" else 0.0))).sum()
    return out


def raft_iterates(rewards: Any, policy: Any, n: int, rounds: int) -> np.ndarray:
    """``(rounds + 1, X, K)``: ``pi_0 = policy`` and ``pi_{t+1} = best_of_n_policy(r, pi_t, n)`` (perfect SFT)."""
    if not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 0:
        raise ProofInputError(f"rounds must be an integer >= 0, got {rounds!r}")
    n = _check_n(n)
    p = check_policy_table(policy, "policy", allow_zero=True)
    out = [p]
    for _ in range(rounds):
        nxt = best_of_n_policy(rewards, out[-1], n)
        out.append(nxt / nxt.sum(axis=1, keepdims=True))  # rounding only: each row sums to 1 exactly in R
    return np.stack(out)


def raft_limit(rewards: Any, policy: Any) -> Optimum:
    """Iterated RAFT's limit: ``policy`` restricted to the argmax-reward class of each context (any ``n >= 2``).

    A :class:`NoFiniteOptimum` (the logit gaps to the losing classes diverge) unless every arm in the
    support ties, when the start is already the fixed point.
    """
    p = check_policy_table(policy, "policy", allow_zero=True)
    r = _check_rewards(rewards, p.shape)
    top = np.where(p > 0, r, -np.inf)
    top = (r == top.max(axis=1, keepdims=True)) & (p > 0)
    target = np.where(top, p, 0.0)
    target /= target.sum(axis=1, keepdims=True)
    return optimum_from_target(
        "raft",
        target,
        derivation="best-of-n then perfect SFT: the top class mass follows q -> 1 - (1 - q)^n; within-class ratios "
                   "fixed.",
        diverging_if_zero="log-probability gaps to the lower reward classes grow like n^t (doubly exponential mass "
                          "decay)",
        extras={"start": p},
    )
