r"""The clipped policy-gradient loss (PPO / GRPO / RLOO / REINFORCE) and the token aggregations of TRL.

Per token (Schulman et al., PPO, arXiv 1707.06347, Eq. 7, as a loss to minimise):

    l_t = −min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε_high)·A),   ρ_t = exp(log pi(y_t|s_t) − log pi_old(y_t|s_t))

with ``pi_old`` the policy that sampled the batch (a constant of the loss). **REINFORCE** is the on-policy case
``old = current.detach()``: ``ρ = 1`` in value, ``∇ρ = ∇log pi``, so ``∇l_t = −A·∇log pi(y_t)`` and the clip is
inactive.
A sequence-level ratio (TRL's ``RLOOTrainer``: ``exp(log pi(y) − log pi_old(y))`` on summed log-probs) is this
function applied to ``(B, 1)`` summed log-probs with a ``(B, 1)`` mask.

Then one scalar per batch by :func:`aggregate_token_loss` — where TRL's ``loss_type`` values differ only in the
normaliser (and hence in which sequences and tokens weigh more; THEORY.md: ``1/|y|`` per sequence favours short
positive and long negative answers, trl#2995 / verl#3741).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mdpalign.objectives.common import ObjectiveArgumentError, ShapeError
from mdpalign.objectives.token_batches import check_batched_tokens, check_nonnegative, check_option, zero_where_masked

__all__ = ["TOKEN_LOSS_TYPES", "PPOClipOutput", "ppo_clip_loss", "aggregate_token_loss"]

#: Token-loss aggregations: TRL's ``GRPOConfig.loss_type`` names (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``) plus
#: ``seq_sum`` (verl's ``seq-mean-token-sum``; TRL ``RLOOTrainer``'s sequence-level loss): the exact policy
#: gradient of the sequence objective. See :func:`aggregate_token_loss`.
TOKEN_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "seq_sum")


class PPOClipOutput(NamedTuple):
    """Per token, all ``(..., B, T)``, 0 / False at non-counted positions: losses; ratios ``ρ`` (detached);
    is_low_clipped ``ρ < 1−ε and A < 0`` and is_high_clipped ``ρ > 1+ε_high and A > 0`` — where the clipped branch
    is active and the token's gradient is 0 (TRL's ``clip_ratio/low_mean`` / ``high_mean`` are their masked means).
    """

    losses: torch.Tensor
    ratios: torch.Tensor
    is_low_clipped: torch.Tensor
    is_high_clipped: torch.Tensor

    @property
    def is_clipped(self) -> torch.Tensor:
        """TRL's ``is_region_clipped`` (``clip_ratio/region_mean``)."""
        return self.is_low_clipped | self.is_high_clipped


def ppo_clip_loss(token_logps: torch.Tensor, old_token_logps: torch.Tensor | None, advantages: torch.Tensor,
                  mask: torch.Tensor, epsilon: float = 0.2, epsilon_high: float | None = None) -> PPOClipOutput:
    """Clipped surrogate per token (module docstring) -> :class:`PPOClipOutput`.

    Shapes: ``token_logps``, ``old_token_logps``, ``mask`` ``(..., B, T)``; ``advantages`` per sequence
    ``(..., B)`` (broadcast over its tokens, TRL's GRPO) or per token ``(..., B, T)`` (GAE). ``old_token_logps`` and
    ``advantages`` are constants of the loss, used as given (compute them without gradient);
    ``old_token_logps=None`` is the on-policy ``token_logps.detach()`` (REINFORCE), and passing ``token_logps``
    itself is an error (``ρ ≡ 1`` with zero gradient). ``epsilon_high`` defaults to ``epsilon`` (DAPO's clip-higher uses
    0.28).
    Reduction: none — see :func:`aggregate_token_loss`.

    TRL 1.16 ``GRPOTrainer._compute_loss`` (``loss_type`` grpo/bnpo/dr_grpo/dapo, ``importance_sampling_level=
    "token"``, ``delta=None``) is exactly this. Departures elsewhere: verl's ``compute_policy_loss_vanilla`` clamps
    the log-ratio to ±20 and applies dual-clip (``clip_ratio_c = 3``: for ``A < 0`` the loss is capped at
    ``−3A``); OpenRLHF's ``PolicyLoss`` dual-clips only when ``dual_clip`` is set; TRL's ``delta`` (INTELLECT-2
    two-sided clip) caps ``ρ`` from above. None of these change the on-policy (``ρ = 1``) gradient.
    """
    if old_token_logps is token_logps:
        raise ObjectiveArgumentError("old_token_logps is token_logps itself: ρ ≡ 1 would carry no gradient; pass None "
                                     "for the "
                         "on-policy ratio (token_logps.detach()) or the sampling policy's log-probs")
    old = token_logps.detach() if old_token_logps is None else old_token_logps
    m = check_batched_tokens(mask, token_logps=token_logps, old_token_logps=old)
    eps_low = check_nonnegative(epsilon, "epsilon")
    eps_high = eps_low if epsilon_high is None else check_nonnegative(epsilon_high, "epsilon_high")
    if eps_low >= 1.0:
        raise ObjectiveArgumentError(f"epsilon must be < 1 (the lower clip bound 1 − ε must stay positive), got "
                                     f"{eps_low}")
    if not isinstance(advantages, torch.Tensor) or not advantages.is_floating_point():
        raise ShapeError(f"advantages must be a floating-point tensor, got {type(advantages).__name__}")
    if advantages.shape == token_logps.shape[:-1]:
        adv = advantages.unsqueeze(-1)
    elif advantages.shape == token_logps.shape:
        adv = zero_where_masked(advantages, m)
    else:
        raise ShapeError(f"advantages must have shape {tuple(token_logps.shape[:-1])} (per sequence) or "
                         f"{tuple(token_logps.shape)} (per token), got {tuple(advantages.shape)}")
    log_ratio = zero_where_masked(token_logps, m) - zero_where_masked(old, m)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    losses = zero_where_masked(-torch.min(ratio * adv, clipped * adv), m)
    r = ratio.detach()
    a = adv.detach()
    low = m & (r < 1.0 - eps_low) & (a < 0)
    high = m & (r > 1.0 + eps_high) & (a > 0)
    return PPOClipOutput(losses, zero_where_masked(r, m), low, high)


