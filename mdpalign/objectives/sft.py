"""Supervised fine-tuning (maximum likelihood on demonstrations)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from mdpalign.objectives.common import check_token_inputs, masked_token_values, token_counts

__all__ = ["sft_loss", "sft_pieces", "SFTPieces"]


class SFTPieces(NamedTuple):
    """Per-example pieces of the SFT loss, enough for any reduction.

    nll_sum: ``−Σ_t m_t log p_t`` (B,).  token_count: ``Σ_t m_t`` (B,), in the logps' dtype.
    TRL's ``SFTTrainer`` loss is the batch token mean ``nll_sum.sum() / token_count.sum()``
    (:func:`mdpalign.objectives.common.batch_token_mean`); the IFT reference's SFT baseline is the mean of per-sequence
    means ``(nll_sum / token_count).mean()``.
    """

    nll_sum: torch.Tensor
    token_count: torch.Tensor


def sft_pieces(token_logps: torch.Tensor, mask: torch.Tensor, check_logps: bool = True) -> SFTPieces:
    """Per-example negative log-likelihood sum and counted-token count (see :class:`SFTPieces`); ``check_logps`` as
    in :func:`sft_loss`."""
    m = check_token_inputs(token_logps, mask, check_logps=check_logps)
    return SFTPieces(-masked_token_values(token_logps, m).sum(dim=-1), token_counts(m, token_logps.dtype))


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor, normalize: bool = False,
             check_logps: bool = True) -> torch.Tensor:
    """SFT loss per example -> ``(B,)``.

    ``L_i = −Σ_t m_it log pi(y_it | x_i, y_i,<t)`` (sum over counted/completion tokens: the sequence NLL);
    ``normalize=True``: ``L_i / Σ_t m_it`` ("length-normalised SFT", the per-sequence mean NLL).

    Tabular optimum (THEORY.md): the sum form reaches the empirical distribution D(y|x); the normalised form is
    optimal at pi ∝ D(y)/|y| (biased toward short responses). Gradient w.r.t. tabular logits of one token:
    ``pi − e_y``. Reference code: TRL's ``SFTTrainer`` reduces by a batch token mean, not a per-example sum; use
    :func:`sft_pieces` and :func:`~mdpalign.objectives.common.batch_token_mean` for it.

    Errors: :class:`~mdpalign.objectives.common.InvalidLogProbError` when a counted log-prob is nan, ±inf or above 0
    by more than :func:`~mdpalign.objectives.common.logp_rounding_tolerance` (the NLL would be nan, inf or
    negative); ``check_logps=False`` skips that check (cost: :func:`~mdpalign.objectives.common.check_token_inputs`).
    """
    nll_sum, count = sft_pieces(token_logps, mask, check_logps=check_logps)
    return nll_sum / count if normalize else nll_sum
