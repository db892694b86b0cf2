r"""``check_*_loss``: does a user's loss function reach the optimum its paper claims? Ten lines, no internals.

For every regime (:mod:`mdpalign.testing.regimes`) the check builds the exact population loss of a small tabular
problem *from the user's function* (:mod:`mdpalign.testing.closures`), fits a float64 tabular softmax policy (one
logit per context and arm) by full-batch L-BFGS to ``||grad|| <= 1e-8``, and certifies how far the fitted policy
can be from the true minimiser: ``4 ||grad|| / mu`` off the loss's flat directions
(:func:`mdpalign.harness.offline.certified_logit_error`; Newton steps where that bound is not yet small, as in
:func:`mdpalign.harness.offline.fit_and_check`). The claim is met when the characterisation's largest violation
(:meth:`mdpalign.proofs.Optimum.check`: nats for log-probabilities and pinned log-ratios, probability for vanishing
arms) is at most that certified tolerance — a derived number, not a tuned one.

Without ``expect`` the report says where the loss lands: the fitted policy, its certificate and whether a finite
stationary point exists at all, plus its distance to every named optimum of the kind.

Call signatures (per-example losses, the caller — here, the check — reduces):

* preference: ``loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps) -> (B,)``,
  TRL's ``dpo_loss`` signature (sequence log-probs, summed over completion tokens; ``beta=`` passed if accepted);
* demonstration: ``loss(token_logps (B, T), mask (B, T)) -> (B,)``;
* class-weighted: ``loss(token_logps, mask, class_weights (B,)) -> (B,)``;
* reward model: ``loss(chosen_rewards (B,), rejected_rewards (B,)) -> (B,)``;
* online policy: ``loss(token_logps, old_logps, ref_logps, advantages (B,), mask) -> (B,)``
  (:mod:`mdpalign.testing.online`).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from mdpalign.fit import NonFiniteLossError, NotConvergedError
from mdpalign.harness.offline import certified_logit_error, fit_and_check, fit_tabular, tabular_policy
from mdpalign.proofs import NoFiniteOptimum, RewardModelOptimum
from mdpalign.testing.adapters import loss_name, probe
from mdpalign.testing.closures import population_loss
from mdpalign.testing.errors import LossCheckError, UnknownOptimumError
from mdpalign.testing.expectations import NAMED_OPTIMA, check_expect, claim_for, describe_expect
from mdpalign.testing.regimes import Problem, make_problem, resolve_regimes
from mdpalign.testing.report import RegimeResult, Report

__all__ = [
    "check_loss",
    "check_preference_loss",
    "check_demonstration_loss",
    "check_class_weighted_loss",
    "check_reward_model_loss",
    "check_online_policy_loss",
    "assert_reaches",
]

GRAD_TOL = 1e-8  # float64 loss of O(1): a smaller gradient is below what the line search can resolve
MAX_ITER = 2000
LIMIT_ITER = 300  # regimes without a finite minimiser: enough to see the logits diverge, not more
LANDING_ITER = 500  # L-BFGS reaches a stationary point of these 2-6 logits in < 100 iterations when one exists


class _RewardClaim:
    """A :class:`RewardModelOptimum` seen through the ``Optimum`` interface that ``fit_and_check`` uses: the
    'policy' is the score table (the raw logits), so ``check`` reads the scores, not the log-probabilities."""

    def __init__(self, opt: RewardModelOptimum, policy):
        self.opt, self.policy = opt, policy

    def null_dimension(self) -> int:
        X, K = self.opt.shape
        total = 0
        for x in range(X):
            rows = self.opt.pinned[self.opt.pinned[:, 0] == x]
            A = [np.eye(K)[a] for a in np.flatnonzero(self.opt.absolute[x])]
            for _, i, j, _v in rows:
                e = np.zeros(K)
                e[int(i)], e[int(j)] = 1.0, -1.0
                A.append(e)
            total += K - (int(np.linalg.matrix_rank(np.array(A))) if A else 0)
        return total

    def check(self, log_probs=None, tol: float = 0.0):
        return self.opt.check(self.policy.logits.detach(), tol=tol)


def _attained(opt) -> bool:
    return bool(opt.attained) and not isinstance(opt, NoFiniteOptimum)


def _as_claim(opt, policy):
    return _RewardClaim(opt, policy) if isinstance(opt, RewardModelOptimum) else opt


def _violation(opt, policy) -> float:
    c = _as_claim(opt, policy)
    return float(c.check(log_probs=policy.log_probs_table().detach(), tol=0.0).max_violation)


def _nearest(kind: str, problem: Problem, policy) -> dict[str, float]:
    out = {}
    for name, build in NAMED_OPTIMA[kind].items():
        if name == "dpo":  # an alias of bt_mle
            continue
        try:
            c = build(problem)
        except LossCheckError:
            continue
        if c.optimum is not None:
            out[name] = _violation(c.optimum, policy)
    return out


def _landing(kind, problem, policy, closure, t0, claim_text="-", status_if_none=None, note=""):
    """Fit without a claim: a certified stationary point, or the evidence that there is none."""
    res = fit_tabular(policy, closure, tol=GRAD_TOL, max_iter=LANDING_ITER, require_convergence=False)
    attained, bound, detail = False, None, ""
    if res.converged:
        try:
            bound, mu, n_null = certified_logit_error(closure, policy)
            attained = bound <= 0.1
            what = "stationary point" if attained else "gradient vanished, curvature too (the logits diverge)"
            detail = (f"{what}: ||grad|| {res.grad_norm:.1e}, curvature {mu:.2e} off {n_null} flat "
                      f"directions, logits certified to {bound:.1e}")
        except AssertionError as exc:
            detail = f"stationary point without curvature: {exc}"
    else:
        lg = policy.logits.detach()
        spread = float((lg.max(1).values - lg.min(1).values).max())
        detail = (f"no stationary point within {res.iterations} iterations: ||grad|| {res.grad_norm:.1e}, "
                  f"logit spread {spread:.1f} (the infimum is not attained by finite logits)")
    if not attained:
        bound = None
    if status_if_none is None:
        status = "landed" if attained else "diverges"
    else:
        status = status_if_none
    return RegimeResult(problem.regime, status, claim_text, None, bound, attained, res.grad_norm, res.loss,
                        (note + "; " if note else "") + detail, problem, time.perf_counter() - t0,
                        policy.probs().detach().numpy().copy(), _nearest(kind, problem, policy))


def _run_regime(kind: str, loss: Callable, expect: Any, problem: Problem, seed: int) -> RegimeResult:
    t0 = time.perf_counter()
    X, K = problem.shape
    policy = tabular_policy(X, K, seed=seed)
    closure = population_loss(loss, problem, policy)
    try:
        claim = claim_for(kind, expect, problem)
        if claim is None:
            return _landing(kind, problem, policy, closure, t0)
        if claim.optimum is None:
            return _landing(kind, problem, policy, closure, t0, "-", "no claim", claim.note)
        opt = claim.optimum
        if not _attained(opt):
            res = fit_tabular(policy, closure, tol=GRAD_TOL, max_iter=LIMIT_ITER, require_convergence=False)
            dist = _violation(opt, policy)
            return RegimeResult(problem.regime, "limit", f"{claim.note} (a limit: no finite minimiser)", dist, None,
                                False, res.grad_norm, res.loss,
                                f"no finite minimiser claimed ({opt.diverging}); after {res.iterations} iterations "
                                f"||grad|| {res.grad_norm:.1e} and the largest violation of the limit is {dist:.2e}",
                                problem, time.perf_counter() - t0, policy.probs().detach().numpy().copy(),
                                _nearest(kind, problem, policy))
        shim = _as_claim(opt, policy)
        try:
            res, chk, bound = fit_and_check(shim, policy, closure, tol=GRAD_TOL, max_iter=MAX_ITER)
        except NotConvergedError as exc:
            r = exc.result
            return RegimeResult(problem.regime, "missed", claim.note, _violation(opt, policy), None, False,
                                r.grad_norm, r.loss, f"claimed a finite minimiser, but the loss has no stationary "
                                f"point there: {exc}", problem, time.perf_counter() - t0,
                                policy.probs().detach().numpy().copy(), _nearest(kind, problem, policy))
        except AssertionError as exc:
            return RegimeResult(problem.regime, "missed", claim.note, _violation(opt, policy), None, None, None,
                                None, f"no certified stationary point matching the claim's flat directions (the loss's "
                                f"curvature or null space differs, or the optimum is too far out for float64): {exc}",
                                problem, time.perf_counter() - t0,
                                policy.probs().detach().numpy().copy(), _nearest(kind, problem, policy))
        status = "reached" if chk.ok else "missed"
        return RegimeResult(problem.regime, status, claim.note, chk.max_violation, bound, True, res.grad_norm,
                            res.loss, chk.detail, problem, time.perf_counter() - t0,
                            policy.probs().detach().numpy().copy(), _nearest(kind, problem, policy))
    except (NonFiniteLossError, LossCheckError) as exc:
        if isinstance(exc, UnknownOptimumError):
            raise
        return RegimeResult(problem.regime, "error", "-", None, None, None, None, None,
                            f"{type(exc).__name__}: {exc}", problem, time.perf_counter() - t0)


def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise LossCheckError(f"beta must be a number, got {beta!r}") from None
    if not (np.isfinite(b) and b > 0):
        raise LossCheckError(f"beta must be finite and > 0, got {beta!r}")
    return b


def check_loss(kind: str, loss: Callable, *, expect: Any = None, beta: float = 0.1, regimes: Any = None,
               seed: int = 0, **options) -> Report:
    """Check ``loss`` of ``kind`` (one of :data:`mdpalign.testing.adapters.KINDS`) in every requested regime."""
    from mdpalign.testing.adapters import KINDS

    if kind not in KINDS:
        raise LossCheckError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    beta = _check_beta(beta)
    names = resolve_regimes(kind, regimes)
    check_expect(kind, expect)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise LossCheckError(f"seed must be a non-negative integer, got {seed!r}")
    threads = torch.get_num_threads()
    # tensors of a few entries: intra-op threads only add synchronisation (a 6-entry logsigmoid measured 16 ms with 2
    # threads on a loaded 2-core machine, 1.6 us with one); restored afterwards
    torch.set_num_threads(1)
    try:
        return _check_loss(kind, loss, expect, beta, names, int(seed), options)
    finally:
        torch.set_num_threads(threads)


def _check_loss(kind, loss, expect, beta, names, seed, options) -> Report:
    t0 = time.perf_counter()
    probe(loss, kind, beta if kind != "reward_model" else None, seed=int(seed))
    if kind == "online_policy":
        from mdpalign.testing.online import run_online_regime

        results = [run_online_regime(loss, expect, make_problem(kind, n, int(seed), beta), int(seed), **options)
                   for n in names]
    else:
        if options:
            raise LossCheckError(f"unknown options for {kind} losses: {', '.join(options)}")
        results = [_run_regime(kind, loss, expect, make_problem(kind, n, int(seed), beta), int(seed)) for n in names]
    return Report(kind, loss_name(loss), describe_expect(expect), beta if kind != "reward_model" else None, results,
                  time.perf_counter() - t0)


def check_preference_loss(loss: Callable, *, expect: Any = None, beta: float = 0.1, regimes: Any = None,
                          seed: int = 0) -> Report:
    """Check a pairwise preference loss ``loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
    ref_rejected_logps) -> (B,)`` (TRL's ``dpo_loss`` signature). ``expect``: ``"kl_rl"`` (DPO's claim under
    Bradley–Terry labels), ``"bt_mle"``, ``"ipo"`` (tau = beta), an ``Optimum`` or a callable; regimes
    ``bt_all_pairs``, ``partial_coverage``, ``deterministic``, ``two_arm`` (default all)."""
    return check_loss("preference", loss, expect=expect, beta=beta, regimes=regimes, seed=seed)


def check_demonstration_loss(loss: Callable, *, expect: Any = None, regimes: Any = None, seed: int = 0) -> Report:
    """Check a demonstration loss ``loss(token_logps (B, T), mask (B, T)) -> (B,)``. ``expect``: ``"sft"`` (sum of
    token NLLs: ``pi(y) = D(y)``) or ``"sft_mean"`` (per-sequence mean: ``pi(y) ∝ D(y)/|y|``); regimes
    ``full_support``, ``unseen_arms``, ``token_tree``."""
    return check_loss("demonstration", loss, expect=expect, beta=1.0, regimes=regimes, seed=seed)


def check_class_weighted_loss(loss: Callable, *, expect: Any = None, beta: float = 1.0, regimes: Any = None,
                              seed: int = 0) -> Report:
    """Check a class-weighted loss ``loss(token_logps, mask, class_weights (B,)) -> (B,)`` (C-RLFT). Class weights
    are ``exp((r_c - 1)/beta)`` for OpenChat's class rewards 1 and 0.1. ``expect``: ``"crlft"``; regimes
    ``conditioned``, ``unconditioned``."""
    return check_loss("class_weighted", loss, expect=expect, beta=beta, regimes=regimes, seed=seed)


def check_reward_model_loss(loss: Callable, *, expect: Any = None, regimes: Any = None, seed: int = 0) -> Report:
    """Check a reward-model loss ``loss(chosen_rewards (B,), rejected_rewards (B,)) -> (B,)`` on a free score
    table. ``expect``: ``"bt_mle"``; regimes as for preference losses."""
    return check_loss("reward_model", loss, expect=expect, beta=1.0, regimes=regimes, seed=seed)


def check_online_policy_loss(loss: Callable, *, expect: Any = None, beta: float = 0.1, regimes: Any = None,
                             seed: int = 0, kl_in_reward: bool = False) -> Report:
    """Check an on-policy loss ``loss(token_logps, old_logps, ref_logps, advantages (B,), mask) -> (B,)`` at its
    exact expected update (:mod:`mdpalign.testing.online`). ``expect``: ``"kl_rl"`` (Gibbs; on the token tree the
    soft-optimal token policy), ``"k3_loss"`` (bandits), ``"tree_local_kl"`` / ``"tree_local_k3"`` (the myopic fixed
    points of a per-token KL on the tree); regimes ``bandit``, ``two_arm``, ``token_tree``;
    ``kl_in_reward``: the advantages carry the k1 penalty ``- beta (log pi - log pi_ref)`` (detached)."""
    return check_loss("online_policy", loss, expect=expect, beta=beta, regimes=regimes, seed=seed,
                      kl_in_reward=kl_in_reward)


def assert_reaches(loss: Callable, problem: Problem, optimum: Any, **options) -> RegimeResult:
    """Fit ``loss`` on ``problem`` (a :class:`~mdpalign.testing.regimes.Problem`: ``make_problem`` or a plugin
    fixture) and assert it reaches ``optimum`` (a name, an ``Optimum`` or a callable, as ``expect=``).

    Raises ``AssertionError`` naming the regime, the distance and the certified tolerance (and the problem) when the
    regime misses or the loss errors; returns the :class:`RegimeResult` otherwise — also when the optimum makes no
    claim about this regime (``result.status == "no claim"``) or claims only a limit (``"limit"``).
    """
    if not isinstance(problem, Problem):
        raise LossCheckError(f"problem must be an mdpalign.testing Problem (make_problem or a fixture), got "
                             f"{type(problem).__name__}")
    check_expect(problem.kind, optimum)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see check_loss
    try:
        probe(loss, problem.kind, problem.beta if problem.kind != "reward_model" else None)
        if problem.kind == "online_policy":
            from mdpalign.testing.online import run_online_regime

            r = run_online_regime(loss, optimum, problem, problem.seed, **options)
        else:
            r = _run_regime(problem.kind, loss, optimum, problem, problem.seed)
    finally:
        torch.set_num_threads(threads)
    if r.failed:
        dist = "-" if r.distance is None else f"{r.distance:.3e}"
        tol = "-" if r.tolerance is None else f"{r.tolerance:.3e}"
        raise AssertionError(f"{loss_name(loss)} did not reach {describe_expect(optimum)} in regime {r.regime!r}: "
                             f"{r.status}, distance {dist}, tolerance {tol}; {r.detail}\n{problem.describe()}")
    return r
