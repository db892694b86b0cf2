"""The floating-point error model behind every certified bound (float64, round to nearest).

``u = 2**-53`` is the unit roundoff and ``gamma_k = k u / (1 - k u)``. The facts used
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., sec. 2.2 and 3.1):

(F1) ``fl(a op b) = (a op b)(1 + e)``, ``|e| <= u``, for ``+ - * /`` (barring overflow and underflow).
(F2) A dot product with ``k`` non-zero terms, summed in any order (BLAS blocking, FMA or not), satisfies
     ``|fl(x . y) - x . y| <= gamma_k sum |x_i y_i|``; an exactly-zero term adds no rounding, so ``k`` is the
     row's count of non-zeros.
(F3) Sterbenz: ``a - b`` is exact when ``b/2 <= a <= 2b``; hence ``1 - gamma`` is exact for ``gamma >= 1/2``.
(F4) numpy's float64 ``exp``, ``expm1``, ``log``, ``log1p`` are accurate to ``TRANSCENDENTAL_ULPS`` ulps,
     i.e. a relative error below ``2 * TRANSCENDENTAL_ULPS * u`` (an assumption about the library; tested
     against ``decimal`` in tests/solve/test_certificates.py).

Every bound below is "first order plus a safety factor": products of ``(1 + e_i)`` are replaced by the sum of
the ``e_i`` and the result is multiplied by ``SAFETY = 1.01``, which covers the neglected higher-order terms
as long as ``k u <= 1e-3`` for every count ``k`` involved (rows of fewer than 10**12 non-zeros).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

__all__ = [
    "U", "EPS", "SAFETY", "TRANSCENDENTAL_ULPS", "gamma_k", "round_up", "round_down", "RowSums", "row_sums",
    "shifted_backup", "exact_q_row", "successor_range",
]

U = 2.0 ** -53
#: float64 machine epsilon, 2 U.
EPS = np.finfo(np.float64).eps
SAFETY = 1.01
#: ulps of error allowed for numpy's float64 exp / expm1 / log / log1p (F4).
TRANSCENDENTAL_ULPS = 8
#: Up to this many entries a dense P also multiplies |W| for the rounding bound (see shifted_backup).
DENSE_EXACT_ABS = 4_000_000


def gamma_k(k):
    """``k u / (1 - k u)`` (Higham's gamma_k), elementwise."""
    k = np.asarray(k, dtype=np.float64)
    return k * U / (1.0 - k * U)


def round_up(x) -> float:
    """The smallest float >= the exact rational ``x`` (a Fraction, int or float)."""
    x = Fraction(x)
    f = float(x)
    return f if Fraction(f) >= x else float(np.nextafter(f, np.inf))


def round_down(x) -> float:
    """The largest float <= the exact rational ``x``."""
    x = Fraction(x)
    f = float(x)
    return f if Fraction(f) <= x else float(np.nextafter(f, -np.inf))


@dataclass(frozen=True)
class RowSums:
    """Per row ``(s, a)`` of ``P`` restricted to the non-terminal columns N, all ``(S, A)``:

    ``nnz`` the row's non-zeros in N (the ``k`` of F2 for ``P W`` with ``W = 0`` off N), ``zeta`` a float with
    ``|zeta - (sum_{s' in N} P(s'|s,a) - 1)| <= eta`` (``zeta`` is minus the probability of entering a
    terminal state plus the float row's defect from 1, which is about 1e-16 and matters at gamma -> 1), and
    ``delta`` the whole row's defect ``sum_s' P(s'|s,a) - 1`` within ``eta_row``. Rows of terminal states are 0.
    """

    nnz: np.ndarray
    zeta: np.ndarray
    eta: np.ndarray
    delta: np.ndarray
    eta_row: np.ndarray


_ROW_SUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def row_sums(mdp) -> RowSums:
    """:class:`RowSums` of an MDP, computed once (cached on the object).

    Exact summation by splitting (Rump, Ogita & Oishi 2008, "Accurate floating-point summation", ExtractScalar):
    with ``sigma = 2**ceil(log2(S + 1)) * 2`` and ``0 <= p <= 1``, ``hi = fl(fl(sigma + p) - sigma)`` is ``p``
    rounded to a multiple of ``ulp(sigma) = 2 sigma u`` and ``lo = p - hi`` is exact with ``|lo| <= sigma u``.
    Every partial sum of at most ``S`` ``hi``'s is a multiple of ``2 sigma u`` below ``sigma`` in size, hence a
    float: ``sum hi`` is exact in any order, and so is ``sum hi - 1``. ``sum lo`` errs by at most
    ``gamma_n sum |lo| <= gamma_n n sigma u`` (about 1e-22 for n = 1000), which with the last rounding is ``eta``.
    """
    cached = _ROW_SUMS.get(mdp)
    if cached is not None:
        return cached
    S, A = mdp.n_states, mdp.n_actions
    keep_col = (~mdp.terminal).astype(np.float64)
    flat = mdp.transition_matrix
    n_max = max(1, S)
    sigma = 2.0 ** (int(np.ceil(np.log2(n_max + 1))) + 1)

    def split(p):
        hi = (sigma + p) - sigma
        return hi, p - hi

    if sp.issparse(flat):
        csr = flat.tocsr()
        rows = np.repeat(np.arange(S * A), np.diff(csr.indptr))
        sums = []
        for data in (csr.data * keep_col[csr.indices], csr.data):
            hi, lo = split(data)
            sums.append((np.bincount(rows, weights=(data != 0), minlength=S * A),
                         np.bincount(rows, weights=hi, minlength=S * A),
                         np.bincount(rows, weights=lo, minlength=S * A),
                         np.bincount(rows, weights=np.abs(lo), minlength=S * A)))
    else:
        dense = np.asarray(flat)
        sums = [tuple(np.empty(S * A) for _ in range(4)) for _ in range(2)]
        step = max(1, 2_000_000 // max(S, 1))  # rows per chunk: bounded temporaries
        for start in range(0, S * A, step):
            block = dense[start:start + step]
            for out, part in zip(sums, (block * keep_col, block)):
                hi, lo = split(part)
                # np.sum (pairwise) of the hi parts is exact, in any order, by the argument above
                for arr, val in zip(out, ((part != 0).sum(axis=1), hi.sum(axis=1), lo.sum(axis=1),
                                          np.abs(lo).sum(axis=1))):
                    arr[start:start + step] = val
    (nnz, hi_n, lo_n, abs_n), (nnz_all, hi_a, lo_a, abs_a) = sums
    zeta = (hi_n - 1.0) + lo_n
    eta = SAFETY * (U * np.abs(zeta) + gamma_k(np.maximum(nnz, 1)) * abs_n)
    delta = (hi_a - 1.0) + lo_a
    eta_row = SAFETY * (U * np.abs(delta) + gamma_k(np.maximum(nnz_all, 1)) * abs_a)
    term_rows = np.repeat(mdp.terminal, A)
    for arr in (nnz, zeta, eta, delta, eta_row):
        arr[term_rows] = 0.0
    out = RowSums(*(arr.reshape(S, A) for arr in (nnz, zeta, eta, delta, eta_row)))
    _ROW_SUMS[mdp] = out
    return out


def shifted_backup(mdp, c: float, W: np.ndarray, with_error: bool = True, normalised: bool = False):
    """``X = R + gamma P W + gamma c zeta`` as (S, A), and a bound ``E >= |X_computed - X_exact|``.

    For the candidate values ``V = c + W`` on the non-terminal states (0 on terminal states, where ``W`` must
    be 0), ``P V = P W + c (1 + zeta)`` exactly, so the Bellman backup is ``Q = gamma c + X``: the large common
    part ``c`` never enters a rounded product with ``P``, which is what makes residuals of values near
    ``R / (1 - gamma)`` cheap to certify. Operations: ``y = fl(P W)`` (F2: ``gamma_k P|W|``), then
    ``fl(fl(R + fl(gamma y)) + fl(fl(gamma c) zeta))``: by F1 the error is at most::

        E = SAFETY * (u (|X| + |R| + 2 gamma |y|) + gamma gamma_k P|W| + |gamma c| (2 u |zeta| + eta))

    with ``P|W|`` from the same matrix product (one product with two right-hand columns; for a dense ``P`` with
    more than ``DENSE_EXACT_ABS`` entries the bound ``max|W| sum_N P`` instead). Terminal rows are 0 with ``E = 0``.
    Without ``with_error`` only ``X`` is returned.

    ``normalised`` (gamma = 1 certificates, with ``c = 0``): the rows are read as exactly normalised
    distributions, ``P(.|s,a) / (1 + delta)``; ``P W / (1 + delta)`` is formed as ``y - y delta'`` with
    ``delta' = delta (1 - delta)`` (off by ``delta^3``), adding ``|y| (eta_row + 2 delta^2 + u)`` to ``E``.
    """
    gamma = mdp.gamma
    rows = row_sums(mdp)
    g = gamma * c
    if with_error and (mdp.is_sparse or mdp.n_states ** 2 * mdp.n_actions <= DENSE_EXACT_ABS):
        both = mdp.expected_next(np.stack([W, np.abs(W)], axis=1))
        y, z = both[..., 0], both[..., 1]
    else:
        y = mdp.expected_next(W)
        # large dense P: a second column would double the cost (BLAS is not memory-bound for 2 columns);
        # P|W| <= max|W| sum_N P, since W = 0 off N
        z = float(np.max(np.abs(W), initial=0.0)) * (1.0 + rows.zeta + rows.eta) * (1 + 2 * U)
    if normalised:
        if c != 0.0:
            raise ValueError("normalised backups are for c = 0")
        dprime = rows.delta * (1.0 - rows.delta)
        y_raw = y
        y = y - y * dprime
    X = mdp.R + gamma * y + g * rows.zeta
    X[mdp.terminal] = 0.0
    if not with_error:
        return X
    E = SAFETY * (U * (np.abs(X) + np.abs(mdp.R) + 2 * gamma * np.abs(y)) + gamma * gamma_k(rows.nnz) * z
                  + abs(g) * (2 * U * np.abs(rows.zeta) + rows.eta))
    if normalised:
        E = E + SAFETY * gamma * np.abs(y_raw) * (1.01 * rows.eta_row + 2 * rows.delta ** 2 + U)
    E[mdp.terminal] = 0.0
    return X, E


def successor_range(mdp, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, A) largest and smallest of ``values`` over each row's non-terminal successors (-inf / inf if none)."""
    S, A = mdp.n_states, mdp.n_actions
    flat = mdp.transition_matrix
    if sp.issparse(flat):
        csr = flat.tocsr()
        keep = ~mdp.terminal[csr.indices]
        rows = np.repeat(np.arange(S * A), np.diff(csr.indptr))[keep]
        vals = values[csr.indices[keep]]
        top = np.full(S * A, -np.inf)
        bottom = np.full(S * A, np.inf)
        np.maximum.at(top, rows, vals)
        np.minimum.at(bottom, rows, vals)
    else:
        inside = (np.asarray(flat) > 0) & ~mdp.terminal[None, :]
        top = np.where(inside, values[None, :], -np.inf).max(axis=1)
        bottom = np.where(inside, values[None, :], np.inf).min(axis=1)
    return top.reshape(S, A), bottom.reshape(S, A)


def exact_q_row(mdp, s: int, a: int, values: np.ndarray, normalised: bool = False) -> Fraction:
    """``R(s,a) + gamma sum_s' P(s'|s,a) values[s']`` in exact rational arithmetic (for the few rows whose
    sign a float computation cannot decide); ``normalised`` divides the row by its exact sum."""
    A = mdp.n_actions
    flat = mdp.transition_matrix
    if sp.issparse(flat):
        row = flat.getrow(s * A + a)
        cols, probs = row.indices, row.data
    else:
        full = np.asarray(flat[s * A + a])
        cols = np.flatnonzero(full)
        probs = full[cols]
    fprobs = [Fraction(float(p)) for p in probs]
    total = sum((p * Fraction(float(values[j])) for p, j in zip(fprobs, cols) if values[j] != 0), Fraction(0))
    mass = sum(fprobs, Fraction(0)) if normalised else Fraction(1)
    return Fraction(float(mdp.R[s, a])) + Fraction(mdp.gamma) * total / mass
