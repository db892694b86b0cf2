r"""Train a tabular policy with the *library's* objective code and certify how close it got.

This is the bridge between the closed forms (pure numpy, the rest of :mod:`mdpalign.proofs`) and
the torch objectives in :mod:`mdpalign.objectives`: each ``*_loss_closure`` below builds the exact
population loss of a tabular problem out of the public loss functions (``dpo_loss``, ``sft_loss``, ...) as a
torch closure (the numpy *values* of some of these losses are ``mdpalign.proofs.*_population_loss``) — so a test that
fits it and compares with a closed form tests the loss code itself.

Tolerance certificate (:func:`certified_logit_error`). Near a minimiser ``theta*`` of a loss whose
Hessian ``H`` is positive definite (modulus ``mu``) on the complement of its structural null space
(per-context logit shifts, free components — directions the loss does not depend on at all, so the
gradient has no component along them), ``||P (theta - theta*)||_2 <= ||grad L(theta)||_2 / mu`` for
the projection ``P`` onto that complement (strong convexity on the segment; we estimate ``mu`` at
``theta`` and take a factor 2 of slack for its variation over the tiny segment). Every quantity
:meth:`Optimum.check` measures is a difference ``log pi_i - log pi_j`` or ``log pi_i - log pi*_i``; the
log-softmax Jacobian rows have l1 norm <= 2, so each moves by at most ``2 ||P Delta theta||_inf``.
Hence ``max_violation <= 2 * 2 * ||grad|| / mu`` (+1e-12 for float64 rounding of the log-softmax) —
the tolerance is *derived* from the optimiser's final gradient, not tuned.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from mdpalign.fit import FitResult, NotConvergedError, fit
from mdpalign.objectives import (
    crlft_loss,
    dpo_loss,
    ift_loss,
    ift_two_pass,
    kl_rl_objective,
    orpo_loss,
    sft_loss,
    successor_from_table,
)
from mdpalign.policies import TabularPolicy

__all__ = [
    "tabular_policy",
    "fit_tabular",
    "certified_logit_error",
    "fit_and_check",
    "sft_loss_closure",
    "dpo_loss_closure",
    "orpo_loss_closure",
    "crlft_loss_closure",
    "kl_rl_loss_closure",
    "sequence_dpo_loss_closure",
    "tree_sft_loss_closure",
    "ift_loss_closure",
]

_f64 = torch.float64


def tabular_policy(n_states: int, n_actions: int, *, init_scale: float = 0.1, seed: int = 0) -> TabularPolicy:
    """A float64 :class:`TabularPolicy` with small ``N(0, init_scale^2)`` logits (L-BFGS hygiene)."""
    return TabularPolicy(n_states, n_actions, init_scale=init_scale, dtype=_f64, seed=seed)


def fit_tabular(policy: TabularPolicy, loss_fn: Callable[[], torch.Tensor], *, tol: float = 1e-10,
                max_iter: int = 2000, require_convergence: bool = True, **kw) -> FitResult:
    """Full-batch L-BFGS (strong Wolfe) to ``||grad||_2 <= tol``; raises ``NotConvergedError`` if it stalls."""
    return fit(policy, loss_fn, method="lbfgs", tol=tol, max_iter=max_iter, require_convergence=require_convergence,
               **kw)


def _hessian_and_gradient(loss_fn: Callable[[], torch.Tensor], policy: TabularPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Hessian and gradient of ``loss_fn`` as a function of the flattened logits table (numpy)."""
    flat = policy.logits.detach().clone().reshape(-1)

    def loss_of(v):
        saved = policy.logits
        try:
            policy._parameters["logits"] = v.reshape(saved.shape)
            return loss_fn().reshape(())
        finally:
            policy._parameters["logits"] = saved

    H = torch.autograd.functional.hessian(loss_of, flat)
    v = flat.clone().requires_grad_(True)
    g = torch.autograd.grad(loss_of(v), v)[0]
    return H.detach().numpy(), g.detach().numpy()


