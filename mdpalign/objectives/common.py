"""Shared pieces of every objective: input checks, sequence log-probabilities, stable log-space helpers.

Conventions (see ARCHITECTURE.md):

* ``token_logps`` is a ``(B, T)`` float tensor of per-token log-probabilities ``log pi(y_t | prefix)``;
  ``mask`` is a ``(B, T)`` tensor (bool, or 0/1 numbers) marking the tokens that *count* (completion tokens).
  Values at non-counted positions are ignored, even if they are ``-inf`` or ``nan``.
* A sequence log-probability is the **sum** over counted tokens; length-averaged variants say so.
* Losses return per-example tensors; the caller reduces.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
import math

import torch

__all__ = [
    "ShapeError",
    "check_token_inputs",
    "check_same_shape",
    "check_sequence_inputs",
    "check_beta",
    "as_bool_mask",
    "masked_token_values",
    "token_counts",
    "sequence_logps",
    "token_logps_from_logits",
    "log1mexp",
    "batch_token_mean",
]

LOG_HALF = -math.log(2.0)


class ShapeError(MdpalignError, ValueError):
    """An objective received tensors of the wrong shape, dtype, or an empty row."""


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype}"
    return f"type {type(x).__name__}"


def as_bool_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a bool tensor; numeric masks must hold only 0 and 1."""
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {_describe(mask)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise ShapeError(f"{name} must contain only 0/1 (or be bool); found {mask[idx].item()} at index {idx}")
        return mask != 0
    raise ShapeError(f"{name} must be bool or 0/1 numbers, got {_describe(mask)}")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise :class:`ShapeError` unless every named tensor has the same shape (names appear in the error)."""
    items = list(tensors.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {_describe(t)}")
    if not items:
        return
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if t.shape != ref.shape:
            shapes = ", ".join(f"{n}{tuple(x.shape)}" for n, x in items)
            raise ShapeError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)} ({shapes})")


def check_token_inputs(token_logps: torch.Tensor, mask: torch.Tensor, name: str = "token_logps") -> torch.Tensor:
    """Validate a ``(B, T)`` float ``token_logps`` and its ``(B, T)`` mask; return the mask as bool.

    Errors (``ShapeError``, a ``ValueError``): not a tensor, not 2-D, not floating point, mask of another shape,
    B == 0 or T == 0, or a row whose mask counts no token (its sequence log-probability would be empty and any
    per-token mean undefined).
    """
    if not isinstance(token_logps, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {_describe(token_logps)}")
    if token_logps.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (batch, tokens), got {_describe(token_logps)}")
    if not token_logps.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {_describe(token_logps)}")
    mask_name = f"mask of {name}"
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"{mask_name} must be a torch.Tensor, got {_describe(mask)}")
    if mask.shape != token_logps.shape:
        raise ShapeError(f"{mask_name} must have shape {tuple(token_logps.shape)} like {name}, got {tuple(mask.shape)}")
    if token_logps.shape[0] == 0 or token_logps.shape[1] == 0:
        raise ShapeError(f"{name} is empty: shape {tuple(token_logps.shape)}")
    m = as_bool_mask(mask, mask_name)
    empty = ~m.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ShapeError(f"{mask_name}: row(s) {rows[:10]} count no token (every row needs at least one counted token)")
    return m


def check_sequence_inputs(**tensors: torch.Tensor) -> None:
    """Validate per-sequence inputs: 1-D floating tensors of one common, non-zero length."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {_describe(t)}")
        if t.ndim != 1:
            raise ShapeError(f"{name} must be 1-D (batch,), got {_describe(t)}")
        if not t.is_floating_point():
            raise ShapeError(f"{name} must be floating point, got {_describe(t)}")
        if t.shape[0] == 0:
            raise ShapeError(f"{name} is empty")
    check_same_shape(**tensors)


