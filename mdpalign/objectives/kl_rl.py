"""The KL-regularised RL objective on a tabular (context, response) problem, computed exactly."""
from __future__ import annotations

import torch

from mdpalign.objectives.common import ShapeError, check_beta

__all__ = ["kl_rl_objective", "kl_rl_optimal_log_policy"]


def _as_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor")
    if x.ndim == 1:
        return x.unsqueeze(0)
    if x.ndim != 2:
        raise ShapeError(f"{name} must be (Y,) or (X, Y), got shape {tuple(x.shape)}")
    return x


def kl_rl_objective(
    log_pi: torch.Tensor,
    log_ref: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    context_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """``J(pi) = Σ_x μ(x) Σ_y pi(y|x)·[r(x,y) − β·(log pi(y|x) − log pi_ref(y|x))]`` -> scalar, exact.

    Inputs ``(X, Y)`` (or ``(Y,)`` for one context); ``log_pi`` must be normalised per context. ``μ`` defaults to
    uniform over contexts. Terms with ``pi(y|x) = 0`` contribute 0 (the ``0·log 0 = 0`` convention, taken with
    ``where`` so gradients stay finite). This is to be *maximised*; its ascent direction w.r.t. tabular logits is
    ``μ(x)·pi ⊙ (f − E_pi f)``, ``f = r − β·(log pi − log pi_ref)`` (THEORY.md). Optimum:
    :func:`kl_rl_optimal_log_policy`, with ``J(pi*) = β·E_μ log Z(x)`` and ``J(pi*) − J(pi) = β·E_μ KL(pi‖pi*)``.
    Paper: the RLHF objective of DPO (arXiv 2305.18290, Eq. 3).
    """
    beta = check_beta(beta)
    lp, lr, r = _as_2d("log_pi", log_pi), _as_2d("log_ref", log_ref), _as_2d("rewards", rewards)
    if not (lp.shape == lr.shape == r.shape):
        raise ShapeError(f"log_pi {tuple(log_pi.shape)}, log_ref {tuple(log_ref.shape)} and rewards {tuple(rewards.shape)} must share a shape")
    n_ctx = lp.shape[0]
    if context_probs is None:
        mu = torch.full((n_ctx,), 1.0 / n_ctx, dtype=lp.dtype, device=lp.device)
    else:
        mu = torch.as_tensor(context_probs, dtype=lp.dtype, device=lp.device).reshape(-1)
        if mu.shape[0] != n_ctx:
            raise ShapeError(f"context_probs must have {n_ctx} entries (one per context), got {mu.shape[0]}")
        if bool((mu < 0).any()) or not torch.isclose(mu.sum(), torch.ones((), dtype=mu.dtype), rtol=0.0,
                                                                 atol=1e-9 if mu.dtype == torch.float64 else 1e-5):
            raise ValueError(f"context_probs must be a probability vector, got {mu.tolist()}")
    pi = lp.exp()
    support = pi > 0
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    safe_lp = torch.where(support, lp, zero)
    term = torch.where(support, pi * (r - beta * (safe_lp - lr)), zero)
    return (mu * term.sum(dim=-1)).sum()


def kl_rl_optimal_log_policy(log_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """``log pi*(y|x) = log pi_ref(y|x) + r(x,y)/β − log Z(x)``, ``Z(x) = Σ_y pi_ref·exp(r/β)`` (same shape as input)."""
    beta = check_beta(beta)
    if log_ref.shape != rewards.shape:
        raise ShapeError(f"log_ref {tuple(log_ref.shape)} and rewards {tuple(rewards.shape)} must share a shape")
    return torch.log_softmax(log_ref + rewards / beta, dim=-1)
