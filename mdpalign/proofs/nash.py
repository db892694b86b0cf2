r"""Nash learning from human feedback (NLHF, Munos et al., arXiv 2312.00886): the regularised Nash
equilibrium of a preference game, and one step of Nash-MD.

Preference model ``P(y > y')`` ``(K, K)`` per context with ``P(y > y') + P(y' > y) = 1`` (the diagonal is read
as 1/2), ``P(y > pi) = sum_y' pi(y') P(y > y')``, anchor ``mu`` (the reference policy), ``tau > 0``. The
regularised game: a player picks ``pi`` to maximise

    P(pi > pi') - tau KL(pi || mu) + tau KL(pi' || mu)

against the other's ``pi'``; the best response to ``pi'`` is ``pi ∝ mu exp(P(y > pi')/tau)`` (a KL-RL
problem with reward ``P(y > pi')``). The game is symmetric (``P(pi > pi') = 1 - P(pi' > pi)``) and its
equilibrium ``pi*`` is the unique solution of

    pi*(y) ∝ mu(y) exp(P(y > pi*)/tau).

Uniqueness, directly: if ``pi_1`` and ``pi_2`` both solve it, ``log pi_1 - log pi_2 = P (pi_1 - pi_2)/tau + c``.
Take the inner product with ``v = pi_1 - pi_2`` (``sum v = 0``): the left side is the symmetrised KL
``>= 0``, ``= 0`` only if ``pi_1 = pi_2``; on the right ``P = 11^T/2 + S`` with ``S`` antisymmetric, so
``v^T P v = (1^T v)^2/2 + v^T S v = 0``. (This is the strong monotonicity the paper uses.)
Solved by damped Newton in ``(log pi, c)`` and certified (:mod:`mdpalign.proofs._certify`).

Differs from Gibbs: even for Bradley–Terry preferences ``P(y > y') = sigma(r_y - r_y')`` the "reward"
``P(y > pi*)`` is bounded in ``[0, 1]`` and depends on ``pi*`` itself; e.g. ``r = [1, .5, .2, 0]``,
``mu = [.1, .2, .3, .4]``, ``tau = .2``: ``pi* = [.2220, .2475, .2585, .2719]`` against the KL-RL optimum at
``beta = tau`` ``[.8025, .1318, .0441, .0216]`` — the top arm keeps *less* mass than the worst one. (THEORY.md's
".435 vs .727 in a 4-arm example" could not be reproduced: its data were not recorded.)

Nash-MD (the paper's Section on Nash-MD): with step ``eta`` (``0 < eta tau <= 1``) and the geometric
mixture ``pi_t^mu ∝ pi_t^{1 - eta tau} mu^{eta tau}``,

    pi_{t+1} = argmax_pi [ eta P(pi > pi_t^mu) - KL(pi || pi_t^mu) ],
    i.e.  pi_{t+1} ∝ pi_t^mu exp(eta P(y > pi_t^mu)).

Its fixed point is **not** ``pi*`` for ``eta > 0``: ``log pi = (1 - eta tau) log pi + eta tau log mu + eta P pi^mu + c``
gives ``pi ∝ mu exp(P(y > pi^mu)/tau)`` — the equilibrium condition evaluated against the mixture
``pi^mu`` instead of ``pi`` (:func:`nash_md_fixed_point`). As ``eta -> 0`` the mixture tends to ``pi`` and the
fixed point to ``pi*``, at distance ``O(eta)`` (the paper's constant-step bound
``KL(pi*, pi_T) <= (1 - eta tau)^T KL(pi*, pi_0) + 2 eta / tau`` says the same; its decreasing step
``eta_t`` makes the last iterate converge to ``pi*`` itself).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from mdpalign.checks import check_positive
from mdpalign.proofs._certify import certified_newton, gamma
from mdpalign.proofs.base import (
    NoClosedFormError,
    ProofInputError,
    UniqueOptimum,
    check_policy_table,
    log_normalise,
    optimum_from_target,
    proof_array,
)

__all__ = ["preference_against", "regularised_nash_optimum", "nash_md_iterate", "nash_md_fixed_point"]


def _check_preferences(preference_matrix: Any, X: int, K: int) -> np.ndarray:
    P = proof_array(preference_matrix, "preference_matrix")
    if P.ndim == 2:
        P = P[None]
    if P.shape != (X, K, K):
        raise ProofInputError(f"preference_matrix must be (X, K, K) = {(X, K, K)} or (K, K), got "
                              f"{np.shape(preference_matrix)}")
    if not np.isfinite(P).all() or (P < 0).any() or (P > 1).any():
        raise ProofInputError("preference_matrix entries must be probabilities in [0, 1]")
    off = ~np.eye(K, dtype=bool)
    bad = np.abs(P + np.swapaxes(P, 1, 2) - 1)[:, off]
    if bad.size and bad.max() > 1e-9:
        raise ProofInputError("preference_matrix must satisfy P(i > j) + P(j > i) = 1 off the diagonal (off by "
                              f"{bad.max():.3g})")
    P = P.copy()
    P[:, np.arange(K), np.arange(K)] = 0.5
    return P


def _inputs(preference_matrix, mu, tau):
    m = check_policy_table(mu, "mu")
    X, K = m.shape
    return _check_preferences(preference_matrix, X, K), m, check_positive(tau, "tau", error=ProofInputError)


def preference_against(preference_matrix: Any, policy: Any) -> np.ndarray:
    """``P(y > pi) = sum_y' pi(y') P(y > y')`` ``(X, K)``."""
    p = check_policy_table(policy, "policy", allow_zero=True)
    P = _check_preferences(preference_matrix, *p.shape)
    return np.einsum("xij,xj->xi", P, p)


def _nash_row(P, lmu, tau):
    K = len(lmu)

    def F(z):
        u, c = z[:K], z[K]
        e = np.exp(u)
        pe = P @ e
        val = np.concatenate([u - lmu - pe / tau - c, [e.sum() - 1.0]])
        err = gamma(K + 8) * np.concatenate([np.abs(u) + np.abs(lmu) + pe / tau + abs(c), [e.sum() + 1.0]])
        return val, err

    def J(z):
        e = np.exp(z[:K])
        Jm = np.zeros((K + 1, K + 1))
        Jm[:K, :K] = np.eye(K) - P * e[None, :] / tau
        Jm[:K, K] = -1.0
        Jm[K, :K] = e
        return Jm, gamma(K + 8) * (np.abs(Jm) + np.eye(K + 1))

    def lip(z, rho):
        e = np.exp(z[:K])
        return float(max((P @ e).max() / tau, e.sum()) * np.exp(rho))

    u = lmu.copy()
    try:
        return certified_newton(F, J, np.concatenate([u, [0.0]]), lip, what="regularised Nash")
    except NoClosedFormError:
        # small tau: walk there with Nash-MD steps first (each step is a contraction towards the
        # eta-neighbourhood of pi*), then polish
        for eta in (0.5 / tau, 0.1 / tau):
            lp = lmu.copy()
            for _ in range(5000):
                lp = _md_step(P, lmu, tau, eta, lp)
            try:
                return certified_newton(F, J, np.concatenate([lp, [0.0]]), lip, what="regularised Nash")
            except NoClosedFormError:
                continue
        raise


def regularised_nash_optimum(preference_matrix: Any, mu: Any, tau: float) -> UniqueOptimum:
    """``pi*(y|x) ∝ mu(y|x) exp(P(y > pi*)/tau)``, the unique regularised Nash equilibrium (module docstring).

    ``preference_matrix`` ``(X, K, K)`` or ``(K, K)``; ``mu`` ``(X, K)`` positive. ``extras``:
    ``error_bound`` (certified ``||log pi - log pi*||_inf`` per context, rounding included),
    ``residual``, ``preference_against`` (``P(y > pi*)``).
    """
    P, m, tau = _inputs(preference_matrix, mu, tau)
    X, K = m.shape
    log_pi = np.zeros((X, K))
    bound = np.zeros(X)
    resid = np.zeros(X)
    for x in range(X):
        z, bound[x], resid[x] = _nash_row(P[x], np.log(m[x]), tau)
        shift = logsumexp(z[:K])
        log_pi[x] = z[:K] - shift
        bound[x] += abs(shift) + gamma(K + 4) * np.abs(z[:K]).max()
    pi = np.exp(log_pi)
    opt = optimum_from_target(
        "regularised_nash",
        None,
        log_target=log_pi,
        derivation="symmetric regularised preference game: pi ∝ mu exp(P(y > pi)/tau), unique (strong monotonicity).",
        extras={
            "error_bound": bound,
            "residual": resid,
            "tau": tau,
            "preference_against": np.einsum("xij,xj->xi", P, pi),
        },
    )
    assert isinstance(opt, UniqueOptimum)
    return opt


def _md_step(P, lmu, tau, eta, lp):
    lmix = log_normalise((1 - eta * tau) * lp + eta * tau * lmu)
    return log_normalise(lmix + eta * (P @ np.exp(lmix)))


def nash_md_iterate(preference_matrix: Any, mu: Any, tau: float, eta: float, pi: Any) -> np.ndarray:
    """One Nash-MD step: ``pi' ∝ pi^mu exp(eta P(y > pi^mu))`` with ``pi^mu ∝ pi^{1 - eta tau} mu^{eta tau}``
    ``(X, K)``.

    Requires ``0 < eta tau <= 1`` (the mixture's exponents are weights). ``pi`` positive rows summing to 1.
    """
    P, m, tau = _inputs(preference_matrix, mu, tau)
    eta = check_positive(eta, "eta", error=ProofInputError)
    if eta * tau > 1:
        raise ProofInputError(f"eta must satisfy eta * tau <= 1 (the geometric mixture's weights), got eta={eta!r}, "
                              f"tau={tau!r}")
    p = check_policy_table(pi, "pi")
    if p.shape != m.shape:
        raise ProofInputError(f"pi has shape {p.shape}, mu has shape {m.shape}")
    lmu, lp = np.log(m), np.log(p)
    return np.exp(np.stack([_md_step(P[x], lmu[x], tau, eta, lp[x]) for x in range(m.shape[0])]))


def nash_md_fixed_point(preference_matrix: Any, mu: Any, tau: float, eta: float, *, max_iter: int = 100_000,
                        tol: float = 1e-14) -> tuple[np.ndarray, np.ndarray]:
    """``(pi_eta, residual)``: the fixed point of :func:`nash_md_iterate` at step ``eta``, by iterating the step
    from ``mu`` until the sup-norm change of ``log pi`` is below ``tol`` (``residual`` per context is that
    change: a residual, not a certified distance). It solves ``pi ∝ mu exp(P(y > pi^mu)/tau)``."""
    P, m, tau = _inputs(preference_matrix, mu, tau)
    eta = check_positive(eta, "eta", error=ProofInputError)
    if eta * tau > 1:
        raise ProofInputError(f"eta must satisfy eta * tau <= 1, got eta={eta!r}, tau={tau!r}")
    X, K = m.shape
    out = np.zeros((X, K))
    res = np.zeros(X)
    for x in range(X):
        lmu = np.log(m[x])
        lp = lmu.copy()
        for _ in range(max_iter):
            new = _md_step(P[x], lmu, tau, eta, lp)
            res[x] = np.abs(new - lp).max()
            lp = new
            if res[x] <= tol:
                break
        else:
            raise NoClosedFormError(f"Nash-MD step did not settle in {max_iter} iterations (context {x}, change "
                                    f"{res[x]:.2e})")
        out[x] = np.exp(lp)
    return out, res
