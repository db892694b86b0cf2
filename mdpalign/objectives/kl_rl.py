"""The KL-regularised RL objective on a tabular (context, response) problem, computed exactly."""
from __future__ import annotations

import math

import torch

from mdpalign.objectives.common import (
    InvalidLogProbError,
    ObjectiveArgumentError,
    ShapeError,
    check_beta,
)

__all__ = ["kl_rl_objective", "kl_rl_optimal_log_policy", "normalisation_tolerance"]


def _as_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor")
    if x.ndim == 1:
        return x.unsqueeze(0)
    if x.ndim != 2:
        raise ShapeError(f"{name} must be (Y,) or (X, Y), got shape {tuple(x.shape)}")
    return x


def normalisation_tolerance(dtype: torch.dtype, n: int) -> float:
    """How far ``logsumexp`` of a normalised log-distribution over ``n`` outcomes may lie from 0 in ``dtype``:
    ``eps·(2n + 4·ln n + 4)``.

    Derivation (u = eps/2, the unit roundoff): a ``log_softmax`` entry ``ℓ_i = (z_i − m) − log s`` is off by at
    most about ``e_i = 2u·(|z_i − m| + log s) + (n−1)·u`` (the last term from the rounded sum ``s``), so
    ``exp(ℓ_i)`` by a relative ``e_i``. Since ``p_i <= exp(−(m − z_i))`` and ``d·exp(−d) <= 1/e``,
    ``Σ_i p_i·e_i <= u·(2n/e + 2 ln n + n)``; the check's own logsumexp adds about ``(n+1)·u``. In all
    ``<= u·(2.8n + 2 ln n + 1) <= eps·(1.4n + ln n + 1)``, below the tolerance used.
    It is a worst case (recursive summation); a gross error — logits passed for log-probs, a missing
    normalisation — is off by far more.
    """
    return torch.finfo(dtype).eps * (2 * n + 4 * math.log(n) + 4)


def _first_bad(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def kl_rl_objective(
    log_pi: torch.Tensor,
    log_ref: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    context_probs: torch.Tensor | None = None,
    check_logps: bool = True,
) -> torch.Tensor:
    """``J(pi) = Σ_x μ(x) Σ_y pi(y|x)·[r(x,y) − β·(log pi(y|x) − log pi_ref(y|x))]`` -> scalar, exact.

    Inputs ``(X, Y)`` (or ``(Y,)`` for one context); ``log_pi`` must be normalised per context. ``μ`` defaults to
    uniform over contexts. Terms with ``pi(y|x) = 0`` contribute 0 (the ``0·log 0 = 0`` convention, taken with
    ``where`` so gradients stay finite). This is to be *maximised*; its ascent direction w.r.t. tabular logits is
    ``μ(x)·pi ⊙ (f − E_pi f)``, ``f = r − β·(log pi − log pi_ref)`` (THEORY.md). Optimum:
    :func:`kl_rl_optimal_log_policy`, with ``J(pi*) = β·E_μ log Z(x)`` and ``J(pi*) − J(pi) = β·E_μ KL(pi‖pi*)``.
    Paper: the RLHF objective of DPO (arXiv 2305.18290, Eq. 3).

    Errors (with ``check_logps``, the default): :class:`~mdpalign.objectives.common.InvalidLogProbError` when a
    context's ``logsumexp(log_pi)`` is further from 0 than :func:`normalisation_tolerance` (nan and all ``-inf``
    included), when ``rewards`` is not finite, or when ``log_ref`` holds nan or ``+inf`` (``-inf`` is a zero
    reference probability: where ``pi > 0`` the KL is infinite and ``J = -inf``, the right value). ``log_ref`` need
    not be normalised: an offset ``c`` per context shifts ``J`` and ``β·log Z`` alike, by ``β·c``.
    """
    beta = check_beta(beta)
    lp, lr, r = _as_2d("log_pi", log_pi), _as_2d("log_ref", log_ref), _as_2d("rewards", rewards)
    if not (lp.shape == lr.shape == r.shape):
        raise ShapeError(
            f"log_pi {tuple(log_pi.shape)}, log_ref {tuple(log_ref.shape)} and rewards {tuple(rewards.shape)} must "
            "share a shape"
        )
    if check_logps:
        lse = torch.logsumexp(lp.detach(), dim=-1)
        tol = normalisation_tolerance(lp.dtype, lp.shape[-1])
        off = ~(lse.abs() <= tol)  # nan and -inf (an all -inf row) fail too
        bad_r = ~torch.isfinite(r.detach())
        bad_ref = torch.isnan(lr.detach()) | (lr.detach() == math.inf)
        has_off, has_r, has_ref = torch.stack([off.any(), bad_r.any(), bad_ref.any()]).tolist()
        if has_off:
            x = int(off.nonzero()[0, 0])
            raise InvalidLogProbError(
                f"log_pi is not normalised in context {x}: logsumexp = {lse[x].item():.6g}, more than the "
                f"tolerance {tol:.2g} for {lp.dtype} and {lp.shape[-1]} outcomes from 0 (log_pi must be log-probs, "
                "e.g. log_softmax of logits); pass check_logps=False to skip this check")
        for has, bad, name, t in ((has_r, bad_r, "rewards", r), (has_ref, bad_ref, "log_ref", lr)):
            if has:
                idx = _first_bad(bad)
                v = t[idx].item()
                kind = "nan" if math.isnan(v) else ("+inf" if v > 0 else "-inf")
                raise InvalidLogProbError(
                    f"{name} has {kind} at index {idx}; pass check_logps=False to skip this check"
                )
    n_ctx = lp.shape[0]
    if context_probs is None:
        mu = torch.full((n_ctx,), 1.0 / n_ctx, dtype=lp.dtype, device=lp.device)
    else:
        mu = torch.as_tensor(context_probs, dtype=lp.dtype, device=lp.device).reshape(-1)
        if mu.shape[0] != n_ctx:
            raise ShapeError(f"context_probs must have {n_ctx} entries (one per context), got {mu.shape[0]}")
        if bool((mu < 0).any()) or not torch.isclose(mu.sum(), torch.ones((), dtype=mu.dtype), rtol=0.0,
                                                                 atol=1e-9 if mu.dtype == torch.float64 else 1e-5):
            raise ObjectiveArgumentError(f"context_probs must be a probability vector, got {mu.tolist()}")
    pi = lp.exp()
    support = pi > 0
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    safe_lp = torch.where(support, lp, zero)
    term = torch.where(support, pi * (r - beta * (safe_lp - lr)), zero)
    return (mu * term.sum(dim=-1)).sum()


def kl_rl_optimal_log_policy(log_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """``log pi*(y|x) = log pi_ref(y|x) + r(x,y)/β − log Z(x)``, ``Z(x) = Σ_y pi_ref·exp(r/β)`` (same shape as
    input)."""
    beta = check_beta(beta)
    if log_ref.shape != rewards.shape:
        raise ShapeError(f"log_ref {tuple(log_ref.shape)} and rewards {tuple(rewards.shape)} must share a shape")
    return torch.log_softmax(log_ref + rewards / beta, dim=-1)
