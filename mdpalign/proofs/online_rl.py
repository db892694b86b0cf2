r"""On-policy RL with a KL penalty to a reference: where each KL estimator, in each placement, lands.

Setting: a contextual bandit with a tabular softmax policy ``pi = softmax(theta_x)``, reward
``r(x, y)``, reference ``q = pi_ref``, ``beta > 0``; ``h(y) = log pi(y) - log q(y)`` and ``rho = q/pi = e^{-h}``.
The per-sample estimators of ``KL(pi || q)`` (Schulman, "Approximating KL divergence", 2020):
``k1 = h``, ``k2 = h^2/2``, ``k3 = rho - log rho - 1 = e^{-h} + h - 1``. Three placements:

* ``"reward"``: the estimate is detached and subtracted from the reward, ``r - beta k(h)``, then
  REINFORCE / RLOO / ReMax / PPO-clip (InstructGPT's per-token KL reward, OpenRLHF's default,
  TRL ``PPOTrainer``; verl ``use_kl_in_reward``);
* ``"loss"``: ``beta k(h)`` is added to the loss, differentiated through ``log pi(y)`` of the sampled
  ``y`` (TRL ``GRPOTrainer`` with ``use_bias_correction_kl=False``, verl ``use_kl_loss`` with
  ``low_var_kl`` = k3 or ``mse`` = k2);
* ``"loss_is"``: ``beta (pi/pi_old) k(h)`` as a loss, ``pi_old`` the detached sampling policy — TRL's
  ``use_bias_correction_kl=True`` (its default in TRL 1.16) and verl's ``k3+``.

Effective advantage. Sampling ``y ~ pi`` and averaging, every one of these updates is, in
expectation, the ascent direction ``pi ⊙ (A - E_pi A)`` on the logits with an effective advantage
``A(y; pi) = r(y) - beta k_eff(h(y))``, because ``d log pi(y)/d theta = e_y - pi``:

* reward: ``E[(r - beta k) (e_y - pi)]``, so ``k_eff = k``;
* loss: ``E[d k(h(y))/d theta] = E[k'(h) (e_y - pi)]``, so ``k_eff = k'``;
* loss_is: at ``pi_old = pi``, ``d/d theta [(pi/pi_old) k] = (k + k') (e_y - pi)``, so ``k_eff = k + k'``.

Each is the gradient of a potential ``Phi(pi) = E_pi r - beta E_pi f(h)`` with ``f + f' = k_eff``
(``d/d theta_y sum_z pi_z f(h_z) = pi_y (f + f')(h_y) - pi_y E_pi[f + f']``), so the expected update is
gradient ascent on ``Phi`` in logit coordinates. The table (``KL(a||b)`` = ``KL(a || b)``):

==========  =========  ==========================  =============================  ====================================
estimator   placement  k_eff(h)                    E_pi f(h)  (Phi = E r - beta*)  fixed point
==========  =========  ==========================  =============================  ====================================
k1          reward     h                           KL(pi||q) - 1                  Gibbs ``q e^{r/beta}/Z``
k2          reward     h^2/2                       E_pi[h^2/2 - h + 1]            start-dependent, see below
k3          reward     e^{-h} + h - 1              KL(pi||q) - KL(q||pi) - 2      start-dependent, see below
k1          loss       1                           1 (no regulariser)             none; limit on argmax r (by flow)
k2          loss       h                           KL(pi||q) - 1                  Gibbs
k3          loss       1 - e^{-h}                  1 + KL(q||pi)                  ``beta q/(lambda - r)``
k1          loss_is    h + 1                       KL(pi||q)                      Gibbs
k2          loss_is    h^2/2 + h                   E_pi[h^2/2]                    start-dependent, see below
k3          loss_is    h                           KL(pi||q) - 1                  Gibbs
==========  =========  ==========================  =============================  ====================================

Fixed points: ``A - E_pi A = 0`` on the support, i.e. ``k_eff(h_y) = (r_y - lambda)/beta`` for one
``lambda`` per context.

* ``k_eff = h + c`` (k1 in the reward, k2 as a loss, k1·rho and k3·rho as losses): ``h = (r - lambda)/beta``,
  the Gibbs policy, the unique maximiser of the concave ``E r - beta KL(pi||q)``
  (:func:`mdpalign.proofs.kl_rl.kl_rl_optimum`).
* k3 as a loss: ``1 - q/pi = (r - lambda')/beta`` gives ``pi = beta q/(lambda - r)`` with ``lambda > max r``
  fixed by ``sum pi = 1``; the unique maximiser of the concave ``E r - beta KL(q||pi)``, the *forward*
  KL: mass-covering, it keeps more of ``q``'s low-reward arms and over-weights the top arm relative
  to Gibbs. Bracket: ``g(lambda) = sum beta q/(lambda - r)`` decreases from ``+inf`` at ``max r`` to 0;
  ``g(lambda*) = 1 >= beta Q_top/(lambda* - max r)`` (``Q_top = q(argmax r)``) and, by Jensen,
  ``1 >= beta/(lambda* - E_q r)``; and ``1 <= beta/(lambda* - max r)``. So
  ``lambda* - max r`` lies in ``[max(beta Q_top, beta + E_q r - max r), beta]``.
* k1 as a loss: ``E_pi[d h(y)/d theta] = E_pi[e_y - pi] = 0`` — the penalty has zero expected gradient
  and the update is plain REINFORCE on ``r``: no finite optimum (:class:`NoFiniteOptimum`), the mass
  leaves every arm outside ``argmax r``. *Within* a tie class of the argmax the two flows differ.
  Natural gradient (``theta' = A - E A``): ``d/dt (theta_y - theta_z) = r_y - r_z = 0``, so the limit is the
  start ``pi_0`` restricted to ``argmax r``. Plain gradient (``theta' = pi ⊙ (A - E A)``): for tied ``y, z``,
  ``d/dt (theta_y - theta_z) = (pi_y - pi_z)(max r - E_pi r) >= 0`` when ``pi_y >= pi_z`` — the larger arm
  always gains — and ``max r - E_pi r ~ 1/t`` (softmax policy gradient's rate, Mei et al., arXiv
  2005.06392), so ``pi_z/pi_y -> 0`` like a power of ``t``: the limit is ``delta`` on the start's most likely
  argmax arm (equal shares where the start ties exactly), approached only logarithmically.
* k2 in the reward, k3 in the reward, k2·rho as a loss: ``k_eff`` is *not monotone*: it decreases for
  ``h < -1`` (k2·rho) or ``h < 0`` (k2, k3 in the reward) and tends to ``+inf`` as ``h -> -inf``. An arm
  pushed below its reference is penalised *more* the lower it goes, so it runs away (under the
  natural-gradient flow its logit reaches ``-inf`` in finite time, ``d theta_y/dt ~ -beta e^{-h}`` for k3;
  under the plain gradient flow ``pi_y A_y -> -beta q_y`` for k3, an exponential decay of ``pi_y``). The Hessian of
  ``Phi`` in ``pi`` is ``diag(-beta k_eff'(h_y)/pi_y)``: a face of
  the simplex carries a stable fixed point only where this is negative definite on the face's
  tangent space — so at most one surviving arm may have ``k_eff'(h) < 0`` — and every vertex is
  locally attracting (the extinct arms' ``A -> -inf``). For k3 in the reward ``Phi`` is unbounded above
  (``KL(q||pi) -> inf`` at the boundary). Which stable fixed point is reached depends on the start
  and on ``beta`` — and on the flow: plain gradient ascent on the logits (``flow="gradient"``, what
  small SGD steps follow) and the natural gradient (``"natural"``: NPG, multiplicative weights) share
  the fixed points but not the basins. :func:`kl_estimator_optimum` integrates the exact
  expected-update flow from ``start`` (default ``q``) and returns the certified fixed point it lands
  on (:class:`FlowLimit`).

Under the plain gradient flow k3 in the reward has one more twist: an extinct arm keeps
``pi_y A_y -> -beta q_y`` in ``E_pi A`` (``pi k3 -> q``), so the survivors' logits feel a drift
``beta q(extinct) pi_z`` — rich get richer — and the face points move (:func:`_face_fixed_point` with
``c > 0``); in every case tested those faces were unstable and the flow ran on to a vertex. The
natural flow is blind to the drift (a uniform shift of ``A``).

Checked numerically (``tests/proofs/test_online.py``, independent integrators): THEORY.md's claim that
k3 in the reward "collapses to delta(argmax r) from pi_ref, uniform and Gibbs starts" (4-arm example
``r = [1, .5, .2, 0]``, ``q = [.1, .2, .3, .4]``) holds at ``beta = .25`` and ``.5`` for the plain gradient
flow, but not in general: at ``beta = 2`` the gradient flow goes to ``delta_2`` (reward .2) from ``pi_ref`` and to
``delta_1`` from uniform and Gibbs starts; the natural flow stops on faces, ``[.6929, .3071, 0, 0]`` at
``beta = .5`` and ``[.2890, .3713, .3396, 0]`` at ``beta = 2`` (all three starts). Two arms ``r = [1, 0]``,
``q = [.01, .99]``, ``beta = .5``: an interior stable fixed point ``[.1953, .8047]`` under both flows (no
extinction at all).

Clamping an estimator (verl ``+-10`` / ``+-20``, OpenRLHF ``+-10``) zeroes ``k_eff`` on the clamped range:
the effective advantage above then holds only where the estimate is inside the clamp.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import brentq

from mdpalign.checks import check_positive
from mdpalign.proofs._certify import certified_newton, gamma
from mdpalign.proofs.base import (
    NoClosedFormError,
    Optimum,
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    check_policy_table,
    optimum_from_target,
    pinned_all_pairs,
    pinned_array,
    proof_array,
)
from mdpalign.proofs.kl_rl import _check_rewards, kl_rl_optimum

__all__ = [
    "FLOWS",
    "KL_ESTIMATORS",
    "KL_PLACEMENTS",
    "FlowLimit",
    "kl_effective_penalty",
    "kl_effective_advantage",
    "kl_expected_update",
    "kl_estimator_optimum",
    "k3_loss_optimum",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_PLACEMENTS = ("reward", "loss", "loss_is")

_GIBBS = {("k1", "reward"), ("k2", "loss"), ("k1", "loss_is"), ("k3", "loss_is")}
_NON_MONOTONE = {("k2", "reward"), ("k3", "reward"), ("k2", "loss_is")}


def _check_kind(estimator: str, placement: str) -> tuple[str, str]:
    if estimator not in KL_ESTIMATORS:
        raise ProofInputError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    if placement not in KL_PLACEMENTS:
        raise ProofInputError(f"placement must be one of {KL_PLACEMENTS}, got {placement!r}")
    return estimator, placement


def _exp_neg(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(-h)


# k_eff and its first two derivatives, per (estimator, placement); see the module table.
_KEFF: dict[tuple[str, str], tuple[Callable, Callable, Callable]] = {
    ("k1", "reward"): (lambda h: h, lambda h: np.ones_like(h), lambda h: np.zeros_like(h)),
    ("k2", "reward"): (lambda h: h * h / 2, lambda h: h, lambda h: np.ones_like(h)),
    ("k3", "reward"): (lambda h: _exp_neg(h) + h - 1, lambda h: 1 - _exp_neg(h), lambda h: _exp_neg(h)),
    ("k1", "loss"): (lambda h: np.ones_like(h), lambda h: np.zeros_like(h), lambda h: np.zeros_like(h)),
    ("k2", "loss"): (lambda h: h, lambda h: np.ones_like(h), lambda h: np.zeros_like(h)),
    ("k3", "loss"): (lambda h: 1 - _exp_neg(h), lambda h: _exp_neg(h), lambda h: -_exp_neg(h)),
    ("k1", "loss_is"): (lambda h: h + 1, lambda h: np.ones_like(h), lambda h: np.zeros_like(h)),
    ("k2", "loss_is"): (lambda h: h * h / 2 + h, lambda h: h + 1, lambda h: np.ones_like(h)),
    ("k3", "loss_is"): (lambda h: h, lambda h: np.ones_like(h), lambda h: np.zeros_like(h)),
}


def kl_effective_penalty(estimator: str, placement: str, h: Any) -> np.ndarray:
    """``k_eff(h)`` of the module table: the expected update is ``pi ⊙ (A - E_pi A)``, ``A = r - beta k_eff(h)``."""
    estimator, placement = _check_kind(estimator, placement)
    return _KEFF[(estimator, placement)][0](proof_array(h, "h"))


def kl_effective_advantage(rewards: Any, ref_policy: Any, beta: float, estimator: str, placement: str,
                           probs: Any = None, *, log_probs: Any = None) -> np.ndarray:
    """``A(y; pi) = r(y) - beta k_eff(h(y))`` ``(X, K)`` for the policy given by ``probs`` / ``log_probs``."""
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    lp = as_log_policy(probs, log_probs=log_probs, shape=ref.shape)
    return r - beta * kl_effective_penalty(estimator, placement, lp - np.log(ref))


def kl_expected_update(rewards: Any, ref_policy: Any, beta: float, estimator: str, placement: str,
                       probs: Any = None, *, log_probs: Any = None) -> np.ndarray:
    """The exact expected ascent direction on the logits, ``pi ⊙ (A - E_pi A)`` ``(X, K)``.

    It is minus the expected gradient of the per-sample loss ``-(r - beta k) log pi(y)`` (reward
    placement) or ``-r log pi(y) + beta k`` / ``+ beta (pi/pi_old) k`` (loss placements), ``y ~ pi``.
    """
    lp = as_log_policy(probs, log_probs=log_probs)
    A = kl_effective_advantage(rewards, ref_policy, beta, estimator, placement, log_probs=lp)
    p = np.exp(lp)
    return p * (A - (p * A).sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------------- k3 as a loss


def _k3_lambda_row(r: np.ndarray, q: np.ndarray, beta: float) -> tuple[float, float]:
    """``(t*, bound)``: ``lambda* = max r + t*``, and a certified bound on ``|log pi - log pi*|``."""
    rmax = r.max()
    gap = rmax - r  # >= 0, 0 on the argmax class
    if not (gap > 0).any():
        return beta, 0.0  # constant reward: pi = q exactly (t = beta)
    q_top = q[gap == 0].sum()
    lo = max(beta * q_top, beta + float(q @ r) - rmax)
    hi = beta

    def g(t: float) -> tuple[float, float]:
        terms = beta * q / (t + gap)
        s = terms.sum()
        return s - 1.0, gamma(len(r) + 6) * (s + 1.0)

    t = brentq(lambda t: g(t)[0], lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    # bracket the exact root by two points where the sign of g is certain despite rounding
    delta = 4 * np.finfo(float).eps
    for _ in range(60):
        a, b = t * (1 - delta), t * (1 + delta)
        (ga, ea), (gb, eb) = g(a), g(b)
        if ga - ea > 0 and gb + eb < 0:
            break
        delta *= 4
    else:
        raise NoClosedFormError("k3-loss fixed point: could not bracket lambda within rounding")
    # d log pi_y / d t = -1/(t + gap_y), |.| <= 1/a on [a, b]; plus rounding of the log itself
    lpi = np.log(beta) + np.log(q) - np.log(t + gap)
    bound = (b - a) / a + gamma(8) * np.abs(lpi).max() + gamma(8) * 4
    return float(t), float(bound)


def k3_loss_optimum(rewards: Any, ref_policy: Any, beta: float) -> UniqueOptimum:
    """k3 as a loss: ``pi*(y|x) = beta pi_ref(y|x) / (lambda(x) - r(x, y))``, ``sum_y pi* = 1``.

    The unique maximiser of ``E_pi r - beta KL(pi_ref || pi)`` (module docstring; Schulman's k3 used
    as a loss, GRPO's default in the DeepSeekMath paper, arXiv 2402.03300, and verl ``low_var_kl``).
    ``lambda`` is found by a bracketed root find on ``[max r + max(beta Q_top, beta + E_ref r - max r),
    max r + beta]`` and bracketed again within rounding; ``extras["error_bound"]`` (per context)
    bounds ``|log pi - log pi*|`` including float64 rounding, ``extras["lambda"]`` the multiplier.
    """
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    X, K = ref.shape
    log_pi = np.zeros((X, K))
    lam = np.zeros(X)
    bound = np.zeros(X)
    for x in range(X):
        t, bound[x] = _k3_lambda_row(r[x], ref[x], beta)
        lam[x] = r[x].max() + t
        log_pi[x] = np.log(beta) + np.log(ref[x]) - np.log(t + (r[x].max() - r[x]))
    opt = optimum_from_target(
        "kl_k3_loss",
        None,
        log_target=log_pi,
        derivation="k3 as a loss has the gradient of KL(pi_ref || pi): pi = beta pi_ref/(lambda - r), lambda > max r.",
        extras={"lambda": lam, "error_bound": bound, "beta": beta},
    )
    assert isinstance(opt, UniqueOptimum)
    return opt


# ----------------------------------------------------------------------------------- flow limits


class FlowLimit(Optimum):
    """Where the exact expected-update flow goes from a given start, for an update that ascends a
    non-concave (or unbounded) potential: a stable fixed point, in general on a face of the simplex.

    Not an optimum of a loss — other starts may reach other fixed points. ``policy`` is the limit
    (0 on the arms that went extinct, which are also ``vanishing``); ``pinned`` holds the surviving
    arms' log-ratios; ``attained`` is true iff no arm went extinct. ``extras``: ``stable`` per context
    (the face flow's Jacobian, modulo the uniform logit shift, has eigenvalues with negative real
    part — checked by central differences — or the limit is a vertex), ``error_bound`` per
    context (certified sup-norm bound on ``log pi`` of the fixed point on its face; 0 at a vertex),
    ``start``, ``flow``, ``flow_time``. *Which* fixed point is reached comes from numerical integration
    of the flow (adaptive Dormand–Prince 5(4)) and is not certified.
    """


_RK_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_RK_B5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
_RK_B4 = np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])


def _sup_abs(f, h, rho):
    """``max |f|`` over ``[h - rho, h + rho]`` for the ``k_eff`` derivatives here (|f| monotone or convex:
    endpoints)."""
    return np.maximum(np.abs(f(h - rho)), np.abs(f(h + rho)))


def _face_fixed_point(r, lq, beta, keff, keff_d, keff_dd, u0, c=0.0):
    """Certified fixed point of the flow on a face (arms ``r``, ``lq = log pi_ref``), from ``u0`` (``log pi``).

    ``c = 0``: ``(r_y - lambda)/beta - k_eff(h_y) = 0``, ``sum e^u = 1`` (a stationary point of the potential on
    the face; both flows). ``c > 0`` (plain gradient flow, k3 in the reward, extinct reference mass
    ``c/beta``): ``pi_y (A_y - mu) - c/m = 0``, ``sum e^u = 1`` — the extinct arms keep contributing
    ``pi_y A_y -> -beta pi_ref(y)`` to ``E_pi A``, so the survivors' logits all drift by ``c/m`` (a gauge) and the
    face point moves. Returns ``(u, rho)`` with ``||u - u*||_inf <= rho``.
    """
    m = len(r)
    def A(u):
        return r - beta * keff(u - lq)

    if c == 0:
        def F(z):
            u, lam = z[:m], z[m]
            h = u - lq
            k = keff(h)
            val = np.concatenate([(r - lam) / beta - k, [np.exp(u).sum() - 1.0]])
            err = gamma(12) * np.concatenate([(np.abs(r) + abs(lam)) / beta + np.abs(k) + np.abs(h) + np.abs(lq),
                                              [np.exp(u).sum() + 1.0]])
            return val, err

        def J(z):
            Jm = np.zeros((m + 1, m + 1))
            Jm[np.arange(m), np.arange(m)] = -keff_d(z[:m] - lq)
            Jm[:m, m] = -1.0 / beta
            Jm[m, :m] = np.exp(z[:m])
            return Jm, gamma(8) * np.abs(Jm)

        def lip(z, rho):
            rows = _sup_abs(keff_dd, z[:m] - lq, rho)
            return float(max(rows.max(), np.exp(z[:m]).sum() * np.exp(rho)))

        lam0 = float(np.mean(A(u0)))
    else:
        def F(z):
            u, mu = z[:m], z[m]
            p = np.exp(u)
            a = A(u)
            val = np.concatenate([p * (a - mu) - c / m, [p.sum() - 1.0]])
            err = gamma(16) * np.concatenate([p * (np.abs(r) + beta * np.abs(keff(u - lq)) + abs(mu)) + c / m,
                                              [p.sum() + 1.0]])
            return val, err

        def J(z):
            u, mu = z[:m], z[m]
            p = np.exp(u)
            a = A(u)
            Jm = np.zeros((m + 1, m + 1))
            Jm[np.arange(m), np.arange(m)] = p * (a - mu - beta * keff_d(u - lq))
            Jm[:m, m] = -p
            Jm[m, :m] = p
            scale = p * (np.abs(r) + beta * np.abs(keff(u - lq)) + abs(mu))
            return Jm, gamma(16) * (np.abs(Jm) + np.diag(np.append(scale, 0)))

        def lip(z, rho):
            u, mu = z[:m], z[m]
            h = u - lq
            p = np.exp(u) * np.exp(rho)
            d1, d2 = beta * _sup_abs(keff_d, h, rho), beta * _sup_abs(keff_dd, h, rho)
            amu = np.abs(A(u) - mu) + rho * (d1 + 1)
            # J_yy = pi (A - mu + A'), J_y,mu = -pi:
            # d J_yy/du_y = pi (A - mu + 2A' + A''), d J_yy/dmu = d J_y,mu/du_y = -pi
            return float(max((p * (amu + 2 * d1 + d2 + 2)).max(), p.sum()))

        lam0 = float(np.exp(u0) @ A(u0) - c)
    z, rho, _ = certified_newton(F, J, np.concatenate([u0, [lam0]]), lip, what="flow fixed point")
    return z[:m], rho


def _face_stable(field_S, u):
    """Largest real part of the eigenvalues of the face flow's Jacobian at ``u`` modulo the uniform shift < 0?"""
    m = len(u)
    if m == 1:
        return True
    basis = np.linalg.qr(np.vstack([np.ones(m), np.eye(m)[: m - 1]]).T)[0][:, 1:]
    e = 1e-6
    Jm = np.zeros((m, m))
    for k in range(m):
        d = np.zeros(m)
        d[k] = e
        Jm[:, k] = (field_S(u + d) - field_S(u - d)) / (2 * e)
    ev = np.linalg.eigvals(basis.T @ Jm @ basis)
    return bool(ev.real.max() < -1e-7 * (1 + np.abs(ev).max()))


def _lse(z: np.ndarray) -> float:
    """1-D logsumexp without scipy's overhead (the flow calls it ~10^5 times)."""
    m = z.max()
    return float(m + np.log(np.exp(z - m).sum()))


FLOWS = ("gradient", "natural")
#: A face is tried once every arm outside it has ``h < -FACE_DEPTH`` (``pi < e^-7 pi_ref``).
FACE_DEPTH = 7.0


def _flow_limit_row(r, q, beta, kind, start, flow, *, t_max=1e7, rtol=1e-9):
    """Integrate the expected-update flow from ``start`` until it is near a stable fixed point of a face.

    ``flow="gradient"``: ``theta' = pi ⊙ (A - E A)`` (plain gradient ascent on the logits, what small
    SGD steps follow); ``"natural"``: ``theta' = A - E A`` (natural policy gradient / replicator
    dynamics, what multiplicative weights and small-step mirror descent follow). Stop when, for the
    set ``S`` of arms with ``h >= -FACE_DEPTH``, (i) every arm outside ``S`` is on the falling branch of
    ``k_eff`` (``k_eff' < 0``) with an advantage below the face's value, and (ii) Newton on the face
    system from the current state converges (certified) within 1e-2 in ``log pi`` to a point where the
    face flow's Jacobian is stable. For k3 in the reward under the plain gradient flow the arms
    outside ``S`` keep a drift ``c = beta pi_ref(outside)`` on the face (see :func:`_face_fixed_point`).
    """
    keff, keff_d, keff_dd = _KEFF[kind]
    K = len(r)
    lq = np.log(q)
    spread = float(r.max() - r.min()) / beta + 1.0
    drift = kind == ("k3", "reward") and flow == "gradient"
    with np.errstate(divide="ignore"):
        x = np.log(start)
    idx = np.flatnonzero(np.isfinite(x))  # arms at exactly 0 stay there under either flow
    frozen_q = 0.0  # reference mass of arms frozen at 0 (natural flow only)
    t, dt = 0.0, 1e-3 / spread

    def face_field(S, c):
        lqS, rS = lq[S], r[S]

        def f(z):
            lp = z - _lse(z)
            p = np.exp(lp)
            a = rS - beta * keff(lp - lqS)
            g = a - p @ a
            return g if flow == "natural" else p * (g + c)

        return f

    z = x[idx] - _lse(x[idx])
    next_try = 0.0
    while True:
        if len(idx) == 1:
            out = np.zeros(K)
            out[idx] = 1.0
            return out, True, 0.0, t
        field = face_field(idx, 0.0)
        lp = z - _lse(z)
        h = lp - lq[idx]
        a = r[idx] - beta * keff(h)
        if flow == "natural":
            worst = int(np.argmin(h))
            if (h[worst] < -2 * FACE_DEPTH and keff_d(h[worst : worst + 1])[0] < 0
                    and a[worst] < np.delete(a, worst).min()):
                # pi < e^-14 pi_ref on the falling branch, below every other advantage: under the natural flow its
                # log-ratio to every arm keeps falling (to -inf in finite time for k3); freeze it at 0
                frozen_q += q[idx[worst]]
                keep = np.arange(len(idx)) != worst
                idx, z = idx[keep], z[keep] - _lse(z[keep])
                continue
        if t >= next_try:
            next_try = t + 0.05 * max(t, 1.0 / spread)
            face = h >= -FACE_DEPTH
            outside = ~face
            if face.any() and (not outside.any() or np.all(keff_d(h[outside]) < 0)):
                S = idx[face]
                c = beta * (q[idx[outside]].sum() + frozen_q) if drift else 0.0
                lpS = lp[face] - _lse(lp[face])
                # Newton only once the flow on the face has nearly stopped (cheap test, saves futile solves)
                near = len(S) == 1 or (
                    np.abs(face_field(S, c)(lpS) - (c / len(S) if c else 0.0)).max() < 1e-4 * spread * beta)
                u = None
                if near and len(S) == 1:
                    u, rho, lam = np.zeros(1), 0.0, float(r[S[0]] - beta * keff(-lq[S])[0])
                elif near:
                    try:
                        u, rho = _face_fixed_point(r[S], lq[S], beta, keff, keff_d, keff_dd, lpS, c)
                    except NoClosedFormError:
                        u = None
                    if u is not None and (np.abs(u - lpS).max() >= 1e-2 or not _face_stable(face_field(S, c), u)):
                        u = None
                    if u is not None:
                        lam = float(np.exp(u) @ (r[S] - beta * keff(u - lq[S])))
                if u is not None and (not outside.any() or a[outside].max() < lam):
                    res = np.zeros(K)
                    res[S] = np.exp(u)
                    return res, True, rho, t
        if t > t_max:
            raise NoClosedFormError(f"the expected-update flow did not settle by time {t_max:g}")
        # one adaptive Dormand-Prince 5(4) step (the field of the arms still alive)
        while True:
            ks = []
            for i in range(7):
                zi = z + dt * sum(_RK_A[i][j] * ks[j] for j in range(i)) if i else z
                ks.append(field(zi))
            z5 = z + dt * sum(_RK_B5[i] * ks[i] for i in range(7))
            z4 = z + dt * sum(_RK_B4[i] * ks[i] for i in range(7))
            err = np.abs(z5 - z4).max() / (rtol * (1 + np.abs(z).max()))
            if np.isfinite(err) and err <= 1:
                z = z5 - _lse(z5)
                t += dt
                dt *= min(5.0, 0.9 * err ** -0.2) if err > 0 else 5.0
                break
            dt *= max(0.1, 0.9 * err ** -0.25) if np.isfinite(err) else 0.1


def kl_estimator_optimum(rewards: Any, ref_policy: Any, beta: float, estimator: str, placement: str, *,
                         start: Any = None, flow: str = "gradient") -> Optimum:
    """Where on-policy training with KL estimator ``estimator`` in ``placement`` converges (module table).

    * Gibbs ``pi_ref e^{r/beta}/Z`` (:class:`UniqueOptimum`) for k1 in the reward, k2 as a loss, and
      k1·rho / k3·rho as losses (``placement="loss_is"``: TRL ``use_bias_correction_kl``);
    * ``beta pi_ref/(lambda - r)`` for k3 as a loss (:func:`k3_loss_optimum`);
    * :class:`NoFiniteOptimum` for k1 as a loss (the penalty has zero expected gradient): the limit is
      ``delta`` on the most likely (under ``start``) argmax-reward arm for ``flow="gradient"``, ``start``
      restricted to ``argmax r`` for ``flow="natural"``;
    * :class:`FlowLimit` for k2 / k3 in the reward and k2·rho as a loss: the certified stable fixed
      point that the exact expected-update flow (``flow``) reaches from ``start`` (default ``pi_ref``).

    ``rewards`` ``(X, K)`` or ``(K,)``; ``ref_policy`` ``(X, K)`` positive rows summing to 1; ``start``
    ``(X, K)`` rows summing to 1 (zeros allowed: those arms stay at 0).
    """
    estimator, placement = _check_kind(estimator, placement)
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    kind = (estimator, placement)
    if flow not in FLOWS:
        raise ProofInputError(f"flow must be one of {FLOWS}, got {flow!r}")
    st = ref if start is None else check_policy_table(start, "start", allow_zero=True)
    if st.shape != ref.shape:
        raise ProofInputError(f"start has shape {st.shape}, ref_policy has shape {ref.shape}")
    if kind in _GIBBS:
        return dataclasses.replace(
            kl_rl_optimum(r, ref, beta),
            objective=f"kl_{estimator}_{placement}",
            derivation=f"{estimator} ({placement}) has k_eff = h + const: the gradient of E r - beta KL(pi || pi_ref), "
            "maximised by the Gibbs policy.",
        )
    if kind == ("k3", "loss"):
        return k3_loss_optimum(r, ref, beta)
    if kind == ("k1", "loss"):
        sup_r = np.where(st > 0, r, -np.inf)  # arms at 0 stay at 0: the argmax is over the start's support
        top = (sup_r == sup_r.max(axis=1, keepdims=True)) & (st > 0)
        if flow == "gradient":
            top &= st == np.where(top, st, -np.inf).max(axis=1, keepdims=True)
        target = np.where(top, st, 0.0)
        target /= target.sum(axis=1, keepdims=True)
        return optimum_from_target(
            "kl_k1_loss",
            target,
            derivation="k1 as a loss has zero expected gradient (E_pi grad log pi = 0): plain REINFORCE on r; "
            + ("the gradient flow lets the likeliest argmax arm win its tie class" if flow == "gradient"
               else "the natural flow keeps the tie class's ratios"),
            diverging_if_zero="logit gaps to the losing arms diverge (no regularisation)",
            extras={"start": st, "beta": beta, "flow": flow},
        )
    X, K = ref.shape
    policy = np.zeros((X, K))
    stable = np.zeros(X, bool)
    bound = np.zeros(X)
    times = np.zeros(X)
    for x in range(X):
        policy[x], stable[x], bound[x], times[x] = _flow_limit_row(r[x], ref[x], beta, kind, st[x], flow)
    vanishing = policy == 0
    rows: list = []
    with np.errstate(divide="ignore"):
        lpol = np.log(policy)
    for x in range(X):
        rows += pinned_all_pairs(x, np.flatnonzero(~vanishing[x]), np.where(vanishing[x], 0.0, lpol[x]))
    what = {("k2", "reward"): "E_pi[h^2/2 - h + 1]", ("k3", "reward"): "KL(pi||ref) - KL(ref||pi)",
            ("k2", "loss_is"): "E_pi[h^2/2]"}[kind]
    return FlowLimit(
        objective=f"kl_{estimator}_{placement}",
        shape=(X, K),
        policy=policy,
        pinned=pinned_array(rows),
        vanishing=vanishing,
        constrained=np.ones(X, bool),
        attained=not vanishing.any(),
        diverging=("logits of the extinct arms reach -inf in finite time of the flow" if vanishing.any() else None),
        derivation=f"{estimator} ({placement}) ascends E r - beta {what}, not concave: arms pushed below the "
        "reference run away; the flow from `start` settles on a stable fixed point of a face.",
        extras={"stable": stable, "error_bound": bound, "start": st, "flow": flow, "flow_time": times, "beta": beta},
    )
