r"""KL-regularised RL on a contextual bandit: the Gibbs policy, its value, and the exact gap identity.

Objective (per context ``x``, reward ``r(x, y)``, reference ``pi_ref``, ``beta > 0``)::

    J_x(pi) = E_{y ~ pi}[ r(x, y) ] - beta * KL(pi(.|x) || pi_ref(.|x))

Derivation. Write ``pi*(y) = pi_ref(y) exp(r(y)/beta) / Z`` with ``Z = sum_y pi_ref(y) exp(r(y)/beta)``.
Then ``r(y) = beta log(pi*(y)/pi_ref(y)) + beta log Z``, and substituting::

    J(pi) = sum_y pi(y) [ beta log(pi*(y)/pi_ref(y)) + beta log Z - beta log(pi(y)/pi_ref(y)) ]
          = beta log Z - beta KL(pi || pi*).

So ``J(pi*) = beta log Z`` (the soft value), ``J(pi*) - J(pi) = beta KL(pi || pi*) >= 0`` for every
``pi`` (an identity, not a bound), and ``pi*`` is the unique maximiser (KL is 0 only at ``pi*``).
``pi*`` depends on ``r`` only through ``r/beta`` and is unchanged by ``r + c(x)``.

Monotonicity in beta (``t = 1/beta``; ``pi_t ∝ pi_ref exp(t r)``, an exponential family):
``d/dt E_{pi_t}[r] = Var_{pi_t}(r) >= 0`` so ``E[r]`` is non-increasing in beta; and
``KL(pi_t || pi_ref) = t E_t[r] - log Z(t)`` has ``d/dt KL = t Var_t(r) >= 0``, so KL is
non-increasing in beta too. Limits: beta -> 0 gives ``pi_ref`` restricted to ``argmax r``
(renormalised — greedy, ties broken by ``pi_ref``); beta -> infinity gives ``pi_ref``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    check_policy_table,
    log_normalise,
    optimum_from_target,
    proof_array,
)

__all__ = ["kl_rl_optimum", "optimal_soft_value", "kl_rl_value", "kl_rl_gap", "greedy_limit"]


def _check_rewards(rewards: Any, shape: tuple[int, int]) -> np.ndarray:
    r = proof_array(rewards, "rewards")
    if r.ndim == 1:
        r = r[None, :]
    if r.shape != shape:
        raise ProofInputError(f"rewards has shape {r.shape}, ref_policy has shape {shape}")
    if not np.isfinite(r).all():
        raise ProofInputError(f"rewards has non-finite entries at {np.argwhere(~np.isfinite(r))[:5].tolist()}")
    return r


def optimal_soft_value(rewards: Any, ref_policy: Any, beta: float) -> np.ndarray:
    """``V*(x) = beta * log sum_y pi_ref(y|x) exp(r(x,y)/beta)`` ``(X,)``, computed with logsumexp."""
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    return beta * logsumexp(np.log(ref) + r / beta, axis=1)


def kl_rl_optimum(rewards: Any, ref_policy: Any, beta: float) -> UniqueOptimum:
    """``pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x)``; ``extras["values"] = beta log Z(x)``.

    ``rewards`` and ``ref_policy`` are ``(X, K)`` (or ``(K,)``); ``ref_policy`` rows positive and
    summing to 1 (for a bandit ``b``: ``kl_rl_optimum(b.rewards, b.ref_policy, beta)``).
    """
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    log_pi = log_normalise(np.log(ref) + r / beta)
    opt = optimum_from_target(
        "kl_rl",
        None,
        log_target=log_pi,
        derivation="J(pi) = beta log Z - beta KL(pi || pi_ref exp(r/beta)/Z): maximal iff pi = pi*.",
        extras={"values": beta * logsumexp(np.log(ref) + r / beta, axis=1), "beta": beta},
    )
    assert isinstance(opt, UniqueOptimum)  # pi_ref > 0 and finite r: every entry positive
    return opt


def kl_rl_value(
    rewards: Any,
    ref_policy: Any,
    beta: float,
    probs: Any = None,
    *,
    log_probs: Any = None,
    context_probs: Any = None,
) -> np.ndarray | float:
    """Exact ``J_x(pi)`` per context ``(X,)``, or ``sum_x mu(x) J_x`` when ``context_probs`` is given.

    ``0 log 0 = 0``: an arm with ``pi(y|x) = 0`` contributes nothing (KL to a full-support ``pi_ref``
    stays finite).
    """
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    lp = as_log_policy(probs, log_probs=log_probs, shape=ref.shape)
    p = np.exp(lp)
    term = np.where(p > 0, p * (r - beta * (lp - np.log(ref))), 0.0)
    J = term.sum(axis=1)
    if context_probs is None:
        return J
    mu = proof_array(context_probs, "context_probs").reshape(-1)
    if mu.shape != (ref.shape[0],) or (mu < 0).any() or abs(mu.sum() - 1) > 1e-9:
        raise ProofInputError(f"context_probs must be a distribution over {ref.shape[0]} contexts, got {mu}")
    return float(mu @ J)


def kl_rl_gap(rewards: Any, ref_policy: Any, beta: float, probs: Any = None, *, log_probs: Any = None) -> np.ndarray:
    """``beta * KL(pi || pi*)`` per context — equal to ``J(pi*) - J(pi)`` by the identity above."""
    opt = kl_rl_optimum(rewards, ref_policy, beta)
    lp = as_log_policy(probs, log_probs=log_probs, shape=opt.shape)
    p = np.exp(lp)
    return beta * np.where(p > 0, p * (lp - np.log(opt.policy)), 0.0).sum(axis=1)


def greedy_limit(rewards: Any, ref_policy: Any) -> np.ndarray:
    """The beta -> 0 limit of ``pi*``: ``pi_ref`` restricted to ``argmax_y r(x, y)`` and renormalised."""
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    top = r == r.max(axis=1, keepdims=True)
    out = np.where(top, ref, 0.0)
    return out / out.sum(axis=1, keepdims=True)
