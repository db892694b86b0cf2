"""Call a user's loss function the way frameworks call theirs, and insist on what the check needs from it.

Every kind of loss has one documented call signature (:data:`SIGNATURES`); the function may also accept ``beta=``
(then the check's ``beta`` is passed, so the library's own ``dpo_loss`` works as is) and may return a tensor, a
tuple whose first element is the losses (TRL's ``dpo_loss`` returned ``(losses, chosen_rewards,
rejected_rewards)``) or an object with a ``.losses`` field (mdpalign's ``DPOOutput``).

:func:`probe` runs the function once on a small float64 batch before any fitting and turns each way it can be
unusable into one :class:`~mdpalign.testing.errors.LossCheckError` naming the function and the problem: wrong
signature, an exception, a wrong shape (one loss per example is required: the check weights the examples itself),
a reduction over the batch, lower precision, NaN, or no gradient to the policy's log-probabilities.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from mdpalign.testing.errors import (
    LossCallError,
    LossDtypeError,
    LossNonFiniteError,
    LossNotDifferentiableError,
    LossReductionError,
    LossShapeError,
    LossSignatureError,
)

__all__ = ["SIGNATURES", "KINDS", "loss_name", "call_loss", "probe"]

#: kind -> (argument names in call order, which of them carry the policy's gradient, per-token inputs?)
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "preference": (("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"),
                   ("policy_chosen_logps", "policy_rejected_logps"), False),
    "demonstration": (("token_logps", "mask"), ("token_logps",), True),
    "class_weighted": (("token_logps", "mask", "class_weights"), ("token_logps",), True),
    "reward_model": (("chosen_rewards", "rejected_rewards"), ("chosen_rewards", "rejected_rewards"), False),
    "online_policy": (("token_logps", "old_logps", "ref_logps", "advantages", "mask"), ("token_logps",), True),
}
KINDS = tuple(SIGNATURES)

_f64 = torch.float64


def loss_name(fn: Callable) -> str:
    mod = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod and mod not in ("__main__", "builtins") else str(name)


def _accepts_beta(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "beta" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_signature(fn: Callable, kind: str) -> None:
    names = SIGNATURES[kind][0]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C extension: the probe call will tell
    try:
        sig.bind(*names)
    except TypeError as exc:
        raise LossSignatureError(
            f"{loss_name(fn)}{sig} cannot be called as a {kind} loss fn({', '.join(names)}): {exc}") from None


def _losses_of(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "losses"):
        return out.losses
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return out


def call_loss(fn: Callable, kind: str, args: tuple, beta: float | None) -> torch.Tensor:
    """``fn(*args)`` (plus ``beta=`` when it takes one), reduced to its per-example losses tensor."""
    kw = {"beta": beta} if beta is not None and _accepts_beta(fn) else {}
    try:
        out = fn(*args, **kw)
    except Exception as exc:  # the user's code: any exception is their bug, reported in one line
        raise LossCallError(f"{loss_name(fn)} raised {type(exc).__name__} on valid {kind} inputs: {exc}") from exc
    return _losses_of(out)


def _probe_args(kind: str, B: int, T: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    names, live, per_token = SIGNATURES[kind]

    def logps(shape):
        return -torch.rand(shape, generator=gen, dtype=_f64) * 2.0 - 0.1

    args = []
    for n in names:
        shape = (B, T) if per_token else (B,)
        if n == "mask":
            m = torch.ones(B, T, dtype=torch.bool)
            m[0, -1] = False  # one padded position: a loss that ignores the mask is visible
            args.append(m)
        elif n == "class_weights":
            args.append(torch.rand(B, generator=gen, dtype=_f64) + 0.5)
        elif n == "advantages":
            args.append(torch.randn(B, generator=gen, dtype=_f64))
        elif n in ("chosen_rewards", "rejected_rewards"):
            args.append(torch.randn(B, generator=gen, dtype=_f64))
        else:
            args.append(logps(shape))
    for i, n in enumerate(names):
        if n in live:
            args[i] = args[i].clone().requires_grad_(True)
    return tuple(args)


def probe(fn: Callable, kind: str, beta: float | None = None, *, seed: int = 0) -> None:
    """Check ``fn`` on a small float64 batch; raise the matching :class:`LossCheckError` or return ``None``."""
    if not callable(fn):
        raise LossSignatureError(f"{fn!r} is not callable")
    _check_signature(fn, kind)
    names, live, per_token = SIGNATURES[kind]
    B, T = 3, 2
    args = _probe_args(kind, B, T, seed)
    out = call_loss(fn, kind, args, beta)
    who = loss_name(fn)
    if not isinstance(out, torch.Tensor):
        raise LossShapeError(f"{who} returned {type(out).__name__}, not a torch tensor of {B} per-example losses")
    if out.dim() == 0:
        raise LossReductionError(f"{who} returned a scalar: it reduces over the batch. Return one loss per example, "
                                 f"shape ({B},); the check weights the examples itself")
    if tuple(out.shape) != (B,):
        raise LossShapeError(f"{who} returned shape {tuple(out.shape)} for a batch of {B}; expected ({B},), one loss "
                             "per example" + (" (sum or average over tokens yourself)" if per_token else ""))
    if out.dtype != _f64:
        raise LossDtypeError(f"{who} returned {out.dtype} for float64 inputs: the check certifies in float64; "
                             "do not cast (e.g. .float()) inside the loss")
    if not torch.isfinite(out).all():
        raise LossNonFiniteError(f"{who} returned non-finite losses {out.detach().tolist()} on finite inputs")
    live_args = [a for n, a in zip(names, args) if n in live]
    if not out.requires_grad:
        raise LossNotDifferentiableError(f"{who}'s output carries no gradient to {', '.join(live)} (detached, "
                                         "computed in numpy, or through .item()?)")
    grads = torch.autograd.grad(out.sum(), live_args, allow_unused=True)
    if all(g is None or not torch.any(g != 0) for g in grads):
        raise LossNotDifferentiableError(f"{who}'s output has zero gradient with respect to {', '.join(live)}")
    # per example: the loss of example i may depend on example i only (no batch mean, no sorting, no batch norm)
    with torch.no_grad():
        for i in range(B):
            single = call_loss(fn, kind, tuple(a[i:i + 1].detach() if isinstance(a, torch.Tensor) else a
                                               for a in args), beta)
            if not isinstance(single, torch.Tensor) or tuple(single.shape) != (1,):
                raise LossShapeError(f"{who} returned shape {tuple(getattr(single, 'shape', ()))} for a batch of 1; "
                                     "expected (1,)")
            a, b = float(single[0]), float(out[i])
            if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
                raise LossReductionError(
                    f"{who}'s loss for example {i} is {b:.6g} in a batch of {B} but {a:.6g} alone: it depends on the "
                    "other examples (a batch mean, sort or normalisation); return per-example losses")
