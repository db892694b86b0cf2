r"""Certified roots of small nonlinear systems: damped Newton, then a Krawczyk-type existence test.

Used by the fixed points that have no closed form (GRPO, the regularised Nash equilibrium, the
stable fixed points of the non-KL penalties): each is the root of a smooth ``F: R^n -> R^n`` in
log-probability coordinates, and the answer key must say how far its float64 root can be from the
true one.

Certificate (a Newton–Kantorovich / Krawczyk argument in the sup norm). Let ``x0`` be the computed
root, ``M`` any matrix (we take ``inv(J(x0))``), ``B = {x : ||x - x0||_inf <= rho}`` and ``L`` a bound
on ``||J(x) - J(x0)||_inf / ||x - x0||_inf`` over ``B``. The map ``T(x) = x - M F(x)`` satisfies, on ``B``,
``||T(x) - x0||_inf <= eta + (kappa0 + ||M||_inf L rho) rho`` with ``eta = ||M F(x0)||_inf`` and
``kappa0 = ||I - M J(x0)||_inf``, and is a contraction with constant ``kappa0 + ||M|| L rho``. So if

    eta + (kappa0 + ||M||_inf L rho) rho <= rho     and     kappa0 + ||M||_inf L rho < 1

``T`` maps ``B`` into itself and contracts: ``F`` has exactly one root in ``B``, within ``rho`` of ``x0``
(Banach). Floating point: ``F(x0)`` and ``J(x0)`` are returned with entrywise error bounds (the
callables compute them from the sums of absolute values of their terms, Higham's ``gamma_n``), and
``eta``, ``kappa0`` are inflated by those bounds and by the rounding of the products ``M F``, ``M J``;
``exp``/``log`` are assumed accurate to a few ulps, as numpy's are. The certificate proves
*existence and uniqueness within B*, not that the root is the only one in the whole space.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mdpalign.proofs.base import NoClosedFormError

__all__ = ["gamma", "certified_newton"]

_U = np.finfo(np.float64).eps / 2  # unit roundoff 2^-53


def gamma(n: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: relative error bound of an ``n``-term float64 computation."""
    nu = float(n) * _U
    return nu / (1.0 - nu)


def _newton(F, J, x0, *, max_iter: int, ftol: float) -> np.ndarray:
    x = np.array(x0, dtype=np.float64)
    f = F(x)[0]
    nf = np.abs(f).max()
    for _ in range(max_iter):
        if nf <= ftol:
            break
        try:
            step = np.linalg.solve(J(x)[0], f)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(J(x)[0], f, rcond=None)[0]
        t = 1.0
        while True:
            xn = x - t * step
            fn = F(xn)[0]
            nfn = np.abs(fn).max() if np.all(np.isfinite(fn)) else np.inf
            if nfn < (1 - 1e-4 * t) * nf or t < 1e-10:
                break
            t *= 0.5
        if t < 1e-10 and not nfn < nf:
            break  # no descent: at the rounding floor (or a bad start; the certificate decides)
        x, f, nf = xn, fn, nfn
    return x


def certified_newton(
    F: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    J: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    lipschitz: Callable[[np.ndarray, float], float],
    *,
    what: str,
    max_iter: int = 200,
) -> tuple[np.ndarray, float, float]:
    """Solve ``F(x) = 0`` from ``x0`` and certify: ``(x, rho, residual)`` with ``||x - x*||_inf <= rho``.

    ``F(x)`` and ``J(x)`` return ``(value, error_bound)`` (entrywise bounds on their float64 rounding);
    ``lipschitz(x, rho)`` bounds ``||J(y) - J(x)||_inf / ||y - x||_inf`` for ``||y - x||_inf <= rho``.
    ``residual`` is ``||F(x)||_inf``. Raises :class:`NoClosedFormError` naming ``what`` when Newton does
    not reach a point the certificate accepts.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _certify(F, J, x0, lipschitz, what=what, max_iter=max_iter)


def _certify(F, J, x0, lipschitz, *, what, max_iter):
    x = _newton(F, J, x0, max_iter=max_iter, ftol=0.0)
    f, df = F(x)
    Jx, dJ = J(x)
    n = len(x)
    try:
        M = np.linalg.inv(Jx)
    except np.linalg.LinAlgError as e:
        raise NoClosedFormError(f"{what}: singular Jacobian at the computed root (no certificate)") from e
    nM = np.abs(M).sum(axis=1).max()
    g = gamma(n + 2)
    eta = np.abs(M @ f).max() * (1 + g) + nM * (np.abs(df).max() + g * np.abs(f).max())
    R = np.eye(n) - M @ Jx
    kappa0 = (
        np.abs(R).sum(axis=1).max() + nM * np.abs(dJ).sum(axis=1).max() + g * (np.abs(M) @ np.abs(Jx)).sum(axis=1).max()
    )
    if not (kappa0 < 0.5) or not np.isfinite(eta):
        raise NoClosedFormError(f"{what}: Newton did not converge to a certifiable root (kappa0 = {kappa0:.3g})")
    base = eta / (1 - kappa0)
    for factor in (1.01, 1.1, 1.5, 2.0, 4.0, 10.0):
        rho = max(base * factor, 1e-300)
        L = lipschitz(x, rho)
        contraction = kappa0 + nM * L * rho
        if contraction < 1 and eta + contraction * rho <= rho:
            return x, float(rho), float(np.abs(f).max())
    raise NoClosedFormError(f"{what}: the root could not be certified (eta = {eta:.3g}, kappa0 = {kappa0:.3g})")
