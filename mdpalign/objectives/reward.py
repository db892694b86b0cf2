r"""Bradley–Terry reward modelling: the pairwise loss on scalar rewards, with margin and centring penalty.

A reward model scores a (prompt, response) pair with one scalar; trained on preference pairs by maximum likelihood
under the Bradley–Terry model ``P(y_c ≻ y_r) = σ(r_c − r_r)`` (Bradley & Terry 1952; Ouyang et al., InstructGPT,
arXiv 2203.02155, Eq. 1). Tabular optimum (THEORY.md): the BT MLE — expected wins equal observed wins, finite iff
each comparison component's win graph is strongly connected, unique up to one constant per component; a margin
shifts the scores (two arms: ``n_w·σ(m − Δ) = n_l·σ(Δ + m)``); the centring penalty pins the constants and shrinks
differences on non-bipartite comparison graphs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mdpalign.objectives.common import (
    ObjectiveArgumentError,
    ShapeError,
    check_sequence_inputs,
)
from mdpalign.objectives.token_batches import check_nonnegative

__all__ = ["BradleyTerryOutput", "bradley_terry_loss", "center_rewards_penalty"]


class BradleyTerryOutput(NamedTuple):
    """losses (B,) per pair; margins ``r_c − r_r`` (detached, *without* the margin ``m``: TRL's logged ``margin``);
    accuracies 1.0 where ``r_c > r_r`` **strictly** (a tie counts as wrong, as TRL's ``accuracy`` and RewardBench)."""

    losses: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> BradleyTerryOutput:
    """Per pair ``L = −log σ(r_c − r_r − m)`` (``m = 0`` without a margin) -> :class:`BradleyTerryOutput`.

    Inputs ``(B,)`` floating; ``margin`` a number or a ``(B,)`` tensor (Llama 2, arXiv 2307.09288, Eq. 2: a larger
    margin for pairs rated far apart; TRL takes it from the dataset's ``margin`` column). Reduction: none — TRL's
    ``RewardTrainer.compute_loss`` and OpenRLHF's ``PairWiseLoss`` take the batch mean; the centring penalty
    (:func:`center_rewards_penalty`) is added separately. Gradient w.r.t. ``r_c``: ``−σ(m − (r_c − r_r))``.
    Computed as ``−logsigmoid`` (stable for large margins either way).
    """
    check_sequence_inputs(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    diff = chosen_rewards - rejected_rewards
    if margin is None:
        z = diff
    else:
        if isinstance(margin, torch.Tensor):
            if margin.shape != chosen_rewards.shape:
                raise ShapeError(f"margin must be a number or have the shape of chosen_rewards "
                                 f"{tuple(chosen_rewards.shape)}, got {tuple(margin.shape)}")
            m = margin.to(diff.dtype)
        else:
            m = torch.as_tensor(float(margin), dtype=diff.dtype, device=diff.device)
        if not bool(torch.isfinite(m).all()):
            raise ObjectiveArgumentError("margin must be finite")
        z = diff - m
    d = diff.detach()
    return BradleyTerryOutput(-F.logsigmoid(z), d, (d > 0).to(d.dtype))


def center_rewards_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                           coefficient: float) -> torch.Tensor:
    """TRL's reward-centring penalty per pair: ``c·(r_c + r_r)²`` -> ``(B,)``.

    TRL's ``RewardTrainer.compute_loss`` adds ``center_rewards_coefficient · mean((r_c + r_r)²)`` to the mean BT loss
    (the batch mean of this function); Eisenstein et al., arXiv 2312.09244, Eq. 2, recommended ``c = 0.01``. It is
    not a per-response ``r²`` penalty: it pushes each *pair's sum* to 0, a signless-Laplacian ridge on the comparison
    graph (THEORY.md). Reduction: none. Errors: ``coefficient`` not finite or ``< 0``.
    """
    check_sequence_inputs(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    c = check_nonnegative(coefficient, "coefficient")
    return c * (chosen_rewards + rejected_rewards) ** 2
