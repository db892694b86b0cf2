"""Deterministic full-batch fitting of a small policy, with convergence *asserted*, not hoped for.

``fit(policy_or_params, loss_fn)`` minimises ``loss_fn()`` (a closure returning a scalar tensor) by L-BFGS with a
strong-Wolfe line search (default) or Adam. Converged means the Euclidean norm of the full gradient fell to
``tol`` or below (optionally also a relative loss change below ``loss_tol``). With ``require_convergence=True`` a run
that stops for any other reason (``max_iter``, a stalled line search) raises :class:`NotConvergedError` naming the
final gradient norm.

A training curve instead of a solve — "Adam for exactly N steps, evaluate every K" — is ``fit(..., method="adam",
steps=N, record_every=K, on_record=callback)``: no convergence test stops it early, and ``callback(point)`` runs at
every recorded iterate (steps 0, K, 2K, ..., N) with the parameters at that iterate.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

from mdpalign.checks import as_integer, as_number, check_positive
from mdpalign.errors import MdpalignError

__all__ = ["fit", "record_iterations", "FitResult", "HistoryPoint", "NotConvergedError", "NonFiniteLossError",
           "FitError", "weighted_sum", "FIT_METHODS"]

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


def record_iterations(steps: int, record_every: int) -> list[int]:
    """The iterations at which ``fit(..., steps=steps, record_every=record_every)`` records: 0, k, 2k, ..., steps."""
    its = list(range(0, int(steps) + 1, int(record_every)))
    return its if its[-1] == steps else its + [int(steps)]


def _params(obj) -> list[torch.Tensor]:
    ps: list[torch.Tensor]
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


def _check_arguments(ps, method, dtype, max_iter, tol, loss_tol, steps, lr, record_every,
                     on_record) -> tuple[int, int]:
    """Refuse what :func:`fit` cannot do; the step cap and ``record_every`` as ints."""
    if method not in FIT_METHODS:
        raise FitError(f"unknown method {method!r}; valid: {', '.join(FIT_METHODS)}")
    if dtype is not None:
        for i, p in enumerate(ps):
            if p.dtype != dtype:
                raise FitError(f"parameter {i} has dtype {p.dtype}, fit expected {dtype} (pass dtype=None to allow)")
    if steps is not None:
        if max_iter is not None or loss_tol is not None:
            raise FitError("steps= fixes the number of steps: do not also give max_iter or loss_tol")
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise FitError(f"steps must be an integer >= 0, got {steps!r}")
        max_iter = int(steps)
    elif max_iter is None:
        max_iter = 1000
    whole = as_integer(max_iter)
    if whole is None or whole < 0 or not as_number(tol) >= 0:  # (nan, text, None all fail the >= 0)
        raise FitError(f"need max_iter >= 0 and tol >= 0, got {max_iter!r}, {tol!r}")
    max_iter = whole
    if lr is not None:  # torch's own 'Invalid learning rate' names no argument
        check_positive(lr, "lr", error=FitError)
    if on_record is not None and int(record_every) <= 0:
        raise FitError("on_record needs record_every > 0 (it is called at each recorded iterate)")
    return int(max_iter), int(record_every)


def _optimiser(method: str, ps, lr, history_size: int) -> torch.optim.Optimizer:
    if method == "lbfgs":
        return torch.optim.LBFGS(ps, lr=1.0 if lr is None else lr, max_iter=1, max_eval=30, tolerance_grad=0.0,
                                 tolerance_change=0.0, history_size=history_size, line_search_fn="strong_wolfe")
    return torch.optim.Adam(ps, lr=1e-2 if lr is None else lr)


def fit(
    params,
    loss_fn: Callable[[], torch.Tensor],
    *,
    method: str = "lbfgs",
    max_iter: int | None = None,
    tol: float = 1e-9,
    loss_tol: float | None = None,
    lr: float | None = None,
    dtype: torch.dtype | None = torch.float64,
    record_every: int = 0,
    require_convergence: bool = False,
    history_size: int = 50,
    steps: int | None = None,
    on_record: Callable[[HistoryPoint], None] | None = None,
) -> FitResult:
    """Minimise ``loss_fn()`` over ``params`` (an ``nn.Module``, a tensor, or tensors) in place, full batch.

    * ``method="lbfgs"``: ``torch.optim.LBFGS`` with ``line_search_fn="strong_wolfe"``, one L-BFGS iteration per
      step, ``lr`` (initial step) 1.0. If the line search makes no progress the curvature memory is reset once;
      a second stall stops the run (message says so).
    * ``method="adam"``: ``torch.optim.Adam``, ``lr`` default 1e-2.

    ``max_iter`` (default 1000) caps the optimiser steps of a solve.

    Convergence: ``‖∇‖₂ <= tol`` at the current parameters (checked before every step), or — only if ``loss_tol``
    is given — ``|ΔL| <= loss_tol·max(1, |L|)`` over one step (beware: a loss with no finite minimiser also
    decreases slowly). ``dtype`` (default float64) is asserted on every parameter; pass ``None`` to skip.
    ``record_every=k > 0`` records (iteration, loss, grad_norm) every k steps and at the end. Deterministic: no
    randomness is used. Raises :class:`NonFiniteLossError` on a nan/inf loss or gradient at an accepted iterate.

    ``steps=N``: take exactly N optimiser steps (a training curve, not a solve): neither ``tol`` nor ``loss_tol``
    stops the run early and ``max_iter`` is not used (giving both is an error); ``converged`` still reports whether
    the final gradient norm is ``<= tol``. ``on_record(point)`` (needs ``record_every > 0``) is called with each
    :class:`HistoryPoint` as it is recorded, the parameters then being those of ``point.iteration`` — where a
    benchmark evaluates its metrics. It must not change the parameters.
    """
    ps = _params(params)
    max_iter, record_every = _check_arguments(ps, method, dtype, max_iter, tol, loss_tol, steps, lr, record_every,
                                              on_record)
    fixed = steps is not None
    opt = _optimiser(method, ps, lr, history_size)

    history: list[HistoryPoint] = []

    def record(point: HistoryPoint) -> None:
        history.append(point)
        if on_record is not None:
            on_record(point)

    loss, gnorm = _evaluate(loss_fn, ps)
    it, converged, message, reset_done = 0, False, "", False

    def check_finite():
        if not (math.isfinite(float(loss)) and math.isfinite(gnorm)):
            raise NonFiniteLossError(f"loss {float(loss)} / gradient norm {gnorm} not finite at iteration {it}")

    check_finite()
    if record_every > 0:
        record(HistoryPoint(0, float(loss), gnorm))
    while True:
        if not fixed and gnorm <= tol:
            converged, message = True, f"gradient norm {gnorm:.3e} <= tol {tol:.1e}"
            break
        if it >= max_iter:
            message = f"took the {max_iter} steps asked for" if fixed else f"reached max_iter={max_iter}"
            break
        before = [p.detach().clone() for p in ps] if method == "lbfgs" else None
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
            record(HistoryPoint(it, float(loss), gnorm))
        if method == "lbfgs" and not any(not torch.equal(b, p.detach()) for b, p in zip(before, ps)):
            if reset_done:
                message = "L-BFGS line search made no progress twice (stalled)"
                break
            opt.state.clear()  # drop the curvature memory and retry from steepest descent
            reset_done = True
            continue
        reset_done = False
        if not fixed and loss_tol is not None and abs(float(loss) - prev_loss) <= loss_tol * max(1.0, abs(float(loss))):
            converged, message = True, f"relative loss change <= loss_tol {loss_tol:.1e}"
            break
    if record_every > 0 and (not history or history[-1].iteration != it):
        record(HistoryPoint(it, float(loss), gnorm))
    for p in ps:
        p.grad = None
    if fixed:
        converged = gnorm <= tol
    result = FitResult(converged, it, float(loss), gnorm, history, message)
    if require_convergence and not converged:
        raise NotConvergedError(result, tol)
    return result
