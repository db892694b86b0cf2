"""KL-regularised (soft) optimal values and policies, computed in log-space and certified."""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from mdpalign.mdp import TabularMDP
from mdpalign.solve._core import (
    macqueen_midpoint,
    EPS, ConvergenceError, SoftSolution, SolverError, _evaluate_from, check_max_iter, check_mdp, check_tol,
    is_proper, proper_greedy_policy, q_values, ssp_rounding_allowance, supersolution_gap, timer,
)

__all__ = ["soft_value_iteration", "soft_backup", "log_reference", "soft_policy_value"]


def check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise SolverError(f"beta must be a positive finite number; got {beta!r}") from None
    if not np.isfinite(b) or b <= 0:
        raise SolverError(f"beta must be a positive finite number (the KL temperature); got {beta!r}")
    return b


def log_reference(mdp: TabularMDP, ref_policy=None) -> np.ndarray:
    """``log pi_ref`` as (S, A), ``-inf`` where the reference puts no mass; uniform if None."""
    S, A = mdp.n_states, mdp.n_actions
    if ref_policy is None:
        return np.full((S, A), -np.log(A))
    ref = np.asarray(ref_policy, dtype=np.float64)
    if ref.shape != (S, A):
        raise SolverError(f"ref_policy must have shape ({S}, {A}) (probabilities per state); got {ref.shape}")
    if not np.all(np.isfinite(ref)) or np.any(ref < 0):
        raise SolverError("ref_policy has negative or non-finite probabilities at (state, action) "
                          f"{np.argwhere(~(ref >= 0) | ~np.isfinite(ref))[:5].tolist()}")
    empty = ~(ref > 0).any(axis=1)
    if empty.any():
        raise SolverError(f"ref_policy puts no mass on any action at states {np.flatnonzero(empty)[:10].tolist()}; "
                          "the KL-regularised problem is undefined there")
    off = np.abs(ref.sum(axis=1) - 1.0)
    if np.any(off > 1e-8):
        s = int(np.argmax(off))
        raise SolverError(f"ref_policy row for state {s} sums to {ref[s].sum():.12g}, not 1")
    with np.errstate(divide="ignore"):
        return np.log(ref)