def certified_logit_error(loss_fn: Callable[[], torch.Tensor], policy: TabularPolicy, *, null_dim: int | None = None,
                          rel_null: float = 1e-9) -> tuple[float, float, int]:
    """``(bound, mu, n_null)``: the bound ``4 ||grad||_2 / mu`` on :meth:`Optimum.check`'s violation (module doc).

    ``mu`` is the smallest Hessian eigenvalue above ``rel_null * lambda_max``; ``n_null`` the number
    below. Pass ``null_dim`` (the structural null-space dimension) to assert the split is right — a
    genuinely tiny curvature must not be mistaken for an invariance.
    """
    H, g = _hessian_and_gradient(loss_fn, policy)
    ev = np.sort(np.linalg.eigvalsh(H))
    lmax = max(float(ev[-1]), 1e-300)
    if null_dim is None:
        live = ev > rel_null * lmax
        n_null = int((~live).sum())
        if not live.any():
            raise AssertionError("Hessian is zero: the loss does not depend on the logits")
        mu = float(ev[live].min())
    else:
        # The structural null directions are exact invariances: their eigenvalues are rounding noise, tiny next to
        # lambda_max -- or, when the whole curvature is tiny (a nearly deterministic optimum), next to the smallest
        # genuine eigenvalue. Counting them relative to lambda_max alone would mistake that noise for curvature.
        n_null = null_dim
        null, rest = ev[:null_dim], ev[null_dim:]
        if rest.size == 0 or rest[0] <= 0.0:
            raise AssertionError(f"Hessian has no positive curvature off the structural {null_dim}-dim null space: "
                                 f"{ev[:null_dim + 2]}")
        if null.size and float(np.abs(null).max()) > max(rel_null * lmax, 1e-6 * float(rest[0])):
            raise AssertionError(f"Hessian's {null_dim} smallest eigenvalues are not a structural null space: "
                                 f"{ev[:null_dim + 2]}")
        mu = float(rest[0])
    # + 1e-12: float64 rounding of log-softmax differences of O(10)-sized logits (a few ulp of 10)
    return 4.0 * float(np.linalg.norm(g)) / mu + 1e-12, mu, n_null


def fit_and_check(opt, policy: TabularPolicy, loss_fn: Callable[[], torch.Tensor], *, tol: float = 1e-8,
                  max_iter: int = 2000):
    """Fit to ``||grad|| <= tol`` (asserted), then ``opt.check`` at the *certified* tolerance.

    Returns ``(fit_result, check_result, bound)``. Only for attained optima (strong convexity off the
    structural null space, whose dimension ``opt.null_dimension()`` is asserted).
    """
    try:
        res = fit_tabular(policy, loss_fn, tol=tol, max_iter=max_iter)
    except NotConvergedError as exc:
        # On a flat loss (DPO with P(a > b) near 1/2 and a large beta) L-BFGS's line search stalls with
        # ||grad|| just above tol: the loss decrease ||grad||^2 / mu is below float64 resolution. Newton steps
        # need no line search; ||grad|| <= tol is still what is asserted.
        res = exc.result
        for _ in range(_NEWTON_STEPS):
            _newton_step(loss_fn, policy, opt.null_dimension())
            _, g = _hessian_and_gradient(loss_fn, policy)
            res = res._replace(grad_norm=float(np.linalg.norm(g)), loss=float(loss_fn().detach()),
                               message=res.message + "; then Newton steps")
            if res.grad_norm <= tol:
                res = res._replace(converged=True)
                break
        else:
            raise
    bound, _, _ = certified_logit_error(loss_fn, policy, null_dim=opt.null_dimension())
    # The certificate holds only while the remaining step is small enough for the curvature to stay within the
    # factor 2 of slack (module doc). Near a nearly deterministic optimum mu is tiny and ||grad|| <= tol still
    # leaves an O(1) step, and L-BFGS cannot go further (the loss decrease is below float64 resolution): take
    # Newton steps on the live eigenspace, which need no line search, until the bound is small enough.
    for _ in range(_NEWTON_STEPS):
        if bound <= _MAX_CERTIFIED_STEP:
            break
        _newton_step(loss_fn, policy, opt.null_dimension())
        bound, _, _ = certified_logit_error(loss_fn, policy, null_dim=opt.null_dimension())
    if bound > _MAX_CERTIFIED_STEP:
        raise AssertionError(f"cannot certify: bound {bound:.2e} > {_MAX_CERTIFIED_STEP} after {_NEWTON_STEPS} "
                             "Newton steps (the curvature at the optimum is too small for float64)")
    return res, opt.check(log_probs=policy.log_probs_table().detach(), tol=bound), bound


