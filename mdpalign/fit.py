"""Deterministic full-batch fitting of a small policy, with convergence *asserted*, not hoped for.

``fit(policy_or_params, loss_fn)`` minimises ``loss_fn()`` (a closure returning a scalar tensor) by L-BFGS with a
strong-Wolfe line search (default) or Adam. Converged means the Euclidean norm of the full gradient fell to
``tol`` or below (optionally also a relative loss change below ``loss_tol``). With ``require_convergence=True`` a run
that stops for any other reason (``max_iter``, a stalled line search) raises :class:`NotConvergedError` naming the
final gradient norm.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
import math
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

__all__ = ["fit", "FitResult", "HistoryPoint", "NotConvergedError", "NonFiniteLossError", "FitError",
           "weighted_sum", "FIT_METHODS"]

FIT_METHODS = ("lbfgs", "adam")


class FitError(MdpalignError, ValueError):
    """Bad arguments to :func:`fit` (no parameters, wrong dtype, a loss that is not a scalar...)."""


class NonFiniteLossError(MdpalignError, FloatingPointError):
    """The loss or its gradient became nan/inf at an accepted iterate."""


class HistoryPoint(NamedTuple):
    iteration: int
    loss: float
    grad_norm: float


class FitResult(NamedTuple):
    """converged: grad_norm <= tol (or the loss_tol criterion); iterations: optimiser steps taken; loss and
    grad_norm at the final parameters; history: HistoryPoints every ``record_every`` steps (plus first and last);
    message: why it stopped."""

    converged: bool
    iterations: int
    loss: float
    grad_norm: float
    history: list
    message: str

    @property
    def losses(self) -> list[float]:
        return [h.loss for h in self.history]


class NotConvergedError(MdpalignError, RuntimeError):
    """Raised by ``fit(..., require_convergence=True)`` when the gradient norm did not reach ``tol``."""

    def __init__(self, result: FitResult, tol: float):
        self.result = result
        super().__init__(f"fit did not converge: final gradient norm {result.grad_norm:.3e} > tol {tol:.1e} after "
                         f"{result.iterations} iterations (loss {result.loss:.12g}); {result.message}")


def weighted_sum(losses: torch.Tensor, weight: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``Σ_i w_i L_i`` (population loss with probability-mass weights), or ``/ Σ_i w_i`` when ``normalize``."""
    if losses.shape != weight.shape:
        raise FitError(f"losses shape {tuple(losses.shape)} differs from weight shape {tuple(weight.shape)}")
    w = weight.to(losses.dtype)
    total = (w * losses).sum()
    return total / w.sum() if normalize else total


def _params(obj) -> list[torch.Tensor]:
    if isinstance(obj, nn.Module):
        ps = [p for p in obj.parameters() if p.requires_grad]
    elif isinstance(obj, torch.Tensor):
        ps = [obj]
    elif isinstance(obj, Iterable):
        ps = list(obj)
    else:
        raise FitError(f"fit needs an nn.Module, a tensor or an iterable of tensors; got {type(obj).__name__}")
    if not ps:
        raise FitError("fit got no trainable parameters")
    for i, p in enumerate(ps):
        if not isinstance(p, torch.Tensor) or not p.is_leaf or not p.requires_grad:
            raise FitError(f"parameter {i} must be a leaf tensor with requires_grad=True")
    return ps


def _evaluate(loss_fn, params) -> tuple[torch.Tensor, float]:
    for p in params:
        p.grad = None
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise FitError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    loss = loss.reshape(())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    sq = 0.0
    for p, g in zip(params, grads):
        g = torch.zeros_like(p) if g is None else g
        p.grad = g
        sq += float((g.double() ** 2).sum())
    return loss.detach(), math.sqrt(sq)


