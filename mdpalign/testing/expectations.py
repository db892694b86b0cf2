"""``expect=``: what a loss should reach in each regime, as an answer key from :mod:`mdpalign.proofs`.

A name resolves per regime to a *claim* — an :class:`~mdpalign.proofs.Optimum` (or, for reward models, a
:class:`~mdpalign.proofs.RewardModelOptimum`) — or to no claim with the reason, when the named optimum says nothing
about that regime (KL-RL under deterministic labels: those labels are not Bradley–Terry and DPO has no finite
minimiser). ``expect`` may also be an ``Optimum`` (used as is, where its shape matches) or a callable
``f(problem) -> Optimum | (X, K) target policy | None``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from mdpalign.proofs import (
    Optimum,
    RewardModelOptimum,
    bradley_terry_reward_optimum,
    crlft_optimum,
    dpo_optimum,
    ipo_optimum,
    k3_loss_optimum,
    kl_rl_optimum,
    sft_optimum,
    token_tree_local_kl_optimum,
    token_tree_optimum,
    tree_sft_optimum,
)
from mdpalign.proofs.base import optimum_from_target
from mdpalign.testing.errors import UnknownOptimumError
from mdpalign.testing.regimes import Problem

__all__ = ["NAMED_OPTIMA", "Claim", "claim_for", "describe_expect"]


class Claim(NamedTuple):
    """``optimum`` None: no claim in this regime, ``note`` says why; else ``note`` says what is claimed."""

    optimum: Any
    note: str


def _kl_rl_preference(p: Problem) -> Claim:
    if p.regime == "deterministic":
        return Claim(None, "KL-RL is DPO's optimum only under Bradley-Terry labels; deterministic labels have no "
                           "finite minimiser")
    if p.regime == "partial_coverage":
        return Claim(dpo_optimum(p.ref_policy, p.W, p.beta),
                     "KL-RL's log-ratios on the compared pairs (uncompared mass and one offset per component free)")
    return Claim(kl_rl_optimum(p.rewards, p.ref_policy, p.beta), "pi_ref exp(r/beta)/Z")


def _bt_mle(p: Problem) -> Claim:
    return Claim(dpo_optimum(p.ref_policy, p.W, p.beta), "beta (log pi - log pi_ref) = Bradley-Terry MLE scores")


def _ipo(p: Problem) -> Claim:
    return Claim(ipo_optimum(p.ref_policy, p.W, p.beta), "graph least squares g = L^+ b (tau = beta)")


def _rm_bt(p: Problem) -> Claim:
    return Claim(bradley_terry_reward_optimum(p.W), "scores = Bradley-Terry MLE (one offset per component free)")


def _sft(p: Problem, mean: bool = False) -> Claim:
    if p.tree is not None:
        return Claim(tree_sft_optimum(p.tree, p.demos, length_normalised=mean),
                     "pi(y) ∝ D(y)/|y|" if mean else "pi(y) = D(y)")
    return Claim(sft_optimum(p.demos), "pi(y|x) = D(y|x)")


def _crlft(p: Problem) -> Claim:
    cond = p.regime == "conditioned"
    return Claim(crlft_optimum(p.demos, p.class_weights, conditioned=cond),
                 "pi(y|x,c) = D_c(y|x)" if cond else "pi ∝ sum_c w_c P(c|x) D_c(y|x)")


def _kl_rl_online(p: Problem) -> Claim:
    if p.tree is not None:
        return Claim(token_tree_optimum(p.tree, p.beta), "soft-optimal token policy (Gibbs over sequences)")
    return Claim(kl_rl_optimum(p.rewards, p.ref_policy, p.beta), "Gibbs pi_ref exp(r/beta)/Z")


def _k3_loss(p: Problem) -> Claim:
    if p.tree is not None:
        return Claim(None, "k3_loss is the bandit (sequence-level) fixed point; per-token k3 on a tree: tree_local_k3")
    return Claim(k3_loss_optimum(p.rewards, p.ref_policy, p.beta), "k3 as a loss: beta pi_ref/(lambda - r)")


def _tree_local(kl: str):
    def claim(p: Problem) -> Claim:
        if p.tree is None:
            return Claim(None, "a token-tree fixed point; no claim on a bandit")
        return Claim(token_tree_local_kl_optimum(p.tree, p.beta, kl),
                     "myopic per-token KL: pi(a|s) ∝ pi_ref exp(Q_r/beta)" if kl == "reverse"
                     else "myopic per-token k3: beta pi_ref/(lambda_s - Q_r)")
    return claim


#: kind -> name -> claim builder; one source of truth for the names ``expect=`` and ``--expect`` accept
NAMED_OPTIMA: dict[str, dict[str, Callable[[Problem], Claim]]] = {
    "preference": {"kl_rl": _kl_rl_preference, "bt_mle": _bt_mle, "dpo": _bt_mle, "ipo": _ipo},
    "reward_model": {"bt_mle": _rm_bt},
    "demonstration": {"sft": _sft, "sft_mean": lambda p: _sft(p, mean=True)},
    "class_weighted": {"crlft": _crlft},
    "online_policy": {"kl_rl": _kl_rl_online, "k3_loss": _k3_loss, "tree_local_kl": _tree_local("reverse"),
                      "tree_local_k3": _tree_local("k3_loss")},
}


def describe_expect(expect: Any) -> str:
    if expect is None:
        return "none (report where the loss lands)"
    if isinstance(expect, str):
        return expect
    if isinstance(expect, (Optimum, RewardModelOptimum)):
        return f"{type(expect).__name__}({getattr(expect, 'objective', 'reward_model')})"
    return getattr(expect, "__name__", type(expect).__name__)


def check_expect(kind: str, expect: Any) -> None:
    """Reject an unusable ``expect`` before any fitting."""
    if expect is None or callable(expect) or isinstance(expect, (Optimum, RewardModelOptimum)):
        return
    if isinstance(expect, str):
        if expect not in NAMED_OPTIMA[kind]:
            raise UnknownOptimumError(f"unknown optimum {expect!r} for {kind} losses; choose from "
                                      f"{', '.join(NAMED_OPTIMA[kind])}, or pass an Optimum or a callable")
        return
    raise UnknownOptimumError(f"expect must be a name, an Optimum or a callable, not {type(expect).__name__}")


def claim_for(kind: str, expect: Any, problem: Problem) -> Claim | None:
    """The claim ``expect`` makes about ``problem`` (``None`` when there is no ``expect`` at all)."""
    if expect is None:
        return None
    if isinstance(expect, str):
        return NAMED_OPTIMA[kind][expect](problem)
    if isinstance(expect, (Optimum, RewardModelOptimum)):
        if tuple(expect.shape) != tuple(problem.shape):
            return Claim(None, f"the given optimum has shape {tuple(expect.shape)}, this regime {problem.shape}")
        return Claim(expect, "the given optimum")
    out = expect(problem)
    if out is None:
        return Claim(None, f"{describe_expect(expect)} makes no claim here")
    if isinstance(out, Claim):
        return out
    if isinstance(out, (Optimum, RewardModelOptimum)):
        return Claim(out, describe_expect(expect))
    target = np.asarray(out, dtype=np.float64)
    if target.ndim == 1:
        target = target[None]
    if target.shape != problem.shape:
        raise UnknownOptimumError(f"{describe_expect(expect)} returned a target of shape {target.shape}; this regime "
                                  f"has shape {problem.shape}")
    return Claim(optimum_from_target(describe_expect(expect), target / target.sum(1, keepdims=True)),
                 describe_expect(expect))
