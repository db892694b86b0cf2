"""ORPO: odds-ratio preference optimisation (monolithic SFT + odds-ratio penalty)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mdpalign.checks import check_positive
from mdpalign.objectives.common import (
    ObjectiveArgumentError,
    ShapeError,
    check_sequence_logps,
    check_token_inputs,
    log1mexp,
    masked_token_values,
    token_counts,
)

__all__ = ["orpo_loss", "ORPOOutput", "orpo_log_odds"]


class ORPOOutput(NamedTuple):
    """Per-example ORPO pieces, all ``(B,)``.

    losses = nll + lam·odds_ratio_loss; nll = nll_token_sum / nll_token_count (per-sequence mean NLL over the NLL
    scope); log_odds = log odds(y_w) − log odds(y_l) on length-averaged log-probs; odds_ratio_loss = −logσ(log_odds);
    chosen/rejected_avg_logps = mean log-prob per counted completion token; chosen/rejected_rewards = lam·avg logps,
    detached (what TRL logs as rewards, its ``beta`` being our ``lam``).

    TRL's batch loss is ``nll_token_sum.sum()/nll_token_count.sum() + lam·odds_ratio_loss.mean()`` (a batch token
    mean for the NLL, not ``losses.mean()``).
    """

    losses: torch.Tensor
    nll: torch.Tensor
    log_odds: torch.Tensor
    odds_ratio_loss: torch.Tensor
    chosen_avg_logps: torch.Tensor
    rejected_avg_logps: torch.Tensor
    nll_token_sum: torch.Tensor
    nll_token_count: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def orpo_log_odds(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor,
                  check_logps: bool = True) -> torch.Tensor:
    """``log odds(a_c) − log odds(a_r)`` with ``log odds(a) = a − log(1 − e^a)``, computed stably via
    :func:`log1mexp`.

    An average log-prob of exactly 0 (probability 1: infinite odds) — or above 0 within
    :func:`~mdpalign.objectives.common.logp_rounding_tolerance` — is clamped to the largest negative float below 0
    (``−tiny``) so the value stays finite; there the gradient through the clamp is 0. ``check_logps`` (default):
    :class:`~mdpalign.objectives.common.InvalidLogProbError` for nan, ±inf or a value above that tolerance (which
    the clamp would otherwise silently turn into probability 1).
    """
    if check_logps:
        check_sequence_logps(chosen_avg_logps=chosen_avg_logps, rejected_avg_logps=rejected_avg_logps)
    tiny = torch.finfo(chosen_avg_logps.dtype).tiny
    a_c = chosen_avg_logps.clamp(max=-tiny)
    a_r = rejected_avg_logps.clamp(max=-tiny)
    return (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))


def orpo_loss(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    lam: float = 0.1,
    nll_token_logps: torch.Tensor | None = None,
    nll_mask: torch.Tensor | None = None,
    check_logps: bool = True,
) -> ORPOOutput:
    """ORPO per example (arXiv 2403.07691, Eqs. 4–7).

    ``a_c = Σ_t m_t log p_t / Σ_t m_t`` over the chosen completion tokens (likewise ``a_r``);
    ``log_odds = (a_c − a_r) − (log(1 − e^{a_c}) − log(1 − e^{a_r}))``;
    ``L = nll − lam·logσ(log_odds)``.

    NLL scope (explicit, because paper/TRL and the minimal tabular reading differ): by default ``nll`` is the mean
    NLL over the *chosen completion tokens* (``chosen_mask``). The paper's L_SFT and TRL's ``ORPOTrainer``
    (``chosen_nll_loss`` over the full prompt+response, padding excluded) use prompt *and* response: pass those
    per-token log-probs/mask as ``nll_token_logps``/``nll_mask``. Reduction: none; TRL's NLL is a batch token mean
    (see :class:`ORPOOutput`), the IFT reference code's ORPO uses the mean of per-sequence means.
    TRL's ``beta`` is ``lam`` here; TRL computes ``odds_ratio_loss`` in float32 — we keep the input dtype.

    Tabular facts (THEORY.md): one chosen and one rejected arm has no stationary point (pi → δ_c); disjoint supports
    give the infimum H(D_w) approached as pi → D_w.

    Errors: :class:`~mdpalign.objectives.common.InvalidLogProbError` when a counted log-prob of any of the three
    inputs is nan, ±inf or above 0 by more than the rounding tolerance (so are the length-averaged ``a_c``, ``a_r``:
    an average of values ``<= tol`` is ``<= tol``); ``check_logps=False`` skips it. ``lam`` not finite ``>= 0``.
    """
    mc = check_token_inputs(chosen_token_logps, chosen_mask, "chosen_token_logps", check_logps=check_logps)
    mr = check_token_inputs(rejected_token_logps, rejected_mask, "rejected_token_logps", check_logps=check_logps)
    if chosen_token_logps.shape[0] != rejected_token_logps.shape[0]:
        raise ShapeError(
            f"chosen and rejected batch sizes differ: {chosen_token_logps.shape[0]} vs {rejected_token_logps.shape[0]}"
        )
    lam = check_positive(lam, "lam", allow_zero=True, error=ObjectiveArgumentError)
    dtype = chosen_token_logps.dtype
    a_c = masked_token_values(chosen_token_logps, mc).sum(-1) / token_counts(mc, dtype)
    a_r = masked_token_values(rejected_token_logps, mr).sum(-1) / token_counts(mr, rejected_token_logps.dtype)

    if (nll_token_logps is None) != (nll_mask is None):
        raise ObjectiveArgumentError("pass both nll_token_logps and nll_mask, or neither")
    if nll_token_logps is None:
        nll_sum = -masked_token_values(chosen_token_logps, mc).sum(-1)
        nll_count = token_counts(mc, dtype)
    else:
        mn = check_token_inputs(nll_token_logps, nll_mask, "nll_token_logps", check_logps=check_logps)
        if nll_token_logps.shape[0] != chosen_token_logps.shape[0]:
            raise ShapeError(
                f"nll_token_logps batch size {nll_token_logps.shape[0]} differs from chosen "
                f"{chosen_token_logps.shape[0]}"
            )
        nll_sum = -masked_token_values(nll_token_logps, mn).sum(-1)
        nll_count = token_counts(mn, nll_token_logps.dtype)
    nll = nll_sum / nll_count

    log_odds = orpo_log_odds(a_c, a_r, check_logps=False)  # the token check covers the averages
    or_loss = -F.logsigmoid(log_odds)
    return ORPOOutput(
        losses=nll + lam * or_loss,
        nll=nll,
        log_odds=log_odds,
        odds_ratio_loss=or_loss,
        chosen_avg_logps=a_c,
        rejected_avg_logps=a_r,
        nll_token_sum=nll_sum,
        nll_token_count=nll_count,
        chosen_rewards=lam * a_c.detach(),
        rejected_rewards=lam * a_r.detach(),
    )
