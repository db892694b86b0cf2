r"""Online (on-policy) losses, checked at their exact expected update.

A sampled on-policy loss ``loss(token_logps, old_logps, ref_logps, advantages, mask)`` is, in expectation over
responses drawn from the current policy ``pi_old``, the surrogate ``S(theta) = sum_y pi_old(y) loss_y(theta)`` with
the sampling weights, ``old_logps`` and the advantages detached. On a tabular bandit the expected update is its
gradient at ``theta = theta_old``, ``F(theta) = grad S(theta; theta_old = theta)`` — computed here through the
user's function, every response enumerated. A method's fixed point is ``F = 0`` (THEORY.md, "Online RL"): found by
Newton's method on the complement of the per-context shift (Jacobian by central differences of the exact field),
certified by ``4 ||F|| / sigma_min(J)`` — the same bound as the offline certificate with the Jacobian's smallest
singular value in place of the Hessian's smallest eigenvalue (``||Delta theta|| <= ||J^-1|| ||F||`` to first order,
a factor 2 for its variation) — and compared with the claim (``kl_rl``: Gibbs, on a tree the soft-optimal token
policy; ``k3_loss``: ``beta pi_ref/(lambda - r)``; ``tree_local_kl`` / ``tree_local_k3``: the myopic points of a
per-token KL, :func:`mdpalign.proofs.token_tree_local_kl_optimum`). On a token tree a response is a leaf's token
path (``(B, T)`` right-padded tensors and mask); ``p_old(y)`` is the product of its token probabilities.

Advantages: ``A(y) = r'(y) - E_pi_old[r']`` with ``r' = r`` or, with ``kl_in_reward``, ``r - beta (log pi_old - log
pi_ref)`` (k1 in the reward, detached): the large-group limit of a mean baseline. Group-std scaling (GRPO's default)
is not modelled: its fixed point is :func:`mdpalign.proofs.grpo_optimum`, a different claim.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mdpalign.testing.adapters import call_loss
from mdpalign.testing.errors import LossCheckError
from mdpalign.testing.expectations import NAMED_OPTIMA, claim_for
from mdpalign.testing.regimes import Problem
from mdpalign.testing.report import RegimeResult

__all__ = ["expected_update", "run_online_regime"]

_f64 = torch.float64
_TOL = 1e-12  # ||F||: the field is O(1); Newton reaches float64 resolution of the gradient
_MAX_NEWTON = 60
_FLOW_STEPS = 5_000  # steps of 1/(2|J|): the slowest mode decays like exp(-step sigma_min / 2|J|)
_VERTEX = 1e-8


def _layout(problem: Problem):
    """Responses as token paths: ``(states, actions, mask)`` ``(N, T)``, rewards ``(N,)``, the reference's
    log-prob table, a prompt id per response, and the logit rows a decision is taken at (``live``)."""
    if problem.tree is not None:
        tree = problem.tree
        p = tree.leaf_token_paths()
        states, actions, mask = (torch.as_tensor(np.array(a)) for a in (p.states, p.actions, p.mask))
        r = torch.as_tensor(np.array(tree.leaf_rewards, dtype=np.float64))
        ref = torch.as_tensor(np.asarray(tree.ref_log_probs), dtype=_f64)
        live = np.flatnonzero(~np.asarray(tree.is_complete))
        return states, actions, mask, r, ref, torch.zeros(len(r), dtype=torch.long), live
    X, K = problem.ref_policy.shape
    x = torch.arange(X).repeat_interleave(K)
    return (x[:, None], torch.arange(K).repeat(X)[:, None], torch.ones(X * K, 1, dtype=torch.bool),
            torch.as_tensor(problem.rewards, dtype=_f64).reshape(-1),
            torch.as_tensor(np.log(problem.ref_policy), dtype=_f64),
            x, np.arange(X))


def expected_update(loss, problem: Problem, theta: np.ndarray, *, kl_in_reward: bool = False) -> np.ndarray:
    """``F(theta)``: gradient of the expected surrogate at ``theta_old = theta`` (descent moves along ``-F``)."""
    states, actions, mask, r, log_ref, prompt, _ = _layout(problem)
    t = torch.tensor(theta, dtype=_f64, requires_grad=True)
    lp = torch.log_softmax(t, dim=-1)
    zero = torch.zeros((), dtype=_f64)
    tok = torch.where(mask, lp[states, actions], zero)
    old = tok.detach()
    ref = torch.where(mask, log_ref[states, actions], zero)
    p_old = old.sum(-1).exp()  # sequence probability under the sampling policy, per prompt
    if kl_in_reward:
        r = r - problem.beta * (old - ref).sum(-1)
    n_prompts = int(prompt.max()) + 1
    mean = torch.zeros(n_prompts, dtype=_f64).index_add(0, prompt, p_old * r)
    adv = r - mean[prompt]
    losses = call_loss(loss, "online_policy", (tok, old, ref, adv, mask), problem.beta)
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (len(r),):
        raise LossCheckError(f"the loss returned shape {tuple(getattr(losses, 'shape', ()))} for {len(r)} responses")
    S = (p_old * losses).sum() / n_prompts
    (g,) = torch.autograd.grad(S, t, allow_unused=True)
    if g is None:
        raise LossCheckError("the expected surrogate has no gradient with respect to the policy")
    return g.detach().numpy()


def _project(K: int) -> np.ndarray:
    return np.eye(K) - np.full((K, K), 1.0 / K)


def _reduced_jacobian(loss, problem, theta, kl, Q, h=1e-6):
    """``Q^T J Q`` by central differences of the exact field along the live directions ``Q`` only."""
    X, K = theta.shape
    cols = []
    for q in Q.T:
        d = (h * q).reshape(X, K)
        cols.append(Q.T @ (expected_update(loss, problem, theta + d, kl_in_reward=kl)
                           - expected_update(loss, problem, theta - d, kl_in_reward=kl)).reshape(-1) / (2 * h))
    return np.stack(cols, axis=1)


def _live_basis(X: int, K: int, rows=None) -> np.ndarray:
    """Orthonormal basis of the logit directions that change the policy at the decision ``rows`` (default all)."""
    blocks = []
    U = np.linalg.svd(_project(K))[0][:, : K - 1]
    for x in (range(X) if rows is None else rows):
        B = np.zeros((X * K, K - 1))
        B[x * K:(x + 1) * K] = U
        blocks.append(B)
    return np.hstack(blocks)


def _solve(loss, problem, theta, kl):
    """Follow the expected update (the dynamics a run follows, so only an attracting fixed point is found), then
    polish with Newton steps. Newton alone is drawn to the vertices of the simplex, where every policy-gradient
    field vanishes trivially; a result with an arm below ``_VERTEX`` probability is therefore not a fixed point."""
    X, K = theta.shape
    live = _layout(problem)[-1]
    Q = _live_basis(X, K, live)
    F = expected_update(loss, problem, theta, kl_in_reward=kl).reshape(-1)
    for k in range(_FLOW_STEPS):
        if np.linalg.norm(F) <= 1e-5 or not np.isfinite(F).all():
            break  # close enough for Newton's quadratic convergence
        if k % 100 == 0:  # step 1/(2 |J|), |J| re-measured as the curvature changes along the path
            J = _reduced_jacobian(loss, problem, theta, kl, Q)
            lr = min(0.5 / max(float(np.abs(np.linalg.eigvals(J)).max()), 1e-12), 100.0)
        theta = theta - lr * F.reshape(X, K)
        F = expected_update(loss, problem, theta, kl_in_reward=kl).reshape(-1)
    for _ in range(_MAX_NEWTON):
        if np.linalg.norm(F) <= _TOL or not np.isfinite(F).all():
            break
        Jr = _reduced_jacobian(loss, problem, theta, kl, Q)
        try:
            step = -Q @ np.linalg.solve(Jr, Q.T @ F)
        except np.linalg.LinAlgError:
            break
        step *= min(1.0, 0.5 / max(float(np.abs(step).max()), 1e-300))  # trust region: half a nat per step
        cand = theta + step.reshape(X, K)
        Fc = expected_update(loss, problem, cand, kl_in_reward=kl).reshape(-1)
        if not (np.isfinite(Fc).all() and np.linalg.norm(Fc) < np.linalg.norm(F)):
            break
        theta, F = cand, Fc
    Jr = _reduced_jacobian(loss, problem, theta, kl, Q)
    sv = np.linalg.svd(Jr, compute_uv=False)
    eig = np.linalg.eigvals(Jr)
    vertex = float(torch.log_softmax(torch.as_tensor(theta), -1).exp()[live].min()) < _VERTEX
    return theta, float(np.linalg.norm(F)), (0.0 if vertex else float(sv.min())), bool((eig.real > 0).all())


def _log_probs(theta):
    t = torch.as_tensor(theta, dtype=_f64)
    return torch.log_softmax(t, dim=-1)


def run_online_regime(loss, expect, problem: Problem, seed: int, *, kl_in_reward: bool = False) -> RegimeResult:
    t0 = time.perf_counter()
    theta0 = np.log(problem.ref_policy) + 0.1 * np.random.default_rng(seed).standard_normal(problem.ref_policy.shape)
    if problem.tree is not None:
        theta0 = np.asarray(problem.tree.ref_log_probs) + 0.1 * np.random.default_rng(seed).standard_normal(
            problem.ref_policy.shape)
    try:
        theta, fnorm, smin, stable = _solve(loss, problem, theta0, kl_in_reward)
    except LossCheckError as exc:
        return RegimeResult(problem.regime, "error", "-", None, None, None, None, None, f"{type(exc).__name__}: {exc}",
                            problem, time.perf_counter() - t0)
    lp = _log_probs(theta)
    found = fnorm <= 1e-9 and smin > 0
    bound = 4.0 * fnorm / smin + 1e-12 if found else None
    if found and bound > 0.1:
        found, bound = False, None
    probs = lp.exp().numpy()
    nearest = {}
    for name, build in NAMED_OPTIMA["online_policy"].items():
        c = build(problem)
        if c.optimum is not None:
            nearest[name] = float(c.optimum.check(log_probs=lp, tol=0.0).max_violation)
    where = (f"fixed point of the expected update: ||F|| {fnorm:.1e}, sigma_min(J) {smin:.2e}, "
             f"{'attracting' if stable else 'NOT attracting'} under the update") if found else \
        f"no fixed point found by Newton (||F|| {fnorm:.1e}): the update drives the logits to infinity"
    claim = claim_for("online_policy", expect, problem)
    if claim is None or claim.optimum is None:
        status = ("landed" if found else "diverges") if claim is None else "no claim"
        note = "" if claim is None else claim.note + "; "
        return RegimeResult(problem.regime, status, "-", None, bound, found, fnorm, None, note + where, problem,
                            time.perf_counter() - t0, probs, nearest)
    if not found:
        dist = nearest.get(expect if isinstance(expect, str) else "", None)
        return RegimeResult(problem.regime, "missed", claim.note, dist, None, False, fnorm, None, where, problem,
                            time.perf_counter() - t0, probs, nearest)
    chk = claim.optimum.check(log_probs=lp, tol=bound)
    return RegimeResult(problem.regime, "reached" if chk.ok else "missed", claim.note, chk.max_violation, bound, True,
                        fnorm, None, f"{chk.detail}; {where}", problem, time.perf_counter() - t0, probs, nearest)