def aggregate_token_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo",
                         max_completion_length: int | None = None,
                         num_items_in_batch: torch.Tensor | float | None = None) -> torch.Tensor:
    """One loss per batch from per-token losses ``(..., B, T)`` -> ``(...)`` (a scalar for a ``(B, T)`` input).

    With ``l_it`` the per-token loss, ``m_it`` the mask, ``n_i = Σ_t m_it``, ``B`` sequences, ``L`` the max
    completion length:

    * ``grpo``: ``(1/B)·Σ_i (Σ_t m_it l_it) / max(n_i, 1)`` — per-sequence token mean, then batch mean (GRPO paper
      Eq. 3; each token weighs ``1/(B·n_i)``: length-biased, Dr. GRPO §3, trl#2995).
    * ``bnpo``: ``Σ_it m_it l_it / max(Σ_it m_it, 1)`` over the *local* (micro-)batch.
    * ``dr_grpo``: ``Σ_it m_it l_it / (B·L)`` (Dr. GRPO, arXiv 2503.20783); ``L = max_completion_length``, default
      the padded width ``T`` (verl's ``seq-mean-token-sum-norm`` uses ``T`` and does not divide by ``B``; TRL uses
      ``GRPOConfig.max_completion_length``).
    * ``dapo`` (TRL 1.16's default): ``Σ_it m_it l_it / N`` with ``N = num_items_in_batch`` (DAPO, arXiv
      2503.14476, token-level mean over the *whole* batch). Default ``N`` = the counted tokens of this input.
      **Gradient accumulation** (the trl#2617 class of bug): for the
      accumulated gradient to equal the full-batch one, every micro-batch must be divided by the same ``N`` = the
      counted tokens of *all* micro-batches of the optimizer step (all processes; divide ``N`` by the world size
      when the data-parallel all-reduce averages gradients), and the micro-batch losses are then *summed*, not
      averaged. A per-micro-batch token mean (``bnpo``) averaged over micro-batches weighs a token by
      ``1/n_micro`` instead — wrong whenever micro-batches hold different numbers of tokens. TRL 1.16 computes
      ``N`` this way: ``num_items_in_batch`` counts the generation batch, rescaled to one accumulation window by
      ``grad_accum / steps_per_generation`` (PR#6024, for trl#5619) and divided by ``num_processes``.
    * ``seq_sum``: ``(1/B)·Σ_i Σ_t m_it l_it`` — the sequence-level loss (verl ``seq-mean-token-sum``; TRL
      ``RLOOTrainer`` on summed log-probs). With ``l = −A·ρ`` its gradient is the exact REINFORCE estimate
      ``−(1/B)Σ_i A_i ∇log pi(y_i)``.

    TRL also divides ``grpo``/``bnpo``/``dr_grpo`` by the number of accumulation steps (the caller's job here).
    Rows with no counted token count as ``n_i = 1`` with loss 0 (TRL's ``clamp(min=1)``, which
    ``mask_truncated_completions`` relies on). Errors: unknown ``loss_type``; ``max_completion_length`` other
    than for ``dr_grpo`` or ``< T``; ``num_items_in_batch`` other than for ``dapo`` or ``<= 0``.
    """
    m = check_batched_tokens(mask, per_token_loss=per_token_loss)
    check_option(loss_type, TOKEN_LOSS_TYPES, "loss_type")
    if max_completion_length is not None and loss_type != "dr_grpo":
        raise ObjectiveArgumentError(f"max_completion_length is used only by loss_type='dr_grpo', got "
                                     f"loss_type={loss_type!r}")
    if num_items_in_batch is not None and loss_type != "dapo":
        raise ObjectiveArgumentError(f"num_items_in_batch is used only by loss_type='dapo', "
                                     f"got loss_type={loss_type!r}")
    l = zero_where_masked(per_token_loss, m)
    dtype = per_token_loss.dtype
    n_seq = per_token_loss.shape[-2]
    if loss_type == "grpo":
        counts = m.sum(dim=-1).to(dtype).clamp(min=1.0)
        return (l.sum(dim=-1) / counts).mean(dim=-1)
    if loss_type == "seq_sum":
        return l.sum(dim=-1).mean(dim=-1)
    total = l.sum(dim=(-2, -1))
    if loss_type == "bnpo":
        return total / m.sum(dim=(-2, -1)).to(dtype).clamp(min=1.0)
    if loss_type == "dr_grpo":
        width = per_token_loss.shape[-1]
        length = width if max_completion_length is None else int(max_completion_length)
        if length < width:
            raise ObjectiveArgumentError(f"max_completion_length ({length}) is shorter than the padded width T = "
                                         f"{width}")
        return total / (n_seq * length)
    if num_items_in_batch is None:
        return total / m.sum(dim=(-2, -1)).to(dtype).clamp(min=1.0)
    n = torch.as_tensor(num_items_in_batch, dtype=dtype, device=per_token_loss.device)
    if not bool((n > 0).all()):
        raise ObjectiveArgumentError(f"num_items_in_batch must be > 0, got {n.tolist()}")
    return total / n
