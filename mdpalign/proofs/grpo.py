r"""GRPO and Dr. GRPO on a contextual bandit: the exact fixed points of the group-normalised update.

GRPO (DeepSeekMath, arXiv 2402.03300) samples a group ``y_1..y_G ~ pi`` i.i.d. per prompt and gives
sample ``i`` the advantage ``A_i = (r_i - mean_G r) / (std_G r + eps)``; TRL computes ``std`` with
Bessel's correction (``nanstd``: ``sqrt(sum (r - mean)^2 / (G - 1))``, as ``torch.std``) and ``eps = 1e-4``
(``GRPOTrainer._generate_and_score_completions``, TRL 1.16). Dr. GRPO (arXiv 2503.20783;
``scale_rewards="none"``) drops the division. The KL to ``pi_ref`` enters as in
:mod:`mdpalign.proofs.online_rl`: k3 as a loss (``kl="k3_loss"``; TRL ``use_bias_correction_kl=False``),
``k3·pi/pi_old`` or k2 as a loss (``"k3_loss_is"``, TRL's 1.16 default; ``"k2_loss"``), or k1 in the
reward before the group normalisation (``"k1_reward"``).

Expected update. The loss of a group is ``-(1/G) sum_i A_i log pi(y_i)`` (one token per response:
TRL's ``grpo`` / ``dr_grpo`` / ``dapo`` / ``bnpo`` aggregations coincide). By exchangeability its
expected negative gradient is ``E[A_1 (e_{y_1} - pi)] = pi ⊙ (P_G - E_pi P_G)`` with

    P_G(y | pi) = E[A_1 | y_1 = y],   the other G - 1 draws i.i.d. from pi,

computed here exactly by enumerating the ``K^(G-1)`` tuples of the other draws
(:func:`grpo_expected_advantage`); a group of equal rewards gets advantage exactly 0 (with ``eps = 0``
the float mean can miss the common value by an ulp and ``ulp/ulp`` would give a spurious +-1). ``sum_y pi_y P_G(y|pi) =
0`` for *any* nonnegative weights ``pi``:
it is ``(1/G) E[sum_i A_i]`` over a group drawn from the (unnormalised) product measure, and
``sum_i (r_i - mean) = 0``. With ddof 1, ``|A_i| <= (G - 1)/sqrt(G)`` (Cauchy–Schwarz:
``sum_{j != i} (r_j - m)^2 >= (r_i - m)^2/(G - 1)``), so ``|P_G| < (G - 1)/sqrt(G)``.

Fixed points (effective advantage ``P_G - beta k_eff``, ``E_pi`` of which vanishes on the fixed point):

* ``kl="k3_loss"``: ``P_G(y) + beta q_y/pi_y = beta`` for all ``y`` (multiply by ``pi_y`` and sum: the
  constant is ``beta``), i.e. ``pi = q / (1 - P_G(y|pi)/beta)`` — Vojnovic & Yun, arXiv 2502.18548.
  Conversely, if ``u = log pi`` (unnormalised) solves ``F_y(u) = P_G(y|e^u)/beta + q_y e^{-u_y} - 1 = 0``
  for every ``y``, then ``sum_y e^{u_y} F_y = 0 + 1 - sum e^u`` forces ``sum pi = 1``: the ``K`` equations in
  ``K`` unknowns need no normalisation constraint, and ``P_G < beta`` holds automatically.
* ``kl="k3_loss_is"`` / ``"k2_loss"`` (gradient of ``KL(pi||q)``): ``pi ∝ q exp(P_G(y|pi)/beta)``.
* ``kl="k1_reward"``: the group sees ``r~ = r - beta h`` and the update is ``pi ⊙ P_G[r~]``. If ``r~`` is
  constant on the support every ``A_i`` is 0, so the Gibbs policy ``q e^{r/beta}/Z`` is a fixed point,
  and it is the only one with full support: otherwise the arm maximising ``r~`` has
  ``A_1 >= 0`` in every group and ``> 0`` whenever another arm is drawn, so ``P_G > 0`` there.
  The same holds with ``scale_rewards="none"``: **k1 in the reward gives Gibbs at beta** (the factor
  ``(G-1)/G`` below hits reward and KL alike).
* Dr. GRPO (``scale_rewards="none"``): ``P_G(y) = r_y - E[mean_G] = ((G - 1)/G)(r_y - E_pi r)`` exactly
  (the group mean contains the sample itself). So with a reverse-KL gradient (``"k3_loss_is"``,
  ``"k2_loss"``) the fixed point is **Gibbs at temperature beta G/(G - 1)**, and with ``"k3_loss"`` it is
  the k3-loss fixed point at ``beta G/(G - 1)``. RLOO's leave-one-out baseline removes the factor
  (``P = r - E_pi r``).
* ``scale_rewards="group"`` with a KL loss: not Gibbs even with the correct KL gradient — ``P_G`` is a
  nonlinear, scale-free function of ``r`` (with ``eps = 0``, ``P_G`` is invariant under ``r -> a r + c(x)``,
  ``a > 0``), bounded by ``(G-1)/sqrt(G)``, so the reward scale no longer sets the KL trade-off.
  Solved by damped Newton in ``u = log pi`` and certified (:mod:`mdpalign.proofs._certify`):
  ``extras["error_bound"]`` bounds ``||log pi - log pi*||_inf`` for the unique root within that
  distance (rounding included), ``extras["residual"]`` is the sup-norm residual of the fixed-point
  equations. Global uniqueness is not proven; the tests integrate the exact expected-update flow
  from several starts and reach the same point.

Numbers (``r = [1, .5, .2, 0]``, ``q = [.1, .2, .3, .4]``, ``beta = .5``, k3 as a loss, ddof 1, ``eps = 1e-4``):
G = 2 ``[.4499, .1798, .1843, .1860]``, G = 3 ``[.6292, .1054, .1227, .1427]``, G = 4
``[.6911, .0850, .1014, .1225]`` (THEORY.md's G = 2 and G = 4 confirmed; with ddof 0 G = 2 would give
``[.5853, .1256, .1411, .1480]``).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from mdpalign.checks import check_positive
from mdpalign.proofs._certify import certified_newton, gamma
from mdpalign.proofs.base import (
    NoClosedFormError,
    ProofInputError,
    UniqueOptimum,
    check_policy_table,
    optimum_from_target,
)
from mdpalign.proofs.kl_rl import _check_rewards, kl_rl_optimum
from mdpalign.proofs.online_rl import k3_loss_optimum

__all__ = ["GRPO_KL", "GRPO_SCALE_REWARDS", "TRL_GRPO_EPS", "grpo_expected_advantage", "grpo_optimum"]

GRPO_KL = ("k3_loss", "k3_loss_is", "k2_loss", "k1_reward")
GRPO_SCALE_REWARDS = ("group", "none")
#: TRL adds this to the group std before dividing (``advantages / (std_rewards + 1e-4)``).
TRL_GRPO_EPS = 1e-4
#: Refuse to enumerate more groups than this per context.
MAX_GROUPS = 2_000_000


def _check_group(group_size: Any, K: int) -> int:
    if not isinstance(group_size, (int, np.integer)) or group_size < 2:
        raise ProofInputError(f"group_size must be an integer >= 2, got {group_size!r}")
    if float(K) ** (group_size - 1) > MAX_GROUPS:
        raise ProofInputError(f"group_size={group_size} with {K} arms needs {K}^{group_size - 1} groups per context, "
                              f"more than {MAX_GROUPS:,} to enumerate")
    return int(group_size)


def _check_scale(scale_rewards: str) -> str:
    if scale_rewards == "batch":
        raise NoClosedFormError("scale_rewards='batch' divides by the std over the whole batch: it couples contexts "
                                "and depends on the batch size; no population fixed point is encoded")
    if scale_rewards not in GRPO_SCALE_REWARDS:
        raise ProofInputError(f"scale_rewards must be one of {GRPO_SCALE_REWARDS}, got {scale_rewards!r}")
    return scale_rewards


def _group_tables(r: np.ndarray, G: int, scale: str, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(T, A, cnt)``: tuples of the other draws ``(n, G-1)``, ``A[y, t]`` the advantage of a sample ``y`` in
    the group ``(y, T[t])``, and ``cnt[t, k]`` = how often arm ``k`` occurs in ``T[t]``."""
    K = len(r)
    T = np.array(list(itertools.product(range(K), repeat=G - 1)), dtype=np.int64).reshape(-1, G - 1)
    groups = np.concatenate([np.broadcast_to(r[:, None, None], (K, len(T), 1)),
                             np.broadcast_to(r[T][None], (K, len(T), G - 1))], axis=2)
    A = groups[..., 0] - groups.mean(axis=2)
    tied = np.ptp(groups, axis=2) == 0
    if scale == "group":
        with np.errstate(invalid="ignore", divide="ignore"):
            A = A / (groups.std(axis=2, ddof=1) + eps)
    # a group of equal rewards has advantage exactly 0; the float mean can miss the common value by an ulp,
    # which with eps = 0 would turn into a spurious +-1 (TRL's eps = 1e-4 hides it)
    A = np.where(tied, 0.0, A)
    cnt = np.stack([(T == k).sum(axis=1) for k in range(K)], axis=1).astype(np.float64)
    return T, A, cnt


