"""Direct Preference Optimization and its pairwise relatives (cDPO, IPO, hinge/SLiC, robust DPO)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mdpalign.objectives.common import (
    ObjectiveArgumentError,
    check_beta,
    check_number,
    check_sequence_inputs,
    check_sequence_logps,
)

__all__ = ["dpo_loss", "DPOOutput", "DPO_LOSS_TYPES"]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


class DPOOutput(NamedTuple):
    """losses (B,) per pair; chosen/rejected_rewards (B,) implicit rewards ``β·(log pi − log pi_ref)``, detached
    (as TRL logs them, on *summed* log-probs even for ``ipo``)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        """``chosen_rewards − rejected_rewards`` (TRL's ``rewards/margins``)."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1.0 where the chosen reward beats the rejected one (TRL's ``rewards/accuracies``)."""
        return (self.chosen_rewards > self.rejected_rewards).to(self.chosen_rewards.dtype)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_token_counts: torch.Tensor | None = None,
    rejected_token_counts: torch.Tensor | None = None,
    check_logps: bool = True,
) -> DPOOutput:
    """Pairwise preference losses on sequence log-probabilities (all inputs ``(B,)``, summed over completion tokens).

    With the log-ratio margin ``h = (log pi(y_w) − log pi_ref(y_w)) − (log pi(y_l) − log pi_ref(y_l))`` and ``ε`` =
    ``label_smoothing``, per pair:

    * ``sigmoid`` (DPO, arXiv 2305.18290, Eq. 7): ``−logσ(βh)``; with ``0 <= ε < 1/2`` conservative DPO (cDPO,
      Mitchell 2023, as earlier TRL releases smoothed ``sigmoid``): ``−(1−ε)·logσ(βh) − ε·logσ(−βh)``. Its slope in
      ``βh`` at ``h = 0`` is ``ε − 1/2``: at ``ε = 1/2`` the loss is even in ``h`` and minimal at ``h = 0`` (it ignores
      the labels), above it the loss prefers the rejected response, hence the range (TRL documents 0–0.5 too).
      TRL 1.x no longer smooths ``sigmoid`` (its ``label_smoothing`` feeds only robust/EXO/AOT), so TRL parity means
      ``ε = 0`` here.
    * ``ipo`` (IPO, arXiv 2310.12036, Eq. 17; the paper's ``τ`` is ``beta``): ``(h − 1/(2β))²``, minimal at
      ``h = 1/(2β)``. **TRL length-normalises** IPO: each log-ratio is divided by its number of completion tokens
      before the difference. Pass ``chosen_token_counts`` / ``rejected_token_counts`` (B,) to get exactly that
      (``h = Δ_w/n_w − Δ_l/n_l``, counts clamped at 1 as TRL does); without them ``h`` uses the sums, as the paper.
    * ``hinge`` (SLiC, arXiv 2305.10425, as TRL): ``relu(1 − βh)``.
    * ``robust`` (rDPO, Chowdhury et al. 2024, as TRL): ``((1−ε)·(−logσ(βh)) + ε·logσ(−βh)) / (1 − 2ε)``,
      ``0 <= ε < 1/2``; equals ``sigmoid`` at ``ε = 0``. It is an unbiased estimate of the clean DPO loss when
      labels flip with probability ``ε``.

    Reduction: none (per pair); TRL takes the batch mean. Gradient w.r.t. tabular logits (THEORY.md):
    sigmoid ``−β·σ(−βh)·(e_w − e_l)``; ipo ``2(h − 1/(2β))·(e_w − e_l)``.

    Errors (:class:`~mdpalign.objectives.common.ObjectiveArgumentError`): ``beta`` not finite or ``<= 0``; unknown
    ``loss_type``; ``label_smoothing`` outside ``[0, 1/2)`` for sigmoid and robust, or non-zero for ipo/hinge (where
    it would be silently ignored); token counts given for a loss other than ``ipo``, or not finite and ``>= 0``.
    :class:`~mdpalign.objectives.common.InvalidLogProbError` when one of the four log-probs is nan or ±inf (named,
    with the first bad index); ``check_logps=False`` skips that check (one device sync). A positive *sequence*
    log-prob is not refused: the losses read only the log-ratios, and the sum's rounding tolerance would need the
    token count (the token-level objectives, e.g. :func:`~mdpalign.objectives.common.sequence_logps`, check it).
    """
    check_sequence_inputs(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    beta = check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ObjectiveArgumentError(f"unknown loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    eps = check_number(label_smoothing, "label_smoothing")
    if loss_type in ("sigmoid", "robust") and not 0.0 <= eps < 0.5:
        raise ObjectiveArgumentError(
            f"label_smoothing must lie in [0, 0.5) for loss_type={loss_type!r}, got {eps} (at 0.5 the loss ignores "
            "which response was preferred, above it prefers the rejected one)")
    if loss_type in ("ipo", "hinge") and eps != 0.0:
        raise ObjectiveArgumentError(
            f"label_smoothing has no meaning for loss_type={loss_type!r}; got {eps}, expected 0"
        )
    if (chosen_token_counts is None) != (rejected_token_counts is None):
        raise ObjectiveArgumentError("pass both chosen_token_counts and rejected_token_counts, or neither")
    if chosen_token_counts is not None and loss_type != "ipo":
        raise ObjectiveArgumentError(
            f"token counts length-normalise only loss_type='ipo' (as TRL); got loss_type={loss_type!r}")
    if check_logps:
        check_sequence_logps(upper=False, policy_chosen_logps=policy_chosen_logps,
                             policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                             ref_rejected_logps=ref_rejected_logps)

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps

    if loss_type == "ipo":
        if chosen_token_counts is not None:
            check_sequence_inputs(chosen_token_counts=chosen_token_counts.to(chosen_logratios.dtype),
                                  rejected_token_counts=rejected_token_counts.to(chosen_logratios.dtype),
                                  policy_chosen_logps=policy_chosen_logps)
            for name, counts in (("chosen_token_counts", chosen_token_counts),
                                 ("rejected_token_counts", rejected_token_counts)):
                c = counts.detach().double()
                if not bool(((c >= 0) & (c < math.inf)).all()):  # nan fails both
                    raise ObjectiveArgumentError(f"{name} must be finite numbers >= 0, got {c.tolist()[:10]}")
            h = (chosen_logratios / chosen_token_counts.to(chosen_logratios.dtype).clamp(min=1.0)
                 - rejected_logratios / rejected_token_counts.to(chosen_logratios.dtype).clamp(min=1.0))
        else:
            h = chosen_logratios - rejected_logratios
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        z = beta * (chosen_logratios - rejected_logratios)
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(z) if eps == 0.0 else -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        elif loss_type == "hinge":
            losses = torch.relu(1.0 - z)
        else:  # robust
            losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)

    return DPOOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())