def check_beta(beta: float, name: str = "beta") -> float:
    """``beta`` must be a finite number > 0 (a tensor of one element is accepted)."""
    try:
        b = float(beta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite number > 0, got {beta!r}") from exc
    if not math.isfinite(b) or b <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {b}")
    return b


def masked_token_values(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``token_values`` with non-counted positions set to exactly 0 (``where``, so ``-inf`` there cannot leak as nan)."""
    return torch.where(mask, token_values, torch.zeros((), dtype=token_values.dtype, device=token_values.device))


def token_counts(mask: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Number of counted tokens per row, ``n_i = Σ_t m_it``, as ``dtype``."""
    return mask.sum(dim=-1).to(dtype)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sequence log-probability ``log pi(y|x) = Σ_t m_t log pi(y_t | x, y_<t)`` -> ``(B,)``.

    ``average=True`` returns the per-token mean ``Σ_t m_t log p_t / Σ_t m_t`` (ORPO's and TRL-IPO's length-normalised
    log-probability). Reduction: over the counted tokens of each row only.
    """
    m = check_token_inputs(token_logps, mask)
    total = masked_token_values(token_logps, m).sum(dim=-1)
    if average:
        return total / token_counts(m, token_logps.dtype)
    return total


def token_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log-probabilities ``log softmax(logits)[labels]`` -> ``(B, T)``.

    ``logits`` is ``(B, T, V)`` and ``labels`` ``(B, T)`` integer ids *already aligned* with the logits (for a causal
    LM shift first: logits[:, :-1] predict labels[:, 1:]). ``mask`` defaults to ``labels != -100`` (the HF ignore
    index); masked positions return 0 and their label may be any value. ``log_softmax`` runs in the logits' dtype
    (callers who want fp32 from bf16 logits upcast first).
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ShapeError(f"logits must be a 3-D tensor (batch, tokens, vocab), got {_describe(logits)}")
    if not logits.is_floating_point():
        raise ShapeError(f"logits must be floating point, got {_describe(logits)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:2]:
        raise ShapeError(f"labels must have shape {tuple(logits.shape[:2])} (logits without vocab), got {_describe(labels)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ShapeError(f"labels must be integer ids, got {_describe(labels)}")
    m = (labels != -100) if mask is None else as_bool_mask(mask, "mask")
    if m.shape != labels.shape:
        raise ShapeError(f"mask must have shape {tuple(labels.shape)} like labels, got {tuple(m.shape)}")
    vocab = logits.shape[-1]
    safe = torch.where(m, labels, torch.zeros_like(labels))
    bad = m & ((safe < 0) | (safe >= vocab))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ShapeError(f"labels out of range [0, {vocab}) at counted position {idx}: {int(labels[idx])}")
    logps = torch.log_softmax(logits, dim=-1).gather(-1, safe.long().unsqueeze(-1)).squeeze(-1)
    return masked_token_values(logps, m)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x <= 0``, stable (Mächler 2012): ``log(−expm1(x))`` for ``x > −log 2``, else
    ``log1p(−exp(x))``. Returns ``-inf`` at ``x = 0``; ``x > 0`` gives ``nan`` (no real value).

    Both branches are evaluated on inputs clamped into their own range so the unused branch can never inject a
    ``nan`` into the gradient.
    """
    near = x > LOG_HALF
    x_near = torch.where(near, x, torch.full_like(x, LOG_HALF))
    x_far = torch.where(near, torch.full_like(x, LOG_HALF), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def batch_token_mean(token_sums: torch.Tensor, token_counts_: torch.Tensor) -> torch.Tensor:
    """Batch-level token mean ``Σ_i s_i / Σ_i n_i`` (TRL's SFT loss and ORPO's NLL: a mean over all counted tokens of
    the batch, *not* a mean of per-sequence means)."""
    check_same_shape(token_sums=token_sums, token_counts=token_counts_)
    return token_sums.sum() / token_counts_.to(token_sums.dtype).sum()