def _weights(u: np.ndarray, T: np.ndarray) -> np.ndarray:
    return np.exp(u[T].sum(axis=1))


def grpo_expected_advantage(rewards: Any, policy: Any, group_size: int, scale_rewards: str = "group",
                            eps: float = TRL_GRPO_EPS) -> np.ndarray:
    """``P_G(y | pi) = E[A_1 | y_1 = y]`` ``(X, K)``, by enumerating the other ``G - 1`` draws (module docstring).

    The expected GRPO ascent direction on the logits is ``pi ⊙ P_G`` (``E_pi P_G = 0``).
    """
    pol = check_policy_table(policy, "policy", allow_zero=True)
    r = _check_rewards(rewards, pol.shape)
    G = _check_group(group_size, pol.shape[1])
    scale = _check_scale(scale_rewards)
    eps = check_positive(eps, "eps", allow_zero=True, error=ProofInputError)
    out = np.zeros(pol.shape)
    for x in range(pol.shape[0]):
        T, A, _ = _group_tables(r[x], G, scale, eps)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.prod(pol[x][T], axis=1)
            out[x] = np.nan_to_num(A, nan=0.0) @ w
    return out


def _solve_group_row(r, q, beta, G, kl, eps):
    T, A, cnt = _group_tables(r, G, "group", eps)
    A = np.nan_to_num(A, nan=0.0)
    K = len(r)
    lq = np.log(q)
    absA = np.abs(A)
    n_terms = len(T) + G + 8

    def P_and_grad(u):
        """``P``, ``dP/du`` and the sums of absolute terms of both (for their rounding bounds)."""
        w = _weights(u, T)
        wc = w[:, None] * cnt
        return A @ w, A @ wc, absA @ w, absA @ wc

    if kl == "k3_loss":
        def F(u):
            P, _, Pabs, _ = P_and_grad(u)
            e = q * np.exp(-u)
            return P / beta + e - 1.0, gamma(n_terms) * (Pabs / beta + e + 1.0)

        def J(u):
            _, dP, _, dPabs = P_and_grad(u)
            d = np.diag(q * np.exp(-u))
            return dP / beta - d, gamma(n_terms) * (dPabs / beta + d)

        def lip(u, rho):
            w = _weights(u, T)
            second = (G - 1) ** 2 * np.exp((G - 1) * rho) * (absA @ w) / beta
            return float((second + q * np.exp(-u) * np.exp(rho)).max())

        u0 = lq
    else:
        def F(z):
            u, c = z[:K], z[K]
            P, _, Pabs, _ = P_and_grad(u)
            val = np.concatenate([u - lq - P / beta - c, [np.exp(u).sum() - 1.0]])
            err = gamma(n_terms) * np.concatenate([np.abs(u) + np.abs(lq) + Pabs / beta + abs(c),
                                                   [np.exp(u).sum() + 1]])
            return val, err

        def J(z):
            _, dP, _, dPabs = P_and_grad(z[:K])
            Jm = np.zeros((K + 1, K + 1))
            Jm[:K, :K] = np.eye(K) - dP / beta
            Jm[:K, K] = -1.0
            Jm[K, :K] = np.exp(z[:K])
            err = np.zeros_like(Jm)
            err[:K, :K] = dPabs / beta + np.eye(K)
            err[K, :K] = np.exp(z[:K])
            return Jm, gamma(n_terms) * err

        def lip(z, rho):
            w = _weights(z[:K], T)
            second = (G - 1) ** 2 * np.exp((G - 1) * rho) * (absA @ w) / beta
            return float(max(second.max(), np.exp(z[:K]).sum() * np.exp(rho)))

        u0 = np.concatenate([lq, [0.0]])
    try:
        z, rho, res = certified_newton(F, J, u0, lip, what="GRPO fixed point")
    except NoClosedFormError:
        # far from the root Newton can wander; follow the expected-update flow first, then polish
        z0 = _flow_start(r, q, beta, T, A, kl)
        z0 = z0 if kl == "k3_loss" else np.concatenate([z0, [0.0]])
        z, rho, res = certified_newton(F, J, z0, lip, what="GRPO fixed point")
    return z[:K], rho, res


