"""Shared machinery of the exact solvers: result types, errors, linear solves, certificates.

Conventions used by every solver
--------------------------------
* Everything is float64. Terminal states have value 0 and are never solved for.
* Bellman operator: ``(T V)(s) = max_a Q(s, a)``, ``Q = R + gamma * P V`` (terminal rows of Q are 0).
* ``gamma < 1``: ``T`` is a gamma-contraction that is monotone and satisfies
  ``T(V + c 1_N) - T V in [gamma min(c, 0), gamma max(c, 0)]`` (``1_N`` the indicator of the
  non-terminal states: mass that enters a terminal state does not carry the constant). Hence for
  any ``V`` with ``d = T V - V`` on the non-terminal states (MacQueen's bounds, clipped at 0 because
  of the terminal states)::

      T V + gamma/(1-gamma) * min(min d, 0)  <=  V*  <=  T V + gamma/(1-gamma) * max(max d, 0)

  (without terminal states the clipping at 0 is unnecessary and dropped: MacQueen's original).

  which is what :func:`macqueen_bounds` returns. The bounds are exact mathematics applied to the
  floating-point residual ``d``; they are "certified" up to the rounding of one Bellman backup
  (relative ~1e-16 of ``|V|``), which we do not add in.
* ``gamma = 1`` (stochastic shortest path): ``V*`` is the best value over *proper* policies —
  those that reach a terminal state with probability 1 from every state — the usual SSP
  convention. We certify it from both sides (see :func:`ssp_certificate`):

  - lower bound ``L = V^pi`` of a proper policy ``pi`` (exact linear solve; ``(I - P_pi)`` on the
    non-terminal states is nonsingular exactly because ``pi`` is proper);
  - upper bound ``U``: any super-solution ``T U <= U`` (``U = 0`` on terminal states) dominates the
    value of every proper policy ``pi'``: ``T^pi' U <= T U <= U``, so ``(T^pi')^n U <= U`` and
    ``(T^pi')^n U -> V^pi'`` because ``P_pi'^n -> 0`` on the non-terminal states. We find ``U`` by
    iterating ``U <- max(U, T U)`` from ``L`` until ``T U <= U`` holds in floating point (at the
    optimum this takes a few sweeps, each raising entries by ulps).

  ``error_bound = max(U - L)`` then bounds ``|L - V*|`` (we return ``L``). If an improper policy
  collects a cycle of positive mean reward the values are unbounded: :class:`UnboundedMDPError`.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mdpalign.mdp import TabularMDP, reachable_mask

__all__ = [
    "Solution", "SoftSolution", "SolverError", "UnboundedMDPError", "ConvergenceError",
    "macqueen_bounds", "proper_greedy_policy", "is_proper", "ssp_certificate",
]

EPS = np.finfo(np.float64).eps
#: Below this many unknowns the policy-evaluation system is solved densely (LAPACK).
DENSE_LIMIT = 1500
#: From this many unknowns a dense evaluation first tries a short GMRES run (see solve_linear).
DENSE_KRYLOV_MIN = 400
#: Up to this many unknowns a sparse system is factorised (SuperLU); above it GMRES + ILU.
SPARSE_DIRECT_LIMIT = 300_000


class SolverError(MdpalignError, ValueError):
    """Bad solver input (tolerance, temperature, policy shape, ...); the message says which."""


class UnboundedMDPError(SolverError):
    """At ``gamma = 1`` some policy cycles forever among non-terminal states with positive mean reward."""


class ConvergenceError(MdpalignError, RuntimeError):
    """The solver hit ``max_iter`` before its certified bound reached ``tol``."""


@dataclass(frozen=True)
class Solution:
    """Result of an exact solver.

    Infinite horizon: ``values`` (S,), ``q_values`` (S, A), ``policy`` (S,) int64 greedy and
    deterministic. Finite horizon H (:func:`~mdpalign.solve.finite_horizon`): ``values`` (H+1, S)
    with ``values[t]`` the optimal value at time ``t``, i.e. with ``H - t`` steps left
    (``values[H] = 0``); ``q_values`` (H, S, A); ``policy`` (H, S).

    ``error_bound`` is a certified bound on ``max_s |values[s] - V*(s)|`` (see the module
    docstring of ``mdpalign.solve._core`` for what certified means at ``gamma = 1``).
    """

    values: np.ndarray
    q_values: np.ndarray
    policy: np.ndarray
    error_bound: float
    iterations: int
    method: str
    elapsed: float
    horizon: int | None = None


@dataclass(frozen=True)
class SoftSolution(Solution):
    """Solution of the KL-regularised problem; ``policy`` is the argmax of ``policy_probs``.

    ``policy_probs`` (S, A) = ``pi_ref * exp((Q - V) / beta)`` normalised per state (computed as
    ``softmax(log pi_ref + Q / beta)`` so that rows sum to 1 exactly); ``log_policy`` its log
    (``-inf`` where the reference is 0).
    """

    policy_probs: np.ndarray = field(default=None)
    log_policy: np.ndarray = field(default=None)
    beta: float = float("nan")


# ----------------------------------------------------------------------------- checks
def check_tol(tol: float) -> float:
    tol = float(tol)
    if not np.isfinite(tol) or tol <= 0:
        raise SolverError(f"tol must be a positive finite number; got {tol!r}")
    return tol


def check_max_iter(max_iter: int) -> int:
    if int(max_iter) != max_iter or max_iter < 1:
        raise SolverError(f"max_iter must be a positive integer; got {max_iter!r}")
    return int(max_iter)


def check_mdp(mdp) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise SolverError(f"expected a mdpalign.TabularMDP; got {type(mdp).__name__}")
    return mdp


def check_horizon(horizon) -> int:
    if isinstance(horizon, (bool, np.bool_)) or int(horizon) != horizon or horizon < 0:
        raise SolverError(f"horizon must be a non-negative integer; got {horizon!r}")
    return int(horizon)


def check_deterministic_policy(mdp: TabularMDP, policy) -> np.ndarray:
    policy = np.asarray(policy)
    S, A = mdp.n_states, mdp.n_actions
    if policy.shape != (S,) or not np.issubdtype(policy.dtype, np.integer):
        raise SolverError(f"a deterministic policy must be an integer array of shape ({S},); "
                          f"got shape {policy.shape}, dtype {policy.dtype}")
    if policy.min() < 0 or policy.max() >= A:
        bad = np.flatnonzero((policy < 0) | (policy >= A))
        raise SolverError(f"policy has actions outside [0, {A}) at states {bad[:5].tolist()}")
    return policy.astype(np.int64)


def policy_matrix(mdp: TabularMDP, policy) -> np.ndarray:
    """(S, A) probabilities of a deterministic (S,) or stochastic (S, A) policy; SolverError if invalid."""
    try:
        return mdp.policy_as_matrix(policy)
    except ValueError as exc:
        raise SolverError(str(exc)) from exc


# ----------------------------------------------------------------------------- backups
def q_values(mdp: TabularMDP, values: np.ndarray) -> np.ndarray:
    """``Q = R + gamma P V`` with terminal rows 0."""
    return mdp.q_from_values(values)


def greedy_backup(mdp: TabularMDP, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T V, Q)``."""
    q = q_values(mdp, values)
    return q.max(axis=1), q


