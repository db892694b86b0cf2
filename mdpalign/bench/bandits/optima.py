"""Each objective's exact optimum (:mod:`mdpalign.proofs`) and the KL-regularised RL optimum it is measured
against: the regret J(π*) − J(π) and whether π* is one of the objective's optima."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdpalign import proofs
from mdpalign.bench.bandits.data import SeedData
from mdpalign.bench.config import BanditsConfig
from mdpalign.proofs import kl_rl_gap, kl_rl_optimum

__all__ = ["own_optimum", "expert_rows", "rlhf_regret", "OptimumSummary", "optimum_summary", "IN_SET_TOL"]

def own_optimum(objective: str, data: SeedData, config: BanditsConfig):
    """The objective's exact optimum for one seed (``None`` where no closed form is known)."""
    try:
        if objective == "sft":
            return proofs.sft_optimum(data.D)
        if objective == "dpo":
            return proofs.dpo_optimum(data.ref, data.W, config.beta)
        if objective == "ipo":
            return proofs.ipo_optimum(data.ref, data.W, config.beta)
        if objective == "orpo":
            return proofs.orpo_optimum(data.W, config.orpo_lambda)
        if objective == "crlft":
            return proofs.crlft_optimum(data.D3, config.crlft_weights, conditioned=True)
        if objective == "kl_rl":
            return proofs.kl_rl_optimum(data.rewards, data.ref, config.beta)
    except proofs.NoClosedFormError:
        return None
    raise ValueError(f"unknown objective {objective!r}")  # pragma: no cover - config validates


def expert_rows(probs: np.ndarray, objective: str) -> np.ndarray:
    """The policy the RLHF comparison is about: C-RLFT's expert class, else the policy itself."""
    return probs[0::2] if objective == "crlft" else probs


def rlhf_regret(data: SeedData, probs: np.ndarray | None, beta: float, log_probs: np.ndarray | None = None) -> float:
    """J(pi*) - J(pi) = beta * sum_x mu(x) KL(pi(.|x) || pi*(.|x))."""
    with np.errstate(invalid="ignore"):  # 0 * log 0 terms are dropped by kl_rl_gap itself
        gap = kl_rl_gap(data.rewards, data.ref, beta, probs, log_probs=log_probs)
    return float(data.mu @ gap)


#: ``Optimum.check`` violation below which the RLHF optimum counts as one of an objective's optima.
IN_SET_TOL = 1e-8


@dataclass(frozen=True)
class OptimumSummary:
    """One bandit's exact optimum of an objective, seen from the RLHF optimum: its kind (None: no closed form),
    whether it is attained, the RLHF regret of its representative, whether the RLHF optimum is one of its optima."""

    kind: str
    attained: bool | None
    regret_of_optimum: float
    rlhf_in_set: bool | None


def optimum_summary(opt, data: SeedData, objective: str, beta: float) -> OptimumSummary:
    """What kind of optimum; the regret of its representative; whether the RLHF optimum is among its optima.

    For C-RLFT the RLHF optimum is placed in the expert class and the sub-optimal class is left at
    the optimum's own value, so only the expert class is tested.
    """
    if opt is None:
        return OptimumSummary("no closed form", None, float("nan"), None)
    fill = np.repeat(data.ref, 2, axis=0) if objective == "crlft" else data.ref
    rep = opt.representative(fill=fill)
    pi_rlhf = kl_rl_optimum(data.rewards, data.ref, beta).policy
    candidate = rep.copy()
    if objective == "crlft":
        candidate[0::2] = pi_rlhf
    else:
        candidate = pi_rlhf
    return OptimumSummary(opt.kind, bool(opt.attained), max(0.0, rlhf_regret(data, expert_rows(rep, objective), beta)),
                          bool(opt.check(probs=candidate).max_violation <= IN_SET_TOL))
