"""Linear solves of policy evaluation: ``(I - gamma P_pi) V = r_pi`` on the non-terminal states (dense LAPACK,
sparse SuperLU or GMRES + ILU by size), and iterative refinement of an evaluation."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import (
    U,
    row_sums,
)
from mdpalign.solve.results import SolverError

#: Below this many unknowns the policy-evaluation system is solved densely (LAPACK).
DENSE_LIMIT = 1500
#: From this many unknowns a dense evaluation first tries a short GMRES run (see make_solver).
DENSE_KRYLOV_MIN = 400
#: Up to this many unknowns a sparse system is factorised (SuperLU); above it GMRES + ILU.
SPARSE_DIRECT_LIMIT = 300_000

def _restrict(M, idx: np.ndarray):
    if sp.issparse(M):
        M = M.tocsr()[idx][:, idx]
        return M
    return M[np.ix_(idx, idx)]


def deterministic_P(mdp: TabularMDP, policy: np.ndarray):
    """``P_pi`` (S x S), dense or CSR, for a deterministic policy (no Python loop)."""
    S, A = mdp.n_states, mdp.n_actions
    if mdp.is_sparse:
        return mdp.transition_matrix[np.arange(S) * A + policy]
    return mdp.P[np.arange(S), policy]


def make_solver(M, method: str = "auto"):
    """A function ``b -> x`` solving ``M x = b`` for a policy-evaluation matrix ``M = I - gamma P_pi`` (restricted).

    ``method``: ``"direct"`` (LAPACK for dense or small, SuperLU for sparse; the factorisation is kept, so
    further right-hand sides — iterative refinement, expected steps — cost a triangular solve), ``"gmres"``
    (GMRES with an incomplete-LU preconditioner) or ``"auto"`` (dense LAPACK below 1500 unknowns, SuperLU up to
    300k, GMRES above; a dense system from 400 unknowns first tries at most n/20 GMRES mat-vecs, which suffice
    for fast-mixing chains such as random dense MDPs, before falling back to LU). The returned function takes
    an optional warm start ``x0`` (used by GMRES).
    """
    if method not in ("auto", "direct", "gmres"):
        raise SolverError(f"linear_solver must be 'auto', 'direct' or 'gmres'; got {method!r}")
    n = M.shape[0]
    if n == 0:
        return _Solver(M, lambda b, x0=None: np.zeros(0))
    state = {}

    def lu(b):
        if "lu" not in state:
            if not sp.issparse(M) or n <= DENSE_LIMIT:
                Md = M.toarray() if sp.issparse(M) else np.asarray(M)
                with warnings.catch_warnings():  # an exactly singular factor is reported below, as an error
                    warnings.simplefilter("ignore", sla.LinAlgWarning)
                    factor = sla.lu_factor(Md, check_finite=False)
                if not np.all(np.abs(np.diag(factor[0])) > 0):
                    raise sla.LinAlgError("singular matrix: the policy-evaluation system has no unique solution")
                state["lu"] = lambda rhs: sla.lu_solve(factor, rhs, check_finite=False)
            else:
                state["lu"] = spla.splu(sp.csc_matrix(M), permc_spec="COLAMD").solve
        return state["lu"](b)

    def krylov(b, x0, rtol=1e-14):
        Mc = state.setdefault("csc", sp.csc_matrix(M))
        if "prec" not in state:
            try:
                ilu = spla.spilu(Mc, drop_tol=1e-6, fill_factor=20)
                state["prec"] = spla.LinearOperator(Mc.shape, ilu.solve)
            except RuntimeError:  # singular ILU factor: run unpreconditioned
                state["prec"] = None
        x, info = spla.gmres(Mc, b, x0=x0, rtol=rtol, atol=0.0, restart=50, maxiter=200, M=state["prec"])
        if info != 0:
            x, info = spla.bicgstab(Mc, b, x0=x, rtol=rtol, atol=0.0, maxiter=5000, M=state["prec"])
        return x

    if method == "gmres":
        return _Solver(M, lambda b, x0=None, rtol=1e-14: krylov(b, x0, rtol))
    if method == "direct" or sp.issparse(M) or n < DENSE_KRYLOV_MIN:
        if method == "auto" and sp.issparse(M) and n > SPARSE_DIRECT_LIMIT:
            return _Solver(M, lambda b, x0=None, rtol=1e-14: krylov(b, x0, rtol))
        return _Solver(M, lambda b, x0=None, rtol=None: lu(b))

    def dense_auto(b, x0=None, rtol=1e-12):
        # A dense LU costs ~n^3 flops, a mat-vec 2 n^2: try GMRES with at most n/20 mat-vecs first.
        if not state.get("gmres_failed"):
            restart = max(10, min(60, n // 20))
            x, info = spla.gmres(np.asarray(M), b, x0=x0, rtol=rtol, atol=0.0, restart=restart, maxiter=1)
            if info == 0:
                return x
            state["gmres_failed"] = True
        return lu(b)

    return _Solver(M, dense_auto)


class _Solver:
    """``solver(b, x0=None, rtol=None)`` solves ``M x = b`` (``rtol`` loosens an iterative method's tolerance:
    enough for a refinement correction); ``solver.matrix`` is ``M`` (for refinement residuals)."""

    def __init__(self, matrix, solve):
        self.matrix, self._solve = matrix, solve

    def __call__(self, b, x0=None, rtol=None):
        return self._solve(b, x0) if rtol is None else self._solve(b, x0, rtol)


def solve_linear(M, b: np.ndarray, method: str = "auto", x0: np.ndarray | None = None) -> np.ndarray:
    """Solve ``M x = b`` once (see :func:`make_solver` for the methods)."""
    return make_solver(M, method)(b, x0)


def evaluation_system(mdp: TabularMDP, P, gamma: float | None = None):
    """``I - gamma P`` restricted to the non-terminal states (dense or CSR, like ``P``)."""
    gamma = mdp.gamma if gamma is None else gamma
    nonterm = np.flatnonzero(~mdp.terminal)
    Pn = _restrict(P, nonterm) if nonterm.size < mdp.n_states else P
    n = nonterm.size
    if sp.issparse(Pn):
        return sp.identity(n, format="csr") - gamma * sp.csr_matrix(Pn)
    return np.eye(n) - gamma * np.asarray(Pn)


def evaluate_deterministic(mdp: TabularMDP, policy: np.ndarray, method: str = "auto",
                           x0: np.ndarray | None = None, return_solver: bool = False):
    """``V^pi`` for a deterministic policy: ``(I - gamma P_pi) V = r_pi`` on the non-terminal states.

    At gamma = 1 the policy must be proper (else the matrix is singular). ``return_solver`` also returns the
    factorised solver of :func:`make_solver` (for refinement and expected steps).
    """
    S = mdp.n_states
    r = mdp.R[np.arange(S), policy]
    solver = make_solver(evaluation_system(mdp, deterministic_P(mdp, policy)), method)
    nonterm = ~mdp.terminal
    V = np.zeros(S)
    V[nonterm] = solver(r[nonterm], None if x0 is None else x0[nonterm])
    return (V, solver) if return_solver else V


def _evaluate_from(mdp: TabularMDP, P, r: np.ndarray, method: str = "auto", x0=None,
                   gamma: float | None = None) -> np.ndarray:
    nonterm = ~mdp.terminal
    V = np.zeros(mdp.n_states)
    V[nonterm] = solve_linear(evaluation_system(mdp, P, gamma), r[nonterm], method,
                              None if x0 is None else x0[nonterm])
    return V


def refine_evaluation(mdp: TabularMDP, policy: np.ndarray, V: np.ndarray, solver, shift: bool,
                      steps: int = 3) -> tuple[float, np.ndarray]:
    """Iterative refinement of ``V ~ V^pi`` in the shifted form ``c + W`` (``c = 0`` unless ``shift``).

    The residual ``T^pi V - V = (R_pi + gamma c zeta_pi - c (1 - gamma)) - (I - gamma P_pi) W`` (the identity of
    :func:`~mdpalign.solve._rounding.shifted_backup` on the policy's rows) is rounded at the scale of ``W`` (the
    values relative to their midrange) instead of ``|V|``; a correction solve with the kept factorisation then
    brings ``W`` to the accuracy of that residual (classical refinement: the first solve only needs a few correct
    digits, so an iterative method runs to ``rtol = 1e-6`` only). Further steps run only while the correction is
    above rounding level. The result is just a better candidate: the certificate does not rely on it.
    """
    nonterm = ~mdp.terminal
    rows = np.arange(mdp.n_states)
    c = 0.0
    if shift and nonterm.any():
        c = 0.5 * (float(V[nonterm].max()) + float(V[nonterm].min()))
    W = np.where(nonterm, V - c, 0.0)
    fixed = (mdp.R[rows, policy] + (mdp.gamma * c) * row_sums(mdp).zeta[rows, policy] - c * (1.0 - mdp.gamma))
    fixed = fixed[nonterm]
    M = solver.matrix
    w = W[nonterm]
    for _ in range(steps):
        delta = solver(fixed - np.asarray(M @ w).ravel(), rtol=1e-6)
        if not np.all(np.isfinite(delta)):
            break
        w = w + delta
        if float(np.max(np.abs(delta), initial=0.0)) <= 8 * U * max(float(np.max(np.abs(w), initial=0.0)), 1e-300):
            break
    W[nonterm] = w
    return c, W