def macqueen_bounds(mdp: TabularMDP, values: np.ndarray, backed_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on ``V*`` from one backup ``backed_up = T values`` (gamma < 1 only).

    ``T V + c min(min d, 0) <= V* <= T V + c max(max d, 0)`` with ``d = T V - V`` over the
    non-terminal states and ``c = gamma / (1 - gamma)``; valid for any monotone operator that is
    a gamma-contraction commuting with constants up to the terminal mass (hard and soft Bellman).
    """
    gamma = mdp.gamma
    if gamma >= 1.0:
        raise ValueError("MacQueen bounds need gamma < 1")
    nonterm = ~mdp.terminal
    d = (backed_up - values)[nonterm]
    c = gamma / (1.0 - gamma)
    low, high = span_limits(mdp, d)
    lo = backed_up + c * low
    hi = backed_up + c * high
    lo[mdp.terminal] = 0.0
    hi[mdp.terminal] = 0.0
    return lo, hi


def span_limits(mdp: TabularMDP, d: np.ndarray) -> tuple[float, float]:
    """``(min d, max d)``, clipped to include 0 when the MDP has terminal states.

    Without terminal states ``T(V + c) = T V + gamma c`` exactly and the unclipped span gives
    MacQueen's original (much tighter, for fast-mixing chains) bounds; mass that enters a
    terminal state drops the constant, which is the same as counting ``d = 0`` there.
    """
    low, high = float(d.min()), float(d.max())
    if mdp.terminal.any():
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high


def macqueen_midpoint(mdp: TabularMDP, values: np.ndarray, backed_up: np.ndarray) -> tuple[np.ndarray, float]:
    """The midpoint of MacQueen's bounds (:func:`macqueen_bounds`) and their half-width, which certifies it:
    ``max|midpoint - V*| <= half_width``. gamma < 1; at gamma = 0 one backup is exact (half-width 0)."""
    c = mdp.gamma / (1.0 - mdp.gamma) if mdp.gamma > 0 else 0.0
    low, high = span_limits(mdp, (backed_up - values)[~mdp.terminal])
    midpoint = backed_up + 0.5 * c * (low + high)
    midpoint[mdp.terminal] = 0.0
    return midpoint, 0.5 * c * (high - low)


# ----------------------------------------------------------------------------- properness
def _reaches_terminal(mdp: TabularMDP, P_support) -> np.ndarray:
    """Boolean (S,): states from which the chain with support ``P_support`` (S x S) reaches a terminal state."""
    return reachable_mask(sp.csr_matrix(P_support).T, np.flatnonzero(mdp.terminal))


def is_proper(mdp: TabularMDP, policy) -> bool:
    """Whether ``policy`` (deterministic or stochastic) reaches a terminal state w.p. 1 from every state.

    For a finite chain this is: from every state some path of positive probability reaches the
    terminal set (otherwise a closed class of non-terminal states exists).
    """
    pi = policy_matrix(mdp, policy)
    P_pi, _ = mdp.policy_transitions(pi)
    P_pi = sp.csr_matrix(P_pi)
    P_pi.data = (P_pi.data > 0).astype(np.float64)
    P_pi.eliminate_zeros()
    return bool(_reaches_terminal(mdp, P_pi).all())


def _as_csc_flat(mdp: TabularMDP) -> sp.csc_matrix:
    flat = mdp.transition_matrix
    return sp.csc_matrix(flat) if not sp.issparse(flat) else flat.tocsc()


def proper_greedy_policy(mdp: TabularMDP, q: np.ndarray, tie_tol: float) -> tuple[np.ndarray, bool]:
    """Greedy policy on ``q`` whose ties are broken toward termination (the "attractor").

    ``O(s) = {a : q[s, a] >= max_a q[s, a] - tie_tol}``. Start from ``T_0`` = terminal states and
    repeatedly add every state ``s`` with an action ``a in O(s)`` that enters the current set
    with positive probability, assigning the best such ``a``. By induction every added state
    reaches the terminal set with positive probability along its assigned actions, so on the
    added states the policy is proper. States never added have no optimal action leading toward
    termination: the optimum there is improper (e.g. a zero-reward loop that beats every way
    out). Those get, by the same construction with *all* actions allowed, the best action that
    leads toward termination, so the returned policy is always proper (a proper policy exists by
    TabularMDP's validation at gamma = 1); the flag says whether every state got an action in
    ``O(s)``.

    Returns ``(policy, all_near_optimal)``.
    """
    S, A = mdp.n_states, mdp.n_actions
    q = np.asarray(q, dtype=np.float64)
    qmax = q.max(axis=1)
    near_opt = q >= (qmax - tie_tol)[:, None]
    policy = q.argmax(axis=1).astype(np.int64)
    in_set = mdp.terminal.copy()
    P_csc = _as_csc_flat(mdp)
    indptr, indices, data = P_csc.indptr, P_csc.indices, P_csc.data
    # rank actions: near-optimal first, then by q.
    score = np.where(near_opt, 1.0, 0.0)

    def grow(frontier: np.ndarray, allowed: np.ndarray) -> None:
        while frontier.size:
            starts, ends = indptr[frontier], indptr[frontier + 1]
            lengths = ends - starts
            if lengths.sum() == 0:
                return
            idx = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(lengths.sum())
            rows = indices[idx][data[idx] > 0]
            s, a = np.divmod(rows, A)
            keep = ~in_set[s] & allowed[s, a]
            s, a = s[keep], a[keep]
            if s.size == 0:
                return
            # per state, the best candidate action: highest (near-optimal, q)
            order = np.lexsort((-q[s, a], -score[s, a], s))
            s, a = s[order], a[order]
            first = np.ones(s.size, dtype=bool)
            first[1:] = s[1:] != s[:-1]
            s, a = s[first], a[first]
            policy[s] = a
            in_set[s] = True
            frontier = s

    grow(np.flatnonzero(in_set), near_opt)
    all_near_optimal = bool(in_set.all())
    if not all_near_optimal:
        grow(np.flatnonzero(in_set), np.ones((S, A), dtype=bool))
        if not in_set.all():  # pragma: no cover - TabularMDP guarantees a proper policy at gamma = 1
            raise UnboundedMDPError(f"no proper policy: states {np.flatnonzero(~in_set)[:10].tolist()} cannot terminate")
    return policy, all_near_optimal


# ----------------------------------------------------------------------------- linear solves
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


def solve_linear(M, b: np.ndarray, method: str = "auto", x0: np.ndarray | None = None) -> np.ndarray:
    """Solve ``M x = b`` for the policy-evaluation matrix ``M = I - gamma P_pi`` (restricted).

    ``method``: ``"direct"`` (LAPACK for dense or small, SuperLU for sparse), ``"gmres"`` (GMRES
    with an incomplete-LU preconditioner, warm-started from ``x0``) or ``"auto"`` (dense LAPACK
    below 1500 unknowns, SuperLU up to 300k, GMRES above).
    """
    n = b.shape[0]
    if n == 0:
        return np.zeros(0)
    if method not in ("auto", "direct", "gmres"):
        raise SolverError(f"linear_solver must be 'auto', 'direct' or 'gmres'; got {method!r}")
    if method == "auto":
        if not sp.issparse(M) and n >= DENSE_KRYLOV_MIN:
            # A dense LU costs ~n^3 flops, a mat-vec 2 n^2: try GMRES with at most n/20 mat-vecs first.
            # Fast-mixing chains (random dense MDPs) converge in a handful; others fall back to LU.
            restart = max(10, min(60, n // 20))
            x, info = spla.gmres(np.asarray(M), b, x0=x0, rtol=1e-12, atol=0.0, restart=restart, maxiter=1)
            if info == 0:
                return x
            method = "direct"
        else:
            method = "direct" if n <= SPARSE_DIRECT_LIMIT or not sp.issparse(M) else "gmres"
    if method == "direct":
        if not sp.issparse(M) or n <= DENSE_LIMIT:
            Md = M.toarray() if sp.issparse(M) else np.asarray(M)
            return sla.solve(Md, b, check_finite=False, assume_a="gen")
        return spla.splu(sp.csc_matrix(M), permc_spec="COLAMD").solve(b)
    M = sp.csc_matrix(M)
    try:
        ilu = spla.spilu(M, drop_tol=1e-6, fill_factor=20)
        prec = spla.LinearOperator(M.shape, ilu.solve)
    except RuntimeError:  # singular ILU factor: run unpreconditioned
        prec = None
    x, info = spla.gmres(M, b, x0=x0, rtol=1e-14, atol=0.0, restart=50, maxiter=200, M=prec)
    if info != 0:
        x, info = spla.bicgstab(M, b, x0=x, rtol=1e-14, atol=0.0, maxiter=5000, M=prec)
    return x


def evaluate_deterministic(mdp: TabularMDP, policy: np.ndarray, method: str = "auto",
                           x0: np.ndarray | None = None) -> np.ndarray:
    """``V^pi`` for a deterministic policy: ``(I - gamma P_pi) V = r_pi`` on the non-terminal states.

    At gamma = 1 the policy must be proper (else the matrix is singular).
    """
    S = mdp.n_states
    r = mdp.R[np.arange(S), policy]
    P = deterministic_P(mdp, policy)
    return _evaluate_from(mdp, P, r, method, x0)


def _evaluate_from(mdp: TabularMDP, P, r: np.ndarray, method: str = "auto", x0=None,
                   gamma: float | None = None) -> np.ndarray:
    S = mdp.n_states
    gamma = mdp.gamma if gamma is None else gamma
    nonterm = np.flatnonzero(~mdp.terminal)
    Pn = _restrict(P, nonterm) if nonterm.size < S else P
    n = nonterm.size
    if sp.issparse(Pn):
        M = sp.identity(n, format="csr") - gamma * sp.csr_matrix(Pn)
    else:
        M = np.eye(n) - gamma * np.asarray(Pn)
    V = np.zeros(S)
    V[nonterm] = solve_linear(M, r[nonterm], method, None if x0 is None else x0[nonterm])
    return V


# ----------------------------------------------------------------------------- gamma = 1
def supersolution_gap(backup, L: np.ndarray, max_sweeps: int = 10_000) -> tuple[float, int]:
    """``max(U - L)`` for the first ``U = max(U, T U)`` iterate (from ``L``) with ``T U <= U``.

    Returns ``(inf, sweeps)`` if no floating-point super-solution appears within ``max_sweeps``.
    """
    U = L.copy()
    for k in range(max_sweeps):
        TU = backup(U)
        if np.all(TU <= U):
            return float(np.max(U - L, initial=0.0)), k + 1
        U = np.maximum(U, TU)
    return float("inf"), max_sweeps


def ssp_rounding_allowance(mdp: TabularMDP, P_pi, r_pi: np.ndarray, L: np.ndarray) -> float:
    """Allowance for the rounding in ``L ~ V^pi`` at gamma = 1: ``max(m) (max|eps_pi| + 2 eps max|L|)``.

    ``V^pi - L = (I - P_pi)^{-1} eps_pi`` with ``eps_pi = r_pi + P_pi L - L`` (the residual of the
    linear solve), and ``(I - P_pi)^{-1}`` is non-negative with row sums ``m`` = expected steps to
    termination under ``pi`` (one more solve); the ``2 eps |L|`` term covers the rounding of the
    residual itself. Without it a computed ``L`` can exceed ``V*`` by more than ``max(U - L)``.
    """
    nonterm = ~mdp.terminal
    ones = np.where(nonterm, 1.0, 0.0)
    m = _evaluate_from(mdp, P_pi, ones, "direct", gamma=1.0)
    resid = (r_pi + np.asarray(P_pi @ L).ravel() - L)[nonterm]
    scale = max(1.0, float(np.max(np.abs(L))))
    return float(np.max(m)) * (float(np.max(np.abs(resid), initial=0.0)) + 2 * EPS * scale)


def ssp_certificate(mdp: TabularMDP, policy: np.ndarray, max_iter: int = 10_000,
                    linear_solver: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Polish a *proper* deterministic policy by policy iteration and certify it (gamma = 1).

    Improvement switches an action only if it gains more than ``64 eps |V|``. From a proper
    policy this keeps every iterate proper unless some policy has a closed class with positive
    mean reward: if the switched policy ``pi'`` had a closed class C, then on C
    ``V <= T^pi' V`` with strict inequality where it switched, and averaging over the stationary
    law of C gives mean reward ``> 0`` (values unbounded, :class:`UnboundedMDPError`); with mean
    reward 0 nothing in C switches, so C was closed under ``pi`` already, a contradiction.

    Returns ``(V, Q, policy, error_bound, iterations)`` with ``V = V^policy`` and
    ``error_bound = max(U - V)`` for a floating-point super-solution ``U`` (module docstring).
    """
    policy = policy.copy()
    S = mdp.n_states
    rows = np.arange(S)
    for it in range(1, max_iter + 1):
        V = evaluate_deterministic(mdp, policy, "direct" if linear_solver == "auto" else linear_solver)
        q = q_values(mdp, V)
        best = q.argmax(axis=1)
        gain = q[rows, best] - q[rows, policy]
        switch_tol = 64 * EPS * max(1.0, float(np.max(np.abs(V))))
        switch = (gain > switch_tol) & ~mdp.terminal
        if not switch.any():
            bound, _ = supersolution_gap(lambda U: q_values(mdp, U).max(axis=1), V)
            P = deterministic_P(mdp, policy)
            bound += ssp_rounding_allowance(mdp, P, mdp.R[rows, policy], V)
            return V, q, policy, bound, it
        new = policy.copy()
        new[switch] = best[switch]
        if not is_proper(mdp, new):
            raise UnboundedMDPError(
                "gamma = 1 and a policy improvement step closed a loop among non-terminal states "
                f"(switching states {np.flatnonzero(switch)[:10].tolist()}): some policy cycles forever "
                "with positive mean reward, so the optimal values are unbounded. Use gamma < 1."
            )
        policy = new
    raise ConvergenceError(f"policy iteration did not stabilise within {max_iter} iterations at gamma = 1")


def timer() -> float:
    return time.perf_counter()
