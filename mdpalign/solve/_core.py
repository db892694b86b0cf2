"""Shared machinery of the exact solvers: result types, errors, linear solves, certificates.

Conventions used by every solver
--------------------------------
* Everything is float64. Terminal states have value 0 and are never solved for.
* Bellman operator: ``(T V)(s) = max_a Q(s, a)``, ``Q = R + gamma * P V`` (terminal rows of Q are 0); the soft
  operator replaces the max by ``beta log sum_a pi_ref(a|s) exp(Q(s,a)/beta)``.
* ``V*`` is the optimum of the MDP *exactly as stored*: its float64 ``P``, ``R`` and ``gamma`` read as exact
  rationals. (The rows of a float ``P`` sum to 1 only up to ~1e-16; at gamma = 0.9999 and |V| = 1e7 that
  defect alone moves ``V*`` by ~1e-5, so it is accounted for, not assumed away.)
* ``error_bound`` is a bound on ``max_s |values[s] - V*(s)|`` in exact arithmetic. It includes the rounding of
  every floating-point operation used to compute the returned values and the bound itself (error model and
  elementary bounds: :mod:`mdpalign.solve._rounding`). It is never below the true error.

Certificate, gamma < 1 (MacQueen's bounds, with row-sum defects and rounding)
------------------------------------------------------------------------------
Let ``T`` be the hard or soft operator, ``V`` any vector (0 on terminal states), ``d = T V - V`` on the
non-terminal states ``N``, and ``rs(s,a) = sum_{s' in N} P(s'|s,a) <= 1 + delta``. ``T`` is monotone and
``T(V + k 1_N) - T V`` lies between ``gamma k rs_min`` and ``gamma k rs_max`` per state (the soft operator too:
its weights are a probability vector). With ``e = V* - V`` and ``M = max e``: ``e = (T V* - T V) + d <=
gamma (1 + delta) max(M, 0) + d``, so ``max(M, 0) <= max(max d, 0) / (1 - g)`` and ``V* - T V <= g max(M, 0)``
with ``g = gamma (1 + delta)``. With the same argument from below and ``C = g / (1 - g)``::

    T V + C min(min d, 0)  <=  V*  <=  T V + C max(max d, 0)                                   (1)

Without terminal states ``rs`` lies in ``[1 - delta-, 1 + delta+]`` and the clipping at 0 is dropped
(MacQueen's original): ``C`` is taken at ``gamma (1 + delta+)`` on the outward side of each bound and at
``gamma (1 - delta-)`` on the inward side. Rounding: the candidate is stored as ``V = c + W`` (a scalar plus a
float vector, :func:`~mdpalign.solve._rounding.shifted_backup`); ``d`` is computed as ``d^`` with
``|d^ - d| <= E_d`` per state, and replacing ``min d`` by ``min(d^ - E_d)`` and ``max d`` by
``max(d^ + E_d)`` keeps (1) valid. :func:`discounted_certificate` returns the midpoint of the widened interval
(value iteration) or the candidate itself (policy iteration), rounded to float64, with the bound including
that last rounding (``u |V|``) and the rounding of the bound's own arithmetic.

**The floor.** With a residual of zero span the bound is its rounding part (``Certificate.floor``), about::

    (1 + C) u (4 max|R| + (k + 4) max|W| + 3 |c| tau) + u max|V|,        u = 2**-53,

with ``k`` the non-zeros per row of ``P``, ``W = V - c`` the values relative to their midrange ``c`` and ``tau``
the largest one-step probability of entering a terminal state (an action that cannot be the maximiser does
not count). Without terminal states ``|W|`` is half the span of ``V``, not ``|V|``. Measured (5 states, 3
actions, dense rows, no terminal state): rewards in [0, 10] at gamma = 0.99 / 0.999 / 0.9999 (``|V|`` up to
9e2 / 9e3 / 9e4): 7e-13 / 7e-12 / 7e-11; rewards in [0, 1e3]: 100 times that (7e-9 at gamma = 0.9999, where
``u |V|`` alone is 1e-9). Value iteration's iterates carry their own rounding noise, which in slowly mixing
chains is contracted only at rate gamma; its bound can stall above the floor (it stops there, with a
:class:`CertificateFloorWarning`). When ``tol`` is below what can be certified, the solvers return the honest
bound and emit :class:`CertificateFloorWarning`.

Certificate, gamma = 1 (stochastic shortest path)
-------------------------------------------------
``V*`` is the best value over *proper* policies (reaching a terminal state with probability 1 from every
state), the usual SSP convention, with each row of ``P`` read as the exactly normalised distribution
``P(.|s,a) / sum P(.|s,a)``: taken literally, a zero-reward loop whose float rows sum to 1 + 1e-16 would make
the optimum over proper policies infinite (a policy that lingers in it longer and longer gains without bound),
while at gamma < 1 the literal rows are harmless and are what every solver and :func:`~mdpalign.solve.evaluate`
use. For a proper policy the two readings differ by about ``1e-16 * steps * |V|``, which the certificate
covers (all its products use the normalised rows). The returned values ``V`` approximate ``V^pi`` for a
proper policy ``pi`` (deterministic; for the soft solver the exact soft-greedy policy ``sigma`` of ``V``, for
which ``T^sigma V = T_beta V`` by the Gibbs variational principle). See :func:`hard_ssp_bound` and
``mdpalign.solve.soft.soft_ssp_bound``:

- *steps*: ``w ~ (I - P_pi)^-1 1`` on ``N`` (expected steps to termination) is verified in exact arithmetic,
  ``(I - P_pi) w >= kappa > 0`` (the computed product minus its rounding bound), which proves that ``P_pi``
  has spectral radius < 1 and ``(I - P_pi)^-1 1 <= max(w) / kappa``;
- *lower*: with ``eps = T^pi V - V`` (bounded with its rounding), ``V^pi - V = (I - P_pi)^-1 eps``, so
  ``V* >= V^pi >= V - max(w)/kappa * max(-eps, 0)``;
- *upper*: any ``U`` with ``T U <= U`` (``U = 0`` on terminal states) dominates ``V^pi'`` for every proper
  ``pi'`` (``T^pi' U <= T U <= U``, iterate, ``P_pi'^n -> 0``), hence ``V*``. We use ``U = V + t w`` with
  ``t = 2 max(eps, 0) / kappa``: for the actions of ``pi``, ``T^pi U - U <= eps - t kappa < 0``. Hard
  operator: every other action is checked row by row, rigorously; if a near-tie moving away from termination
  fails (e.g. Frozen Lake's zero-reward loops, where values tie exactly), a few sweeps raise the failing states
  of a float ``U`` to upper bounds of their backups, deciding the rows no float computation can decide in exact
  rational arithmetic (:func:`hard_supersolution_gap`). Soft operator: by Hoeffding's
  lemma ``T_beta(V + t w) <= T_beta V + t P_sigma w + t^2 range(P w)^2 / (8 beta)``, so ``U`` is a
  super-solution as soon as ``max(eps, 0) max(w)^2 <= 2 beta kappa^2`` (true near convergence) and no row
  check is needed.

``error_bound = max(upper - V, V - lower)``. If an improper policy collects a cycle of positive mean reward
the values are unbounded: :class:`UnboundedMDPError`.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mdpalign.errors import MdpalignError
from mdpalign.mdp import TabularMDP, reachable_mask
from mdpalign.solve._rounding import (
    SAFETY, U, exact_q_row, gamma_k, round_down, round_up, row_sums, shifted_backup, successor_range,
)

__all__ = [
    "Solution", "SoftSolution", "SolverError", "UnboundedMDPError", "ConvergenceError", "CertificateFloorWarning",
    "Certificate", "discounted_certificate", "iterate_discounted", "macqueen_bounds", "proper_greedy_policy",
    "is_proper", "ssp_certificate", "hard_ssp_bound",
]

EPS = np.finfo(np.float64).eps
#: Below this many unknowns the policy-evaluation system is solved densely (LAPACK).
DENSE_LIMIT = 1500
#: From this many unknowns a dense evaluation first tries a short GMRES run (see make_solver).
DENSE_KRYLOV_MIN = 400
#: Up to this many unknowns a sparse system is factorised (SuperLU); above it GMRES + ILU.
SPARSE_DIRECT_LIMIT = 300_000
#: Sweeps of the gamma = 1 super-solution search (each one backup, plus exact checks of undecided rows).
SUPERSOLUTION_SWEEPS = 200


class SolverError(MdpalignError, ValueError):
    """Bad solver input (tolerance, temperature, policy shape, ...); the message says which."""


class UnboundedMDPError(SolverError):
    """At ``gamma = 1`` some policy cycles forever among non-terminal states with positive mean reward (for the
    KL-regularised values: positive mean reward minus beta times the KL penalty)."""


class ConvergenceError(MdpalignError, RuntimeError):
    """The solver hit ``max_iter`` before its certified bound reached ``tol``."""


class CertificateFloorWarning(UserWarning):
    """The returned ``error_bound`` is above the requested ``tol`` because float64 cannot certify ``tol`` here.

    The message names the bound that was reached and the rounding floor (module docstring of
    ``mdpalign.solve._core``); the solution is still returned, with its honest bound.
    """


@dataclass(frozen=True)
class Solution:
    """Result of an exact solver.

    Infinite horizon: ``values`` (S,), ``q_values`` (S, A), ``policy`` (S,) int64 greedy and
    deterministic. Finite horizon H (:func:`~mdpalign.solve.finite_horizon`): ``values`` (H+1, S)
    with ``values[t]`` the optimal value at time ``t``, i.e. with ``H - t`` steps left
    (``values[H] = 0``); ``q_values`` (H, S, A); ``policy`` (H, S).

    ``error_bound`` is a certified bound on ``max_s |values[s] - V*(s)|``, rounding included (see the module
    docstring of ``mdpalign.solve._core``; at ``gamma = 1`` ``V*`` is the optimum over proper policies).
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
def _as(kind, value):
    """``kind(value)``, or None where ``value`` is no number at all (a string, None), so that the check names the
    argument rather than passing on ``float('x')``'s message."""
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def check_tol(tol: float) -> float:
    number = _as(float, tol)
    if number is None or not np.isfinite(number) or number <= 0:
        raise SolverError(f"tol must be a positive finite number; got {tol!r}")
    return number