def _flow_start(r, q, beta, T, A, kl, steps=20000):
    """Explicit Euler on the expected-update flow (step 1/(20 (1 + 1/beta))): a rough start for Newton."""
    lq = np.log(q)
    th = lq.copy()
    dt = 0.05 / (1 + 1 / beta)
    for _ in range(steps):
        lp = th - np.logaddexp.reduce(th)
        p = np.exp(lp)
        P = A @ np.prod(p[T], axis=1)
        a = P - beta * (1 - q / p) if kl == "k3_loss" else P - beta * (lp - lq)
        g = a - p @ a
        th = th + dt * g
        if np.abs(p * g).max() < 1e-8:
            break
    return th - np.logaddexp.reduce(th)


def grpo_optimum(rewards: Any, ref_policy: Any, beta: float, group_size: int, scale_rewards: str = "group",
                 kl: str = "k3_loss", eps: float = TRL_GRPO_EPS) -> UniqueOptimum:
    """The fixed point of GRPO / Dr. GRPO with a KL term (module docstring for each case).

    ``rewards`` ``(X, K)``, ``ref_policy`` ``(X, K)``, ``group_size`` ``G >= 2`` (enumerated: ``K^(G-1)``
    groups), ``scale_rewards`` ``"group"`` (GRPO, TRL's default) or ``"none"`` (Dr. GRPO), ``kl`` one of
    ``GRPO_KL``, ``eps`` the std offset (TRL: ``1e-4``). ``extras``: ``error_bound`` (certified
    ``||log pi - log pi*||_inf`` per context), ``residual``, ``beta_effective`` where the answer is a
    closed form at a rescaled temperature.
    """
    ref = check_policy_table(ref_policy)
    r = _check_rewards(rewards, ref.shape)
    beta = check_positive(beta, "beta", error=ProofInputError)
    X, K = ref.shape
    G = _check_group(group_size, K)
    scale = _check_scale(scale_rewards)
    eps = check_positive(eps, "eps", allow_zero=True, error=ProofInputError)
    if kl not in GRPO_KL:
        raise ProofInputError(f"kl must be one of {GRPO_KL}, got {kl!r}")
    if kl == "k1_reward":
        o = kl_rl_optimum(r, ref, beta)
        o.extras.update(beta_effective=beta, group_size=G, scale_rewards=scale)
        return _renamed(o, "grpo_k1_reward", "k1 in the reward: Gibbs at beta is the only full-support point where "
                        "every group advantage vanishes (r - beta h constant).")
    if scale == "none":
        b = beta * G / (G - 1)
        if kl == "k3_loss":
            o = k3_loss_optimum(r, ref, b)
        else:
            o = kl_rl_optimum(r, ref, b)
        o.extras.update(beta_effective=b, group_size=G, scale_rewards=scale)
        return _renamed(o, f"dr_grpo_{kl}", f"Dr. GRPO: P_G = (G-1)/G (r - E r), so the {kl} fixed point at beta "
                                            "G/(G-1).")
    log_pi = np.zeros((X, K))
    bound = np.zeros(X)
    resid = np.zeros(X)
    for x in range(X):
        u, bound[x], resid[x] = _solve_group_row(r[x], ref[x], beta, G, kl, eps)
        # the exact root is normalised (k3: by the identity above); renormalising moves u by |log sum e^u|
        shift = np.logaddexp.reduce(u)
        log_pi[x] = u - shift
        bound[x] += abs(shift) + gamma(K + 4) * np.abs(u).max()
    opt = optimum_from_target(
        f"grpo_{kl}",
        None,
        log_target=log_pi,
        derivation=("pi = pi_ref/(1 - P_G(y|pi)/beta)" if kl == "k3_loss" else "pi ∝ pi_ref exp(P_G(y|pi)/beta)")
        + ", P_G the exact group-normalised advantage (Vojnovic & Yun, arXiv 2502.18548).",
        extras={
            "error_bound": bound,
            "residual": resid,
            "beta": beta,
            "group_size": G,
            "scale_rewards": scale,
            "eps": eps,
        },
    )
    assert isinstance(opt, UniqueOptimum)
    return opt


def _renamed(o, objective: str, derivation: str):
    return dataclasses.replace(o, objective=objective, derivation=derivation)