def fit(
    params,
    loss_fn: Callable[[], torch.Tensor],
    *,
    method: str = "lbfgs",
    max_iter: int = 1000,
    tol: float = 1e-9,
    loss_tol: float | None = None,
    lr: float | None = None,
    dtype: torch.dtype | None = torch.float64,
    record_every: int = 0,
    require_convergence: bool = False,
    history_size: int = 50,
) -> FitResult:
    """Minimise ``loss_fn()`` over ``params`` (an ``nn.Module``, a tensor, or tensors) in place, full batch.

    * ``method="lbfgs"``: ``torch.optim.LBFGS`` with ``line_search_fn="strong_wolfe"``, one L-BFGS iteration per
      step, ``lr`` (initial step) 1.0. If the line search makes no progress the curvature memory is reset once;
      a second stall stops the run (message says so).
    * ``method="adam"``: ``torch.optim.Adam``, ``lr`` default 1e-2.

    Convergence: ``‖∇‖₂ <= tol`` at the current parameters (checked before every step), or — only if ``loss_tol``
    is given — ``|ΔL| <= loss_tol·max(1, |L|)`` over one step (beware: a loss with no finite minimiser also
    decreases slowly). ``dtype`` (default float64) is asserted on every parameter; pass ``None`` to skip.
    ``record_every=k > 0`` records (iteration, loss, grad_norm) every k steps and at the end. Deterministic: no
    randomness is used. Raises :class:`NonFiniteLossError` on a nan/inf loss or gradient at an accepted iterate.
    """
    ps = _params(params)
    if method not in FIT_METHODS:
        raise FitError(f"unknown method {method!r}; valid: {', '.join(FIT_METHODS)}")
    if dtype is not None:
        for i, p in enumerate(ps):
            if p.dtype != dtype:
                raise FitError(f"parameter {i} has dtype {p.dtype}, fit expected {dtype} (pass dtype=None to allow)")
    try:
        bad_limits = int(max_iter) < 0 or not float(tol) >= 0
    except (TypeError, ValueError, OverflowError):  # not numbers at all: name them, not int()'s complaint
        bad_limits = True
    if bad_limits:
        raise FitError(f"need max_iter >= 0 and tol >= 0, got {max_iter!r}, {tol!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < float("inf")):
        raise FitError(f"lr must be a positive finite number, got {lr!r}")  # torch's own message names no argument
    record_every = int(record_every)

    if method == "lbfgs":
        opt = torch.optim.LBFGS(ps, lr=1.0 if lr is None else lr, max_iter=1, max_eval=30, tolerance_grad=0.0,
                                tolerance_change=0.0, history_size=history_size, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam(ps, lr=1e-2 if lr is None else lr)

    history: list[HistoryPoint] = []
    loss, gnorm = _evaluate(loss_fn, ps)
    it, converged, message, reset_done = 0, False, "", False

    def check_finite():
        if not (math.isfinite(float(loss)) and math.isfinite(gnorm)):
            raise NonFiniteLossError(f"loss {float(loss)} / gradient norm {gnorm} not finite at iteration {it}")

    check_finite()
    if record_every > 0:
        history.append(HistoryPoint(0, float(loss), gnorm))
    while True:
        if gnorm <= tol:
            converged, message = True, f"gradient norm {gnorm:.3e} <= tol {tol:.1e}"
            break
        if it >= max_iter:
            message = f"reached max_iter={max_iter}"
            break
        before = [p.detach().clone() for p in ps]
        prev_loss = float(loss)
        if method == "lbfgs":
            def closure():
                opt.zero_grad(set_to_none=False)
                value = loss_fn().reshape(())
                value.backward()
                return value
            opt.step(closure)
        else:
            opt.step()  # gradients were left in .grad by _evaluate
        it += 1
        loss, gnorm = _evaluate(loss_fn, ps)
        check_finite()
        if record_every > 0 and it % record_every == 0:
            history.append(HistoryPoint(it, float(loss), gnorm))
        moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, ps))
        if method == "lbfgs" and not moved:
            if reset_done:
                message = "L-BFGS line search made no progress twice (stalled)"
                break
            opt.state.clear()  # drop the curvature memory and retry from steepest descent
            reset_done = True
            continue
        reset_done = False
        if loss_tol is not None and abs(float(loss) - prev_loss) <= loss_tol * max(1.0, abs(float(loss))):
            converged, message = True, f"relative loss change <= loss_tol {loss_tol:.1e}"
            break
    if record_every > 0 and (not history or history[-1].iteration != it):
        history.append(HistoryPoint(it, float(loss), gnorm))
    for p in ps:
        p.grad = None
    result = FitResult(converged, it, float(loss), gnorm, history, message)
    if require_convergence and not converged:
        raise NotConvergedError(result, tol)
    return result
