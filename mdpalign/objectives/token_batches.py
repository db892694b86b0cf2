"""Input checks for the online-RL objectives, whose tensors may carry leading batch dimensions.

The offline objectives take ``(B, T)`` token tensors. The online ones (KL estimators, advantages, PPO-clip, token
aggregation, GAE) also accept ``(..., B, T)``: every leading index is an independent batch (one sampled batch of a
Monte-Carlo estimate, one enumerated group of an exact expectation), and reductions act on the last one or two
dimensions only. With no leading dimensions they are exactly the ``(B, T)`` convention of
:mod:`mdpalign.objectives.common`: ``mask`` marks the counted (completion) tokens, values at other positions are
ignored even when they are ``-inf`` or ``nan``.

**Stop-gradients are the caller's.** Inputs that are constants of a loss — the sampling policy's log-probs
(``old_token_logps``), rewards, advantages, old values, returns — are used as given, not detached: a trainer computes
them under ``torch.no_grad()`` (as TRL does), and the exact harness (:mod:`mdpalign.harness.online`) differentiates
*through* them to get the Jacobian of the expected-update field. The one stop-gradient inside a formula is the
on-policy default ``old_token_logps=None`` -> ``token_logps.detach()`` (REINFORCE: ``ρ = 1``, ``∇ρ = ∇log pi``).
Passing the live ``token_logps`` themselves as ``old_token_logps`` is an error (``ρ ≡ 1`` would have no gradient).
Metrics in the outputs (ratios, margins, accuracies, clip flags) are detached.
"""
from __future__ import annotations

import torch

from mdpalign.checks import check_positive
from mdpalign.objectives.common import ObjectiveArgumentError, ShapeError, as_bool_mask

__all__ = ["check_batched_tokens", "check_float_tensor", "check_option", "check_nonnegative", "zero_where_masked"]


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype}"
    return f"type {type(x).__name__}"


def check_float_tensor(x, name: str, min_ndim: int = 1) -> torch.Tensor:
    """``x`` must be a floating-point tensor with at least ``min_ndim`` dimensions and no zero-size dimension."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {_describe(x)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {_describe(x)}")
    if x.ndim < min_ndim:
        raise ShapeError(f"{name} must have at least {min_ndim} dimension(s), got {_describe(x)}")
    if x.numel() == 0:
        raise ShapeError(f"{name} is empty: shape {tuple(x.shape)}")
    return x


def check_batched_tokens(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """Every named tensor must be a floating ``(..., B, T)`` tensor of one common shape, and ``mask`` (bool or 0/1)
    of that shape too; returns the mask as bool. The first named tensor fixes the shape; errors name the culprit."""
    items = list(tensors.items())
    ref_name, ref = items[0]
    check_float_tensor(ref, ref_name, min_ndim=2)
    for name, t in items[1:]:
        check_float_tensor(t, name, min_ndim=1)
        if t.shape != ref.shape:
            raise ShapeError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"mask must be a torch.Tensor, got {_describe(mask)}")
    if mask.shape != ref.shape:
        raise ShapeError(f"mask must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(mask.shape)}")
    return as_bool_mask(mask, "mask")


def check_option(value, options: tuple, name: str):
    """``value`` must be one of ``options`` (the module's single option tuple)."""
    if value not in options:
        raise ObjectiveArgumentError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, options))}")
    return value


def check_nonnegative(value, name: str, *, strict: bool = False) -> float:
    """A finite number ``>= 0`` (``> 0`` when ``strict``): :func:`mdpalign.checks.check_positive`."""
    return check_positive(value, name, allow_zero=not strict, error=ObjectiveArgumentError)


def zero_where_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with non-counted positions set to exactly 0 (``where``: a ``nan``/``inf`` there cannot leak into
    the value or the gradient)."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