# largest certified logit error for which the 'factor 2 for curvature variation' holds: along a step of
# sup-norm d the log-softmax curvature changes by at most a factor exp(2 d) (its Hessian is generalised
# self-concordant), and exp(2 * 0.1 / 2) < 2 for the per-coordinate step d <= bound / 2 this allows.
_MAX_CERTIFIED_STEP = 0.1
_NEWTON_STEPS = 20


def _newton_step(loss_fn: Callable[[], torch.Tensor], policy: TabularPolicy, null_dim: int) -> None:
    """One Newton step ``theta -= H^+ g`` with ``H^+`` the pseudo-inverse off the ``null_dim`` smallest eigenvalues."""
    H, g = _hessian_and_gradient(loss_fn, policy)
    theta = policy.logits
    ev, U = np.linalg.eigh(H)
    live = slice(null_dim, None)
    step = U[:, live] @ ((U[:, live].T @ g) / ev[live])
    with torch.no_grad():
        theta.sub_(torch.as_tensor(step, dtype=theta.dtype).reshape(theta.shape))


# --------------------------------------------------------------------------- bandit population losses


def _rows(W: np.ndarray):
    x, i, j = np.nonzero(W > 0)
    t = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return t(x), t(i), t(j), torch.as_tensor(W[x, i, j], dtype=_f64)


def sft_loss_closure(policy: TabularPolicy, demos: np.ndarray, normalize: bool = False) -> Callable[[], torch.Tensor]:
    """``sum_{x,y} D[x,y] * sft_loss`` over one-token rows (``D`` an ``(X, K)`` weight table)."""
    x, y = np.nonzero(np.asarray(demos) > 0)
    xs, ys = torch.as_tensor(x)[:, None], torch.as_tensor(y)[:, None]
    w = torch.as_tensor(np.asarray(demos)[x, y], dtype=_f64)
    mask = torch.ones_like(xs, dtype=torch.bool)
    return lambda: (w * sft_loss(policy.token_logps(xs, ys), mask, normalize=normalize)).sum()


def dpo_loss_closure(policy: TabularPolicy, ref_policy: np.ndarray, W: np.ndarray, beta: float,
                        loss_type: str = "sigmoid", **kw) -> Callable[[], torch.Tensor]:
    """``sum W[x,i,j] * dpo_loss(i over j)`` with the library's ``dpo_loss`` (``loss_type`` sigmoid/ipo/...)."""
    x, i, j, w = _rows(W)
    log_ref = torch.as_tensor(np.log(ref_policy), dtype=_f64)
    rc, rr = log_ref[x, i], log_ref[x, j]

    def loss():
        lp = policy.log_probs(x)
        pc = lp.gather(1, i[:, None]).squeeze(1)
        pr = lp.gather(1, j[:, None]).squeeze(1)
        return (w * dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, **kw).losses).sum()

    return loss


def orpo_loss_closure(policy: TabularPolicy, W: np.ndarray, lam: float) -> Callable[[], torch.Tensor]:
    """``sum W[x,c,r] * orpo_loss(c, r)`` with one-token responses (NLL on the chosen completion)."""
    x, i, j, w = _rows(W)
    mask = torch.ones((len(x), 1), dtype=torch.bool)

    def loss():
        pc = policy.token_logps(x[:, None], i[:, None])
        pr = policy.token_logps(x[:, None], j[:, None])
        return (w * orpo_loss(pc, mask, pr, mask, lam=lam).losses).sum()

    return loss


