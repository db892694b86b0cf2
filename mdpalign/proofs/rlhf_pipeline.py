r"""The classic RLHF pipeline — Bradley–Terry reward model, then KL-regularised RL on it — against DPO
on the same preference data.

Pipeline: fit the tabular reward model (:func:`mdpalign.proofs.reward_model.bradley_terry_reward_optimum`,
scores ``s``), then maximise ``E_pi s - beta KL(pi || pi_ref)``: ``pi = pi_ref exp(s/beta)/Z``
(:func:`mdpalign.proofs.kl_rl.kl_rl_optimum`). A tabular reward model leaves ``s`` free by one constant
per comparison component and entirely free on uncompared responses, and the RL step *does* see those
constants, because it compares every response with every other. So the pipeline's output is a
function of the reward model's gauge, which this module makes explicit:

* ``gauge`` (``"mean"``: zero mean per component, what gradient descent from zero scores keeps;
  ``"degree"``: the ``c -> 0+`` limit of TRL's centring penalty), uncompared responses at score 0
  (a tabular score no pair ever touches keeps its zero initialisation), then
* ``offsets`` ``(X, K)``: any table constant on each comparison component (uncompared responses are
  components of their own), added to the scores.

Proposition (Ford's condition holds, no margin, ``c = 0``). Let ``s^`` be the BT MLE and ``D`` the set of
DPO optima (:func:`mdpalign.proofs.dpo.dpo_optimum`): ``beta (g_i - g_j) = s^_i - s^_j`` for ``i, j`` in one
component, ``g = log pi - log pi_ref``.

1. For every offset table ``o`` the pipeline's policy lies in ``D``: ``beta g = s^ + o - beta log Z``, and ``o``
   and ``log Z`` cancel in within-component differences.
2. Every member of ``D`` is the pipeline's policy for some ``o``: given ``pi in D``, ``o = beta g - s^`` is constant
   on each component (the differences agree) and arbitrary elsewhere; then ``pi_ref e^{(s^+o)/beta}/Z = pi``.
3. Hence ``o -> pi`` maps the offset tables onto ``D``, injectively up to one constant per context: the
   pipeline is *one member of DPO's optimal set, chosen by the reward model's gauge*. When one
   component covers all responses (e.g. all pairs compared) ``D`` is a single policy and the two agree;
   under all-pairs Bradley–Terry labels it is the KL-RL optimum for the true reward.
4. Plain gradient descent reaches the same member on both sides: DPO's loss depends on the logits
   only through within-pair differences ``theta_i - theta_j`` (the log-partition cancels), so its
   gradient sums to zero over each component and vanishes on uncompared arms — GD from
   ``theta = log pi_ref`` keeps ``sum_{i in C} beta g_i = 0`` per component and ``g = 0`` elsewhere; the reward
   model's GD from ``s = 0`` keeps ``sum_{i in C} s_i = 0``. Both land on the pipeline with ``gauge="mean"``
   and zero offsets. (Adam, L-BFGS or weight decay break these conservation laws.)

With the centring penalty (``c > 0``) or a margin the reward model is no longer DPO's implicit one
(unique scores, shrunk or stretched differences) and the pipeline generally leaves ``D``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    NoClosedFormError,
    ProofInputError,
    UniqueOptimum,
    check_policy_table,
    proof_array,
)
from mdpalign.proofs.kl_rl import kl_rl_optimum
from mdpalign.proofs.reward_model import bradley_terry_reward_optimum

__all__ = ["rlhf_pipeline_optimum", "pipeline_offsets_of"]


def _check_offsets(offsets: Any, comps: list, shape: tuple[int, int]) -> np.ndarray:
    o = proof_array(offsets, "offsets")
    if o.ndim == 1:
        o = o[None]
    if o.shape != shape or not np.isfinite(o).all():
        raise ProofInputError(f"offsets must be a finite (X, K) = {shape} table, got shape {o.shape}")
    for x, cs in enumerate(comps):
        for c in cs:
            spread = np.ptp(o[x, c])
            if spread > 1e-12 * (1 + np.abs(o[x, c]).max()):
                raise ProofInputError(f"offsets must be constant on each comparison component; context {x}, "
                                      f"component {c} spans {spread:.3g}")
    return o


def rlhf_pipeline_optimum(W: Any, ref_policy: Any, beta: float, *, offsets: Any = None, gauge: str = "mean",
                          margin: Any = None, center_coefficient: float = 0.0) -> UniqueOptimum:
    """``pi = pi_ref exp((s + o)/beta)/Z``: KL-RL on the reward model's scores ``s`` in ``gauge`` plus ``offsets``
    ``o``.

    ``W`` ``(X, K, K)`` win weights; ``ref_policy`` ``(X, K)``; ``offsets`` ``(X, K)`` constant on each
    comparison component (default 0); ``gauge`` / ``margin`` / ``center_coefficient`` as in
    :func:`~mdpalign.proofs.reward_model.bradley_terry_reward_optimum`. ``extras``: ``reward_model``,
    ``rewards`` (the scores the RL step used). Raises :class:`NoClosedFormError` when the reward model
    has no finite minimiser (its scores diverge).
    """
    ref = check_policy_table(ref_policy)
    beta = check_positive(beta, "beta", error=ProofInputError)
    rm = bradley_terry_reward_optimum(W, margin, center_coefficient, gauge=gauge)
    if rm.shape != ref.shape:
        raise ProofInputError(f"W is for shape {rm.shape}, ref_policy has shape {ref.shape}")
    if not rm.attained:
        raise NoClosedFormError(f"the reward model has no finite minimiser ({rm.diverging})")
    rewards = np.where(np.isnan(rm.scores), 0.0, rm.scores)
    if offsets is not None:
        rewards = rewards + _check_offsets(offsets, rm.components, ref.shape)
    o = kl_rl_optimum(rewards, ref, beta)
    o.extras.update(reward_model=rm, rewards=rewards)
    return dataclasses.replace(
        o,
        objective="rlhf_pipeline",
        derivation="reward-model MLE in an explicit gauge, then the KL-RL optimum on it (one member of DPO's set).",
    )


def pipeline_offsets_of(W: Any, ref_policy: Any, beta: float, probs: Any, *, gauge: str = "mean") -> np.ndarray:
    """The offsets ``o = beta g - s^`` that make the pipeline return ``probs`` (a member of DPO's optimal set):
    per component the mean of ``beta g - s^`` (exact when ``probs`` is in the set), ``beta g`` on uncompared arms,
    normalised so the first arm of each context has offset 0 (the per-context constant is free)."""
    ref = check_policy_table(ref_policy)
    beta = check_positive(beta, "beta", error=ProofInputError)
    rm = bradley_terry_reward_optimum(W, gauge=gauge)
    p = check_policy_table(probs, "probs")
    g = beta * (np.log(p) - np.log(ref))
    o = np.where(np.isnan(rm.scores), g, g - np.where(np.isnan(rm.scores), 0.0, rm.scores))
    for x, cs in enumerate(rm.components):
        for c in cs:
            o[x, c] = o[x, c].mean()
    return o - o[:, :1]