def check_max_iter(max_iter: int) -> int:
    if isinstance(max_iter, (bool, np.bool_)) or _as(int, max_iter) != max_iter or max_iter < 1:
        raise SolverError(f"max_iter must be a positive integer; got {max_iter!r}")
    return int(max_iter)


def check_mdp(mdp) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise SolverError(f"expected a mdpalign.TabularMDP; got {type(mdp).__name__}")
    return mdp


def check_horizon(horizon) -> int:
    if isinstance(horizon, (bool, np.bool_)) or _as(int, horizon) != horizon or horizon < 0:
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
    """Lower and upper bounds on ``V*`` from one backup ``backed_up = T values`` (gamma < 1), in exact arithmetic.

    ``T V + C min(min d, 0) <= V* <= T V + C max(max d, 0)`` with ``d = T V - V`` over the non-terminal states
    and ``C = gamma / (1 - gamma)`` (clipping at 0 dropped without terminal states): equation (1) of the module
    docstring for rows summing to exactly 1, taking ``backed_up`` as the exact backup. It does not account for
    rounding; the solvers use :func:`discounted_certificate`, which does.
    """
    gamma = mdp.gamma
    if gamma >= 1.0:
        raise SolverError("MacQueen bounds need gamma < 1")
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

    Without terminal states ``T(V + c) = T V + gamma c`` (up to the row-sum defect) and the unclipped span gives
    MacQueen's original (much tighter, for fast-mixing chains) bounds; mass that enters a terminal state drops
    the constant, which is the same as counting ``d = 0`` there.
    """
    low, high = float(np.min(d, initial=0.0 if d.size == 0 else np.inf)), float(np.max(d, initial=-np.inf))
    if d.size == 0:
        return 0.0, 0.0
    if mdp.terminal.any():
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high


# ----------------------------------------------------------------------------- certificates, gamma < 1
@dataclass(frozen=True)
class Certificate:
    """A certified value vector (gamma < 1): ``max |values - V*| <= bound``, rounding included.

    ``floor`` is the bound's rounding part (what it would be for a residual of zero span), ``max_E_d`` the
    largest rounding bound of the residual; ``X``, ``E_X`` the candidate's shifted backup and its rounding
    bound (``Q = gamma c + X``), ``c`` the candidate's offset and ``relative`` the returned values minus ``c``
    (unrounded by the addition of ``c``: a restart point for value iteration).
    """

    values: np.ndarray
    bound: float
    floor: float
    max_E_d: float
    c: float
    X: np.ndarray
    E_X: np.ndarray
    relative: np.ndarray


def hard_reduce(X: np.ndarray, E_X: np.ndarray | None = None):
    """``max_a`` of a (shifted) backup; with ``E_X`` also its rounding bound.

    The exact maximum lies in ``[max(X - E), max(X + E)]``, so the computed ``max X`` errs by at most the larger
    distance to those ends, ``max_a (X_a - max X + E_a)`` and ``max X - max_a (X_a - E_a)``: an action whose error
    is large but that cannot be the maximiser does not count. The differences ``X_a - max X`` are exact for the
    near-maximal actions (Sterbenz) and the remaining roundings are within ``4 u max E`` of the actions that
    matter (those with ``X_a - max X + E_a >= 0``, i.e. ``|X_a - max X| <= E_a``).
    """
    TX = X.max(axis=1)
    if E_X is None:
        return TX
    gap = X - TX[:, None]
    up = (gap + E_X).max(axis=1)
    down = -(gap - E_X).max(axis=1)
    return TX, SAFETY * (np.maximum(up, down) * (1 + 4 * U) + 4 * U * E_X.max(axis=1))


def _macqueen_constants(mdp: TabularMDP) -> tuple[Fraction, Fraction] | None:
    """``(C_out, C_in)`` of equation (1) as exact rationals (None if ``gamma (1 + delta+) >= 1``)."""
    gamma = Fraction(mdp.gamma)
    rows = row_sums(mdp)
    nonterm = ~mdp.terminal
    zeta, eta = rows.zeta[nonterm], rows.eta[nonterm]
    if zeta.size == 0:
        return Fraction(0), Fraction(0)
    delta_plus = max(Fraction(float(np.max(zeta + eta))) * (1 + Fraction(4) * Fraction(U)), Fraction(0))
    g_out = gamma * (1 + delta_plus)
    if g_out >= 1:
        return None
    c_out = g_out / (1 - g_out)
    if mdp.terminal.any():
        return c_out, c_out  # clipped bounds: only the outward constant is used
    delta_minus = max(-Fraction(float(np.min(zeta - eta))) * (1 + Fraction(4) * Fraction(U)), Fraction(0))
    g_in = gamma * max(1 - delta_minus, Fraction(0))
    return c_out, g_in / (1 - g_in)


def macqueen_constants(mdp: TabularMDP) -> tuple[float, float]:
    """``(C_out, C_in)`` of equation (1) as floats (C_out rounded up, C_in down; inf if not certifiable)."""
    consts = _macqueen_constants(mdp)
    if consts is None:
        return float("inf"), float("inf")
    return round_up(consts[0]), round_down(consts[1])


def discounted_certificate(mdp: TabularMDP, c: float, W: np.ndarray, reduce, midpoint: bool = True) -> Certificate:
    """Certify the candidate ``V = c + W`` (0 on terminal states) at gamma < 1, rounding included.

    ``reduce(X, E_X) -> (TX, E_T)`` turns the shifted backup of :func:`~mdpalign.solve._rounding.shifted_backup`
    into ``T V - gamma c`` per state with its rounding bound (:func:`hard_reduce`, or the soft log-sum-exp).
    Residual: ``d = T V - V = TX - W - c (1 - gamma)``, computed with ``|d^ - d| <= E_d = E_T + SAFETY u (|TX| +
    |W| + 3|d^| + 3|c|(1 - gamma))`` (F1: two subtractions and the product ``c (1 - gamma)``, whose factor is exact
    for gamma >= 1/2 and rounded once otherwise; the extra ``|d^|`` covers the subtractions below). Then, per
    state, ``V* - c`` lies in ``[W + d^ - E_d + C_l lo, W + d^ + E_d + C_h hi]`` with ``lo = min(d^ - E_d)`` and
    ``hi = max(d^ + E_d)`` (clipped at 0 with terminal states) by equation (1) of the module docstring; the
    scalars ``C lo``, ``C hi`` are formed in exact rationals.

    ``midpoint=True`` returns ``c + (W + d^ + (C_l lo + C_h hi)/2)`` (value iteration), ``False`` the candidate
    ``c + W`` (policy iteration: the values of the evaluated policy); the bound adds the rounding of those sums
    (at most ``2 u`` times the magnitudes summed, F1) and ``u |values|`` for the final rounding to float64, and is
    rounded up (the per-state maximum of at most 8 non-negative float terms is within ``gamma_8 < 16 u`` of the
    exact sum).
    """
    gamma = mdp.gamma
    nonterm = ~mdp.terminal
    W = np.where(nonterm, W, 0.0)
    X, E_X = shifted_backup(mdp, c, W)
    TX, E_T = reduce(X, E_X)
    omega = 1.0 - gamma
    d = (TX - W) - c * omega
    E_d = E_T + SAFETY * U * (np.abs(TX) + np.abs(W) + 3 * np.abs(d) + 3 * abs(c) * omega)
    values = np.zeros(mdp.n_states)
    if not nonterm.any():
        return Certificate(values, 0.0, 0.0, 0.0, c, X, E_X, W)
    consts = _macqueen_constants(mdp)
    if consts is None or not np.all(np.isfinite(E_d[nonterm])):
        values[nonterm] = c + W[nonterm]
        return Certificate(values, float("inf"), float("inf"), float("inf"), c, X, E_X, W)
    c_out, c_in = consts
    dn, en = d[nonterm], E_d[nonterm]
    lo, hi = float(np.min(dn - en)), float(np.max(dn + en))
    # fl(a -+ b) may round inward by u|a -+ b|; push the scalars outward by that much
    lo, hi = round_down(Fraction(lo) - Fraction(U) * abs(Fraction(lo))), round_up(Fraction(hi) + Fraction(U) * abs(Fraction(hi)))
    if mdp.terminal.any():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    up = (c_out if hi >= 0 else c_in) * Fraction(hi)
    down = (c_out if lo <= 0 else c_in) * Fraction(lo)
    max_en = float(np.max(en))
    if midpoint:
        K = float((up + down) / 2)
        half = round_up((up - down) / 2)
        core = np.where(nonterm, W + d + K, 0.0)
        values[nonterm] = (c + core)[nonterm]
        per_state = E_d + 2.02 * U * (np.abs(W) + np.abs(d) + abs(K)) + U * abs(K) + U * np.abs(values)
        spread = half
    else:
        up_f, down_f = round_up(up), round_down(down)
        values[nonterm] = (c + W)[nonterm]
        reach = np.maximum(d + up_f, -(d + down_f))
        per_state = E_d + reach + 2.02 * U * (np.abs(d) + abs(up_f) + abs(down_f)) + U * np.abs(values)
        spread = 0.0
        core = W
    bound = (float(np.max(per_state[nonterm])) + spread) * (1 + 16 * U)
    floor_const = round_up(c_out * Fraction(max_en))
    floor = (float(np.max((E_d + 2.02 * U * np.abs(W) + U * np.abs(values))[nonterm])) + floor_const) * (1 + 16 * U)
    return Certificate(values, bound, floor, max_en, c, X, E_X, core)


def warn_floor(method: str, bound: float, tol: float, floor: float, values: np.ndarray, gamma: float,
               hint: str = "") -> None:
    """Emit :class:`CertificateFloorWarning` for a returned bound above ``tol``."""
    warnings.warn(CertificateFloorWarning(
        f"{method}: certified error {bound:.3g} is above tol={tol:g}; float64 cannot certify much below "
        f"{floor:.2g} here (gamma={gamma:g}, max|V|={float(np.max(np.abs(values), initial=0.0)):.3g}; the floor "
        f"formula is in the docstring of mdpalign.solve._core){hint}. The returned error_bound is the honest one."),
        stacklevel=3)


def iterate_discounted(mdp: TabularMDP, reduce, tol: float, max_iter: int, initial: np.ndarray,
                       method: str) -> tuple[Certificate, int]:
    """Value iteration ``V_{k+1} = T V_k`` (hard or soft ``reduce``) at gamma < 1, stopped on a certificate.

    The iterate is kept as ``c + W`` with ``c`` re-centred on the midrange whenever the common part dominates,
    so that each sweep rounds at the scale of ``W`` rather than of ``|V|`` (``X`` is the shifted backup,
    ``V' - c = TX - c (1 - gamma)``). The float span of ``d = V_{k+1} - V_k`` (``cheap = C span / 2``) says when
    to call :func:`discounted_certificate` (one backup with its rounding bound):

    - ``cheap <= tol - floor`` (the floor known from an earlier certificate; ``tol`` at first): success if the
      certified bound is ``<= tol``, else the iterate restarts from the certificate's midpoint (MacQueen's
      extrapolation; it removes the common part of ``d``, whose size times ``C_out - C_in ~ C^2 delta``, the
      uncertainty from the rows' defect ``delta``, would otherwise dominate at gamma -> 1) and the next check
      waits for ``cheap`` to halve; ``cheap`` includes that ``(C_out - C_in) max|d| / 2`` term;
    - the floor is above ``tol`` and ``cheap <= C max E_d``: the bound is within twice the floor;
    - ``cheap`` has not halved for ``2 / (1 - gamma) + 50`` sweeps: rounding noise, re-injected every sweep
      and contracted only at rate gamma in slowly mixing chains, has stalled the span (there the floor of
      value iteration is up to ``C`` times that of policy iteration).

    The last two return the honest bound with a :class:`CertificateFloorWarning` if it is above ``tol``.
    ``max_iter`` sweeps otherwise raise :class:`ConvergenceError`.
    """
    gamma = mdp.gamma
    nonterm = ~mdp.terminal
    inner = np.flatnonzero(nonterm)
    clipped = bool(mdp.terminal.any())
    C, C_in = macqueen_constants(mdp)
    C_extra = C - C_in if np.isfinite(C) else 0.0
    omega = 1.0 - gamma
    window = int(np.ceil(2.0 / omega)) + 50
    c = 0.0
    W = np.where(nonterm, initial, 0.0)
    check_at = tol
    max_E_d, hopeless = None, False
    best, best_at = np.inf, 0
    hint = "; value iteration's residual is stalled by rounding noise, policy_iteration reaches a lower floor"
    # the sweep itself, inlined (shifted_backup without its rounding bound): X = R + gamma P W + gamma c zeta;
    # rows of terminal states come out 0 (R, W and zeta vanish there)
    flat, R, zeta = mdp.transition_matrix, mdp.R, row_sums(mdp).zeta
    shape = R.shape
    if inner.size == 0:
        return discounted_certificate(mdp, c, W, reduce, midpoint=True), 1

    for k in range(1, max_iter + 1):
        X = R + gamma * np.asarray(flat @ W).reshape(shape)
        if c != 0.0:
            X += (gamma * c) * zeta
        W_new = reduce(X) - c * omega
        if clipped:
            W_new[mdp.terminal] = 0.0
            d = (W_new - W)[inner]
            low, high = min(float(d.min()), 0.0), max(float(d.max()), 0.0)
        else:
            d = W_new - W
            low, high = float(d.min()), float(d.max())
        span_part = 0.5 * C * (high - low)
        cheap = span_part + 0.5 * C_extra * max(-low, high)
        if cheap <= 0.5 * best:
            best, best_at = cheap, k
        stalled = k - best_at >= window or (hopeless and cheap <= C * max_E_d)
        if span_part <= check_at or stalled:
            cert = discounted_certificate(mdp, c, W, reduce, midpoint=True)
            if cert.bound <= tol:
                return cert, k
            if stalled:
                warn_floor(method, cert.bound, tol, cert.floor, cert.values, gamma, hint)
                return cert, k
            max_E_d = cert.max_E_d
            hopeless = cert.floor >= tol
            check_at = -1.0 if hopeless else min(span_part / 2, tol - cert.floor)
            if np.isfinite(cert.bound):  # restart from the midpoint (the sweep just made is discarded)
                W_new = cert.relative
                best, best_at = np.inf, k
        W = W_new
        w = W[inner] if clipped else W
        top, bottom = float(w.max()), float(w.min())
        mid = 0.5 * (top + bottom)
        if abs(mid) > top - bottom:
            c_new = c + mid
            W = W - (c_new - c)
            if clipped:
                W[mdp.terminal] = 0.0
            c = c_new
    cert = discounted_certificate(mdp, c, W, reduce, midpoint=True)
    if cert.bound <= tol:
        return cert, max_iter
    raise ConvergenceError(
        f"{method} reached max_iter={max_iter} with certified error {cert.bound:.3g} > tol={tol:g} (rounding floor "
        f"here {cert.floor:.2g}); raise max_iter or tol, or use policy_iteration"
    )

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


# ----------------------------------------------------------------------------- gamma = 1
def policy_matvec(mdp: TabularMDP, weights: np.ndarray, v: np.ndarray):
    """``(P_pi v, E, P v, E_row)`` with the rows normalised (gamma = 1 convention): ``P_pi v = sum_a
    weights[s, a] (P_a v)`` for (S, A) policy weights (one-hot for a deterministic policy) and ``v`` (0 on
    terminal states), the exact matrix being ``sum_a weights_a P_a / rs_a`` with the float weights as given.
    ``E_row`` bounds the error of each ``P_a v`` (F2, plus the normalisation as in
    :func:`~mdpalign.solve._rounding.shifted_backup`) and ``|computed - exact| <= E = SAFETY sum_a weights_a
    (E_row + (A + 1) u |P_a v|)`` (the weighted sum of A terms)."""
    rows = row_sums(mdp)
    both = mdp.expected_next(np.stack([v, np.abs(v)], axis=1))
    y_raw, z = both[..., 0], both[..., 1]
    y = y_raw - y_raw * (rows.delta * (1.0 - rows.delta))
    E_row = SAFETY * (gamma_k(rows.nnz) * z + np.abs(y_raw) * (1.01 * rows.eta_row + 2 * rows.delta ** 2 + 2 * U))
    Pv = (weights * y).sum(axis=1)
    E = SAFETY * (weights * (E_row + (mdp.n_actions + 1) * U * np.abs(y))).sum(axis=1)
    return Pv, E, y, E_row


def steps_kappa(mdp: TabularMDP, weights: np.ndarray, w: np.ndarray) -> float:
    """The largest float ``kappa`` with ``(I - P_pi) w >= kappa`` on the non-terminal states, in exact arithmetic.

    A positive ``kappa`` (with ``w >= 0``) proves ``P_pi w <= w - kappa``, hence spectral radius < 1 (the policy
    is proper) and ``(I - P_pi)^-1 1 <= w / kappa`` (module docstring, gamma = 1).
    """
    nonterm = ~mdp.terminal
    if not nonterm.any():
        return float("inf")
    Pw, E, _, _ = policy_matvec(mdp, weights, w)
    nu = w - Pw
    low = float(np.min((nu - E - SAFETY * U * np.abs(nu))[nonterm]))
    return round_down(Fraction(low) - Fraction(U) * abs(Fraction(low))) if np.isfinite(low) else float("-inf")


def hard_supersolution_gap(mdp: TabularMDP, V: np.ndarray, w: np.ndarray, t: float,
                           max_sweeps: int = SUPERSOLUTION_SWEEPS) -> float:
    """``max(U - V)`` for a verified ``U >= V`` with ``T U <= U`` in exact arithmetic (gamma = 1), or inf.

    First ``U = V + t w`` (exact reals, never rounded): every row ``(s, a)`` must satisfy
    ``X + E + t (P_a w + E_w) <= V(s) + t w(s)`` with a margin covering the rounding of the comparison itself.
    Rows that fail (near-ties whose action moves away from termination) start the sweep search on the float
    vector ``U = fl(V + t w)``: per row, ``fl(Q) + E <= U(s)`` proves ``Q_a(U)(s) <= U(s)``, and so does
    ``max(U(successors)) <= U(s)`` for a row with no reward and no terminal successor (its normalised backup
    is an average); a state with a failing row is raised to an upper bound of its backup (comments below), until
    no row fails (typically a few sweeps) or ``max_sweeps``.
    """
    nonterm = ~mdp.terminal
    if not nonterm.any():
        return 0.0
    X, E = shifted_backup(mdp, 0.0, V, normalised=True)
    _, _, yw, E_w = policy_matvec(mdp, np.zeros((mdp.n_states, mdp.n_actions)), w)
    rhs = V + t * w
    lhs = X + E + t * (yw + E_w)
    margin = 4 * U * (np.abs(rhs)[:, None] + np.abs(X) + E + t * (np.abs(yw) + E_w))
    if np.all(((rhs[:, None] - lhs) > margin)[nonterm]):
        return round_up(Fraction(t) * Fraction(float(np.max(w[nonterm]))) * (1 + 4 * Fraction(U)))

    Uf = np.where(nonterm, V + t * w, 0.0)
    scale = max(t * float(np.max(w)), 64 * U * float(np.max(np.abs(V))), 1e-300)
    enters_terminal = np.asarray(mdp.transition_matrix @ mdp.terminal.astype(np.float64)).reshape(Uf.size, -1) > 0
    # rows without reward or terminal successors: their normalised backup is an average of the successors
    average = (mdp.R == 0) & ~enters_terminal & nonterm[:, None]
    for _ in range(max_sweeps):
        Xu, Eu = shifted_backup(mdp, 0.0, Uf, normalised=True)
        hi = np.nextafter(Xu + Eu, np.inf)
        fails = (hi > Uf[:, None]) & nonterm[:, None]
        top, bottom = successor_range(mdp, Uf)
        # an averaging row is proven by its successors' largest value
        fails &= ~(average & (top <= Uf[:, None]))
        tie = (top - bottom <= scale) & np.isfinite(top)
        # Raise failing states to an upper bound on their backup. The float bound ``hi`` overshoots by ~E: fine
        # where the chain contracts, but on a loop of near-ties (successors within the perturbation scale of
        # each other) the overshoot would circulate and grow every sweep. There an averaging row is raised to
        # its successors' largest value (which never exceeds the loop's maximum and spreads it in as many sweeps
        # as the loop is long) and any other row to just above its exact backup, computed in rational arithmetic.
        new = np.where(fails & ~tie, hi, -np.inf).max(axis=1)
        new = np.maximum(new, np.where(fails & tie & average, top, -np.inf).max(axis=1))
        exact_rows = np.argwhere(fails & tie & ~average)
        if exact_rows.shape[0] > 20_000:
            return float("inf")
        for s, a in exact_rows:
            q = exact_q_row(mdp, int(s), int(a), Uf, normalised=True)
            if q > Fraction(float(Uf[s])):
                new[s] = max(new[s], round_up(q))
        raise_ = new > Uf
        if not raise_.any():
            gap = float(np.max((Uf - V)[nonterm]))
            return max(gap, 0.0) * (1 + 2 * U) + U * float(np.max(np.abs(Uf)))
        Uf = np.where(raise_, new, Uf)
    return float("inf")


def hard_ssp_bound(mdp: TabularMDP, V: np.ndarray, policy: np.ndarray, solver) -> float:
    """Certified ``max |V - V*|`` at gamma = 1 for ``V ~ V^pi``, ``pi`` proper (module docstring, gamma = 1).

    ``solver`` solves ``(I - P_pi) x = b`` on the non-terminal states (its factorisation is reused for the
    expected steps ``w``).
    """
    nonterm = ~mdp.terminal
    if not nonterm.any():
        return 0.0
    S, A = mdp.n_states, mdp.n_actions
    rows = np.arange(S)
    weights = np.zeros((S, A))
    weights[rows, policy] = 1.0
    w = np.zeros(S)
    w[nonterm] = solver(np.ones(int(nonterm.sum())))
    w = np.maximum(w, 0.0)
    if not np.all(np.isfinite(w)):
        return float("inf")
    kappa = steps_kappa(mdp, weights, w)
    if not kappa > 0:
        return float("inf")
    steps = Fraction(float(np.max(w))) / Fraction(kappa)
    X, E = shifted_backup(mdp, 0.0, V, normalised=True)
    eps = X[rows, policy] - V
    E_eps = E[rows, policy] + SAFETY * U * np.abs(eps)
    eps_hi = float(np.max((eps + E_eps)[nonterm]))
    eps_lo = float(np.min((eps - E_eps)[nonterm]))
    eps_hi = round_up(Fraction(eps_hi) + Fraction(U) * abs(Fraction(eps_hi)))
    eps_lo = round_down(Fraction(eps_lo) - Fraction(U) * abs(Fraction(eps_lo)))
    lower = round_up(steps * max(Fraction(0), -Fraction(eps_lo)))
    t = round_up(2 * max(Fraction(0), Fraction(eps_hi)) / Fraction(kappa))
    upper = hard_supersolution_gap(mdp, V, w, t)
    return max(lower, upper) * (1 + 16 * U)


def ssp_certificate(mdp: TabularMDP, policy: np.ndarray, max_iter: int = 10_000, linear_solver: str = "auto",
                    tol: float | None = None, method: str = "policy_iteration"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Polish a *proper* deterministic policy by policy iteration and certify it (gamma = 1).

    Improvement switches an action only if it gains more than ``64 eps |V|``. From a proper
    policy this keeps every iterate proper unless some policy has a closed class with positive
    mean reward: if the switched policy ``pi'`` had a closed class C, then on C
    ``V <= T^pi' V`` with strict inequality where it switched, and averaging over the stationary
    law of C gives mean reward ``> 0`` (values unbounded, :class:`UnboundedMDPError`); with mean
    reward 0 nothing in C switches, so C was closed under ``pi`` already, a contradiction.

    The stable policy's values are refined once (:func:`refine_evaluation`) and certified by
    :func:`hard_ssp_bound`. Returns ``(V, Q, policy, error_bound, iterations)`` with ``V ~ V^policy``; a bound
    above ``tol`` (if given) comes with a :class:`CertificateFloorWarning`.
    """
    policy = policy.copy()
    S = mdp.n_states
    rows = np.arange(S)
    solve_with = "direct" if linear_solver == "auto" else linear_solver
    for it in range(1, max_iter + 1):
        V, solver = evaluate_deterministic(mdp, policy, solve_with, return_solver=True)
        q = q_values(mdp, V)
        best = q.argmax(axis=1)
        gain = q[rows, best] - q[rows, policy]
        switch_tol = 64 * EPS * max(1.0, float(np.max(np.abs(V))))
        switch = (gain > switch_tol) & ~mdp.terminal
        if not switch.any():
            _, V = refine_evaluation(mdp, policy, V, solver, shift=False)
            bound = hard_ssp_bound(mdp, V, policy, solver)
            if tol is not None and bound > tol:
                warn_floor(method, bound, tol, bound, V, 1.0)
            return V, q_values(mdp, V), policy, bound, it
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
