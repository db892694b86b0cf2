"""Shared pieces of every objective: input checks, sequence log-probabilities, stable log-space helpers.

Conventions (see ARCHITECTURE.md):

* ``token_logps`` is a ``(B, T)`` float tensor of per-token log-probabilities ``log pi(y_t | prefix)``;
  ``mask`` is a ``(B, T)`` tensor (bool, or 0/1 numbers) marking the tokens that *count* (completion tokens).
  Values at non-counted positions are ignored, even if they are ``-inf`` or ``nan``.
* At counted positions a log-probability must be finite and ``<= 0`` up to :func:`logp_rounding_tolerance`; every
  objective taking log-probs checks this by default and raises :class:`InvalidLogProbError` naming the tensor and
  the first bad position (``check_logps=False`` skips the check, see :func:`check_token_inputs` for its cost).
* A sequence log-probability is the **sum** over counted tokens; length-averaged variants say so.
* Losses return per-example tensors; the caller reduces.
"""
from __future__ import annotations

import math

import torch

from mdpalign import checks
from mdpalign.errors import MdpalignError

__all__ = [
    "ShapeError",
    "InvalidLogProbError",
    "ObjectiveArgumentError",
    "LOGP_ROUNDING_EPS",
    "logp_rounding_tolerance",
    "check_token_inputs",
    "check_same_shape",
    "check_sequence_inputs",
    "check_sequence_logps",
    "check_beta",
    "check_number",
    "as_bool_mask",
    "masked_token_values",
    "token_counts",
    "sequence_logps",
    "token_logps_from_logits",
    "log1mexp",
    "batch_token_mean",
]

LOG_HALF = -math.log(2.0)

#: A log-probability may exceed 0 by this many machine epsilons of its dtype (rounding); see logp_rounding_tolerance.
LOGP_ROUNDING_EPS = 8


class ShapeError(MdpalignError, ValueError):
    """An objective received tensors of the wrong shape, dtype, or an empty row."""


class InvalidLogProbError(MdpalignError, ValueError):
    """Values given as log-probabilities are not: nan or ±inf where they count, above 0 by more than rounding, or (for
    a distribution) not normalised. The message names the tensor and the first bad position."""


class ObjectiveArgumentError(MdpalignError, ValueError):
    """A scalar or option of an objective outside its domain (beta, label_smoothing, lam, decay, an unknown name)."""


def logp_rounding_tolerance(dtype: torch.dtype) -> float:
    """How far above 0 a value may lie and still be taken for a log-probability: ``8·eps(dtype)``
    (bf16 0.0625, fp16 7.8e-3, fp32 9.5e-7, fp64 1.8e-15).

    The rule: a log-probability computed in ``dtype`` as ``z_y − logsumexp(z)`` carries a rounding error of about
    ``eps·|logsumexp(z)|``. The logits are not seen here, so the rule is written for ``|logsumexp(z)| <= 8``, i.e.
    ``LOGP_ROUNDING_EPS = 8`` epsilons. ``torch.log_softmax`` and the max-subtracted ``z_y − logsumexp(z)``
    (:func:`token_logps_from_logits`, ``mdpalign.llm_bridge``) never return a value above 0 at all — the largest
    logit's log-prob is exactly ``−log Σ exp(z − max) <= 0`` — so the tolerance only matters for log-probs computed
    elsewhere (another library, another summation order, a cast); a value above it is not a log-probability (a logit,
    a reward, a sign error) and would make a negative log-likelihood negative.
    """
    return LOGP_ROUNDING_EPS * torch.finfo(dtype).eps


def _bad_kind(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value == math.inf:
        return "+inf"
    if value == -math.inf:
        return "-inf"
    return "above 0 by more than the rounding tolerance"


def _not_logps(values: torch.Tensor, upper: bool = True) -> torch.Tensor:
    """Bool tensor: where ``values`` is nan, ±inf or (``upper``) above ``logp_rounding_tolerance``."""
    x = values.detach()
    ok = x > -math.inf  # false for nan and -inf
    ok = ok & (x <= logp_rounding_tolerance(x.dtype)) if upper else ok & (x < math.inf)
    return ~ok


def _logp_error(values: torch.Tensor, bad: torch.Tensor, name: str, where: str, upper: bool) -> InvalidLogProbError:
    idx = tuple(int(i) for i in bad.nonzero()[0])
    v = float(values.detach()[idx].double())
    shown = idx[0] if len(idx) == 1 else idx
    n = int(bad.sum())
    rule = f"finite and <= 0 (rounding tolerance {logp_rounding_tolerance(values.dtype):.2g} for {values.dtype})" \
        if upper else "finite"
    return InvalidLogProbError(
        f"{name} has {_bad_kind(v)} at {where} {shown} (value {v!r}); {n} {where}(s) hold no valid log-probability "
        f"(must be {rule}); pass check_logps=False to skip this check"
    )


def check_sequence_logps(upper: bool = True, **tensors: torch.Tensor) -> None:
    """Raise :class:`InvalidLogProbError` unless every named per-sequence tensor is finite and (``upper``) ``<= 0``
    up to :func:`logp_rounding_tolerance`; the message names the tensor and the first bad index. One device sync for
    all of them."""
    bads = {name: _not_logps(t, upper) for name, t in tensors.items()}
    if not bads:
        return
    flags = torch.stack([b.any() for b in bads.values()]).tolist()
    for (name, bad), flag in zip(bads.items(), flags):
        if flag:
            raise _logp_error(tensors[name], bad, name, "index", upper)


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
            raise ShapeError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)} ({shapes})"
            )