def _soft_lse(log_ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``log sum_a pi_ref(a) exp(x_a)`` per row, accurate for tiny and huge ``x``.

    With ``m = max x`` over the reference's support, ``t = sum pi_ref exp(x - m)``: when
    ``t > 1/2`` we use ``log1p(sum pi_ref expm1(x - m))`` instead of ``log t``, which keeps full
    relative precision when all ``x`` are nearly equal (large beta: ``beta * log(...)`` would
    otherwise amplify a rounding of 1e-16 by beta). The reference is taken as exactly normalised.
    """
    x = np.where(np.isfinite(log_ref), x, -np.inf)
    m = x.max(axis=1)
    z = x - m[:, None]
    ref = np.exp(log_ref)
    with np.errstate(under="ignore", invalid="ignore"):
        t = (ref * np.exp(z)).sum(axis=1)
        s = np.where(ref > 0, ref * np.expm1(z), 0.0).sum(axis=1)
    return m + np.where(t > 0.5, np.log1p(np.maximum(s, -0.5)), np.log(t))
def soft_backup(mdp: TabularMDP, values: np.ndarray, beta: float, log_ref: np.ndarray):
    """``(T_beta V, Q, log pi)``: ``V' = beta logsumexp(log pi_ref + Q / beta)``, ``Q = R + gamma P V``.

    Terminal states keep value 0. The soft policy ``log pi = log pi_ref + (Q - V')/beta`` is
    returned normalised.
    """
    q = q_values(mdp, values)
    x = q / beta
    lse = _soft_lse(log_ref, x)
    log_pi = log_ref + x - lse[:, None]
    V = beta * lse
    V[mdp.terminal] = 0.0
    return V, q, log_pi


def soft_policy_value(mdp: TabularMDP, log_pi: np.ndarray, beta: float, log_ref: np.ndarray,
                      return_system: bool = False):
    """Soft value of a stochastic policy: ``E[sum_t gamma^t (r_t - beta KL(pi(s_t) || pi_ref(s_t)))]``.

    Linear solve ``(I - gamma P_pi) V = r_pi - beta KL_pi`` on the non-terminal states (needs a
    proper policy at gamma = 1).
    """
    pi = np.exp(log_pi)
    with np.errstate(invalid="ignore"):
        kl_terms = np.where(pi > 0, pi * (log_pi - log_ref), 0.0)
    kl = kl_terms.sum(axis=1)
    P_pi, r_pi = mdp.policy_transitions(pi / pi.sum(axis=1, keepdims=True))
    r = r_pi - beta * kl
    r[mdp.terminal] = 0.0
    V = _evaluate_from(mdp, P_pi, r, "direct")
    return (V, P_pi, r) if return_system else V


def soft_value_iteration(mdp: TabularMDP, beta: float, ref_policy=None, tol: float = 1e-10,
                         max_iter: int = 100_000) -> SoftSolution:
    """Optimum of ``E[sum_t gamma^t (r_t - beta KL(pi(.|s_t) || pi_ref(.|s_t)))]``, in log-space.

    Soft Bellman equation (Ziebart 2010; Rafailov et al. 2024 "From r to Q*")::

        Q(s,a)  = R(s,a) + gamma sum_s' P(s'|s,a) V(s')
        V(s)    = beta log sum_a pi_ref(a|s) exp(Q(s,a)/beta)
        pi*(a|s) = pi_ref(a|s) exp((Q(s,a) - V(s)) / beta)

    ``pi_ref`` is uniform by default; zeros are allowed (those actions are excluded, log 0 = -inf
    never enters an exp) but a state whose reference has no mass is an error. Always a
    logsumexp, so beta down to 1e-4 (and below) neither overflows nor underflows to NaN.
    beta -> 0 gives the hard optimum (``0 <= V_beta - V* <= beta log|A| / (1-gamma)`` for a
    uniform reference), beta -> infinity the reference policy's value.

    ``gamma < 1``: the soft operator is monotone, a gamma-contraction and shifts by at most
    ``gamma c`` under ``V + c``, so MacQueen's bounds hold exactly as for value iteration; we
    stop at half-width ``<= tol`` and return the midpoint and that half-width.

    ``gamma = 1``: soft *policy* iteration instead (evaluate the current stochastic policy's soft
    value by a linear solve, improve it to ``softmax(log pi_ref + Q/beta)``), starting from
    ``pi_ref`` itself, which must be proper (its support reaches termination from every
    state; checked). Every iterate has the reference's support and so is proper. The values are
    the soft value of a proper policy (a lower bound on the soft optimum) and ``error_bound`` is
    ``max(U - V)`` for a floating-point soft super-solution ``T_beta U <= U`` (module docstring of
    ``mdpalign.solve._core``; the argument is the same with ``T^pi'`` the soft evaluation
    operator, since ``T_beta = max_pi' T^pi'`` by the Gibbs variational principle).

    ``policy`` is the argmax of ``policy_probs`` (ties toward termination at gamma = 1; note that
    at gamma = 1 the greedy policy of a soft optimum can be improper even though the soft
    policy is not).
    """
    start = timer()
    check_mdp(mdp)
    beta = check_beta(beta)
    tol = check_tol(tol)
    max_iter = check_max_iter(max_iter)
    log_ref = log_reference(mdp, ref_policy)
    S = mdp.n_states
    gamma = mdp.gamma

    def finish(V, q, log_pi, bound, iters):
        if gamma == 1.0:
            policy, _ = proper_greedy_policy(mdp, log_pi, tie_tol=1e-12)
        else:
            policy = log_pi.argmax(axis=1).astype(np.int64)
        return SoftSolution(V, q, policy, bound, iters, "soft_value_iteration", timer() - start,
                            policy_probs=np.exp(log_pi), log_policy=log_pi, beta=beta)

    if gamma == 1.0:
        if not is_proper(mdp, np.exp(log_ref)):
            raise SolverError("at gamma = 1 the reference policy must be proper (its support must reach a terminal "
                              "state from every state); otherwise the KL-regularised values are undefined")
        log_pi = log_ref.copy()
        prev = np.inf
        for it in range(1, max_iter + 1):
            try:
                V, P_pi, r_soft = soft_policy_value(mdp, log_pi, beta, log_ref, return_system=True)
            except (sla.LinAlgError, RuntimeError) as exc:
                raise SolverError(f"soft policy evaluation failed at gamma = 1 with beta={beta:g} ({exc}); "
                                  "probabilities underflowed to an improper policy: use a larger beta") from exc
            if not np.all(np.isfinite(V)):
                raise SolverError(f"soft policy evaluation gave non-finite values at gamma = 1 with beta={beta:g}; "
                                  "use a larger beta")
            TV, q, new_log_pi = soft_backup(mdp, V, beta, log_ref)
            change = float(np.max(np.abs(TV - V)))
            log_pi = new_log_pi
            if change <= 64 * EPS * max(1.0, float(np.max(np.abs(V)))) or change >= prev:
                bound, _ = supersolution_gap(lambda U: soft_backup(mdp, U, beta, log_ref)[0], V)
                bound += ssp_rounding_allowance(mdp, P_pi, r_soft, V)
                return finish(V, q, log_pi, bound, it)
            prev = change
        raise ConvergenceError(f"soft policy iteration did not converge within {max_iter} iterations")

    V = np.zeros(S)
    for k in range(1, max_iter + 1):
        TV = soft_backup(mdp, V, beta, log_ref)[0]
        midpoint, half_width = macqueen_midpoint(mdp, V, TV)
        V = TV
        if half_width <= tol:
            V = midpoint
            q = q_values(mdp, V)
            log_pi = log_ref + q / beta - _soft_lse(log_ref, q / beta)[:, None]
            return finish(V, q, log_pi, half_width, k)
    raise ConvergenceError(
        f"soft value iteration reached max_iter={max_iter} with certified error {half_width:.3g} > tol={tol:g}"
    )