def crlft_loss_closure(policy: TabularPolicy, D: np.ndarray, class_weights, *, conditioned: bool,
                          reduction: str = "token") -> Callable[[], torch.Tensor]:
    """``sum_{x,c,y} D[x,c,y] * crlft_loss`` with per-row weights ``w_c`` (state ``x*C + c`` when conditioned)."""
    X, C, K = D.shape
    x, c, y = np.nonzero(D > 0)
    s = x * C + c if conditioned else x
    ss, ys = torch.as_tensor(s)[:, None], torch.as_tensor(y)[:, None]
    mass = torch.as_tensor(D[x, c, y], dtype=_f64)
    wc = torch.as_tensor(np.asarray(class_weights, dtype=np.float64)[c], dtype=_f64)
    mask = torch.ones_like(ss, dtype=torch.bool)
    return lambda: (mass * crlft_loss(policy.token_logps(ss, ys), mask, wc, reduction=reduction).losses).sum()


def kl_rl_loss_closure(policy: TabularPolicy, ref_policy: np.ndarray, rewards: np.ndarray, beta: float,
                          context_probs=None) -> Callable[[], torch.Tensor]:
    """``-J(pi)`` from the library's exact ``kl_rl_objective`` (to be minimised)."""
    lr = torch.as_tensor(np.log(ref_policy), dtype=_f64)
    r = torch.tensor(np.array(rewards), dtype=_f64)
    mu = None if context_probs is None else torch.tensor(np.array(context_probs), dtype=_f64)
    return lambda: -kl_rl_objective(policy.log_probs_table(), lr, r, beta, context_probs=mu)


# --------------------------------------------------------------------------- token-tree population losses


def _paths(tree):
    p = tree.leaf_token_paths()
    return tuple(torch.as_tensor(np.array(a)) for a in (p.states, p.actions, p.mask))


def _seq_logps(policy, states, actions, mask):
    return torch.where(mask, policy.token_logps(states, actions), torch.zeros((), dtype=_f64)).sum(-1)


def sequence_dpo_loss_closure(policy: TabularPolicy, tree: Any, W: np.ndarray,
                              beta: float) -> Callable[[], torch.Tensor]:
    """Sequence-level DPO over leaves: ``sum W[0,i,j] dpo_loss(log pi(y_i), log pi(y_j), ref...)``, where
    ``log pi(y)`` is the *sum* of per-token log-probs along the leaf path (token-factored policy)."""
    states, actions, mask = _paths(tree)
    ref_leaf = torch.as_tensor(tree.leaf_log_probs(tree.ref_log_probs), dtype=_f64)
    _, i, j, w = _rows(W)

    def loss():
        seq = _seq_logps(policy, states, actions, mask)
        return (w * dpo_loss(seq[i], seq[j], ref_leaf[i], ref_leaf[j], beta=beta).losses).sum()

    return loss


def tree_sft_loss_closure(policy: TabularPolicy, tree: Any, leaf_weights: np.ndarray,
                             normalize: bool = False) -> Callable[[], torch.Tensor]:
    """``sum_y D(y) sft_loss(y)`` over leaf paths (``normalize``: per-sequence mean NLL)."""
    states, actions, mask = _paths(tree)
    keep = torch.as_tensor(np.flatnonzero(np.asarray(leaf_weights) > 0))
    states, actions, mask = states[keep], actions[keep], mask[keep]
    w = torch.as_tensor(np.asarray(leaf_weights, dtype=np.float64)[keep.numpy()], dtype=_f64)
    return lambda: (w * sft_loss(policy.token_logps(states, actions), mask, normalize=normalize)).sum()


def ift_loss_closure(policy: TabularPolicy, tree: Any, leaf_weights: np.ndarray, lam: float, decay: float,
                        detach_weights: bool = False) -> Callable[[], torch.Tensor]:
    """``sum_y D(y) ift_loss(y)`` with the library's two-pass driver on the tree (successor = child prefix)."""
    states, actions, mask = _paths(tree)
    keep = torch.as_tensor(np.flatnonzero(np.asarray(leaf_weights) > 0))
    states, actions, mask = states[keep], actions[keep], mask[keep]
    w = torch.as_tensor(np.asarray(leaf_weights, dtype=np.float64)[keep.numpy()], dtype=_f64)
    table = torch.as_tensor(np.where(np.asarray(tree.children) >= 0, tree.children, 0))
    succ = successor_from_table(table)

    def loss():
        tp = ift_two_pass(policy, states, actions, mask, lam, predicted_inputs=succ)
        return (w * ift_loss(tp.token_logps, mask, decay=decay, detach_weights=detach_weights).losses).sum()

    return loss