def check_token_inputs(token_logps: torch.Tensor, mask: torch.Tensor, name: str = "token_logps",
                       check_logps: bool = False) -> torch.Tensor:
    """Validate a ``(B, T)`` float ``token_logps`` and its ``(B, T)`` mask; return the mask as bool.

    Errors (``ShapeError``, a ``ValueError``): not a tensor, not 2-D, not floating point, mask of another shape,
    B == 0 or T == 0, or a row whose mask counts no token (its sequence log-probability would be empty and any
    per-token mean undefined). With ``check_logps=True`` also :class:`InvalidLogProbError` when a *counted* value
    is nan, ±inf or above 0 by more than :func:`logp_rounding_tolerance` (non-counted values are never looked at).
    Off by default here because this helper also checks tensors that are not log-probs; every objective that takes
    log-probs passes its own ``check_logps`` (default True).

    Cost of the value check: a few element-wise comparisons and one reduction over the ``(B, T)`` tensor (measured
    on CPU, one thread, (64, 2048) float32: ~0.3 ms, about what the masked sum of the loss itself costs). Its flag
    is read in the same transfer as the empty-row check every call makes anyway, so it adds no host-device sync of
    its own; but that read *is* a sync on a GPU (the host waits for the tensor), which is why an objective in a hot
    loop can opt out with ``check_logps=False`` and check the reduced loss instead (as ``llm_bridge``'s trainer does).
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
    if check_logps:
        bad = m & _not_logps(token_logps)
        has_empty, has_bad = torch.stack([empty.any(), bad.any()]).tolist()  # one sync for both checks
    else:
        has_empty, has_bad = bool(empty.any()), False
    if has_empty:
        rows = empty.nonzero().flatten().tolist()
        raise ShapeError(f"{mask_name}: row(s) {rows[:10]} count no token (every row needs at least one counted token)")
    if has_bad:
        raise _logp_error(token_logps, bad, name, "counted position", upper=True)
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


def check_number(value, name: str) -> float:
    """``value`` as a Python float (a tensor of one element is accepted); :class:`ObjectiveArgumentError` naming
    ``name`` when it is not a number (:func:`mdpalign.checks.check_number` with this layer's error)."""
    return checks.check_number(value, name, error=ObjectiveArgumentError)


def check_beta(beta: float, name: str = "beta") -> float:
    """``beta`` must be a finite number > 0 (a tensor of one element is accepted):
    :func:`mdpalign.checks.check_positive`."""
    return checks.check_positive(beta, name, error=ObjectiveArgumentError)


def masked_token_values(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``token_values`` with non-counted positions set to exactly 0 (``where``, so ``-inf`` there cannot leak as
    nan)."""
    return torch.where(mask, token_values, torch.zeros((), dtype=token_values.dtype, device=token_values.device))


def token_counts(mask: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Number of counted tokens per row, ``n_i = Σ_t m_it``, as ``dtype``."""
    return mask.sum(dim=-1).to(dtype)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False,
                   check_logps: bool = True) -> torch.Tensor:
    """Sequence log-probability ``log pi(y|x) = Σ_t m_t log pi(y_t | x, y_<t)`` -> ``(B,)``.

    ``average=True`` returns the per-token mean ``Σ_t m_t log p_t / Σ_t m_t`` (ORPO's and TRL-IPO's length-normalised
    log-probability). Reduction: over the counted tokens of each row only. ``check_logps``: refuse nan/±inf/positive
    counted values (:func:`check_token_inputs`).
    """
    m = check_token_inputs(token_logps, mask, check_logps=check_logps)
    total = masked_token_values(token_logps, m).sum(dim=-1)
    if average:
        return total / token_counts(m, token_logps.dtype)
    return total


def token_logps_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
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
        raise ShapeError(
            f"labels must have shape {tuple(logits.shape[:2])} (logits without vocab), got {_describe(labels)}"
        )
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
