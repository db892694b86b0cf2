"""C-RLFT: class-conditioned, reward-weighted supervised fine-tuning (OpenChat, arXiv 2309.11235)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from mdpalign.objectives.common import (
    ObjectiveArgumentError,
    ShapeError,
    check_beta,
    check_token_inputs,
)
from mdpalign.objectives.sft import sft_pieces

__all__ = [
    "CRLFTOutput",
    "crlft_loss",
    "crlft_reduce",
    "crlft_class_weights",
    "OPENCHAT_CLASS_REWARDS",
    "CRLFT_REDUCTIONS",
]

#: OpenChat's coarse-grained rewards: expert (GPT-4) conversations 1.0, sub-optimal (GPT-3.5) 0.1. OpenChat's
#: training code uses such per-source numbers directly as the loss weight of every sequence of that source.
OPENCHAT_CLASS_REWARDS = (1.0, 0.1)

CRLFT_REDUCTIONS = ("token", "sequence")


class CRLFTOutput(NamedTuple):
    """Per-example pieces, all (B,): losses = weights·nll; nll = token-sum NLL (``token``) or per-sequence mean NLL
    (``sequence``), unweighted; weights; token_count. Reduce with :func:`crlft_reduce`."""

    losses: torch.Tensor
    nll: torch.Tensor
    weights: torch.Tensor
    token_count: torch.Tensor


def crlft_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    reduction: str = "token",
    check_logps: bool = True,
) -> CRLFTOutput:
    """C-RLFT per sequence: ``L_i = w_i · ℓ_i`` with the class weight ``w_i = w_{c(i)}`` (B,) and

    * ``reduction="token"`` (the paper's objective, Eq. for π_c: weighted sequence log-likelihood):
      ``ℓ_i = −Σ_t m_it log pi(y_it | x_i, c_i, y_i,<t)``;
    * ``reduction="sequence"`` (OpenChat's public training code, ``ochat/training_deepspeed/train.py``: each token
      weighted ``w_c / n_i``, the batch scaled by ``1 / Σ_i w_i``): ``ℓ_i = −(1/n_i) Σ_t m_it log p_it``.

    The batch loss is ``Σ_i L_i / Σ_i w_i`` (:func:`crlft_reduce`): OpenChat's normalisation by the sum of the
    weights, which makes the reduced loss invariant to scaling all weights and equal to SFT when they are equal.
    The policy must be conditioned on the class (the caller's job); THEORY.md: with conditioning the weights cancel
    and pi*(·|x, c) = D_c; without it pi ∝ Σ_c w_c P(c|x) D_c. Gradient w.r.t. tabular logits: ``w·(pi − e_y)``.
    Paper: OpenChat, arXiv 2309.11235, where ``w_c = exp(r_c/β)`` (:func:`crlft_class_weights`).

    Errors: weights not finite ``>= 0``; :class:`~mdpalign.objectives.common.InvalidLogProbError` for a counted
    log-prob that is nan, ±inf or above 0 by more than the rounding tolerance (``check_logps=False`` skips it).
    """
    if reduction not in CRLFT_REDUCTIONS:
        raise ObjectiveArgumentError(f"unknown reduction {reduction!r}; valid: {', '.join(CRLFT_REDUCTIONS)}")
    m = check_token_inputs(token_logps, mask, check_logps=check_logps)
    if not isinstance(weights, torch.Tensor) or weights.ndim != 1 or weights.shape[0] != token_logps.shape[0]:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ShapeError(
            f"weights must be a 1-D tensor of length {token_logps.shape[0]} (one per sequence), got {shape}"
        )
    w = weights.to(token_logps.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ObjectiveArgumentError(f"weights must be finite and >= 0, got {w.tolist()[:10]}")
    nll_sum, count = sft_pieces(token_logps, m, check_logps=False)  # checked above
    nll = nll_sum if reduction == "token" else nll_sum / count
    return CRLFTOutput(w * nll, nll, w, count)


def crlft_reduce(output: CRLFTOutput) -> torch.Tensor:
    """Batch C-RLFT loss ``Σ_i w_i ℓ_i / Σ_i w_i`` (OpenChat's normalisation). Error if all weights are 0."""
    total = output.weights.sum()
    if not bool(total > 0):
        raise ObjectiveArgumentError("crlft_reduce: the weights sum to 0; no sequence contributes")
    return output.losses.sum() / total


def crlft_class_weights(class_rewards: Sequence[float] | torch.Tensor, beta: float, normalize: str | None = None,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Class weights ``w_c = exp(r_c / β)`` (the closed form of KL-regularised RL with a class-constant reward,
    OpenChat Eq. 6). ``normalize=None`` returns them as is; ``"max"`` divides by the largest (best class gets 1);
    ``"sum"`` makes them sum to 1. Normalisation does not change :func:`crlft_reduce` (scale invariance).
    The normalised forms are computed in log-space (``exp(r/β − max r/β)``), so no β can overflow them.

    ``normalize=None`` stays the default (the raw weights are what OpenChat's Eq. 6 writes and what reports show),
    but when ``exp(r/β)`` overflows to inf in ``dtype`` — e.g. rewards (1, 0.1) at β = 1e-12 — or every weight
    underflows to 0, it raises :class:`~mdpalign.objectives.common.ObjectiveArgumentError` saying so and pointing to
    ``normalize='max'`` (the raw values would be refused by :func:`crlft_loss` or sum to 0 in :func:`crlft_reduce`).
    One class underflowing to 0 beside a finite best class is the correct limit and is returned.
    """
    if normalize not in (None, "max", "sum"):
        raise ObjectiveArgumentError(f"unknown normalize {normalize!r}; valid: None, 'max', 'sum'")
    beta = check_beta(beta)
    r = torch.as_tensor(class_rewards, dtype=dtype)
    if r.ndim != 1 or r.numel() == 0:
        raise ShapeError(f"class_rewards must be a non-empty 1-D sequence, got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise ObjectiveArgumentError(f"class_rewards must be finite, got {r.tolist()}")
    z = r / beta
    if not bool(torch.isfinite(z).all()):  # only for a beta near the smallest float: no weight is defined
        raise ObjectiveArgumentError(f"crlft_class_weights: r/beta is not finite in {dtype} for rewards {r.tolist()} "
                                     f"and beta {beta:g}; use a larger beta")
    if normalize is None:
        w = torch.exp(z)
        if not bool(torch.isfinite(w).all()):
            raise ObjectiveArgumentError(
                f"crlft_class_weights: exp(r/beta) overflows {dtype} (max r/beta = {z.max().item():.4g}) for "
                f"rewards {r.tolist()} and beta {beta:g}; crlft_reduce is invariant to scaling the weights, so pass "
                "normalize='max' (best class 1, computed in log space) instead")
        if not bool((w > 0).any()):
            raise ObjectiveArgumentError(
                f"crlft_class_weights: every exp(r/beta) would underflow to 0 in {dtype} (max r/beta = "
                f"{z.max().item():.4g}) for rewards {r.tolist()} and beta {beta:g}; pass normalize='max' instead")
        return w
    if normalize == "max":
        return torch.exp(z - z.max())
    return torch.softmax(z, dim=0)  # "sum"
