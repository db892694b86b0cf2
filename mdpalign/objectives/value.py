r"""PPO with a critic, as InstructGPT-style RLHF runs it: token rewards, GAE(γ, λ) advantages, the clipped value loss.

Token rewards (Ziegler et al., arXiv 1909.08593; Ouyang et al., InstructGPT, arXiv 2203.02155): every counted token
pays the KL penalty ``−β·k1_t`` (of the sampling policy, a constant) and the sequence reward ``r(x, y)`` lands on the
**last counted token** of ``y`` — the EOS when EOS is a counted token (:func:`place_sequence_rewards`). Placing it
one position later, on the first PAD after EOS, is trl#3750 (TRL's ``PPOTrainer``, now
``trl/experimental/ppo/ppo_trainer.py`` and not shipped in the trl 1.16 wheel, adds the score at
``sequence_lengths + 1``): the reward then sits outside the response and is paired with a value of a padding state.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mdpalign.objectives.common import ObjectiveArgumentError, ShapeError, as_bool_mask
from mdpalign.objectives.token_batches import (
    check_batched_tokens,
    check_float_tensor,
    check_nonnegative,
    zero_where_masked,
)

__all__ = ["GAEOutput", "ValueLossOutput", "place_sequence_rewards", "gae_advantages", "clipped_value_loss"]


class GAEOutput(NamedTuple):
    """advantages and returns ``(..., B, T)`` (0 at non-counted positions); returns = advantages +
    values (the critic's regression target, as TRL / verl / OpenRLHF)."""

    advantages: torch.Tensor
    returns: torch.Tensor


class ValueLossOutput(NamedTuple):
    """losses per token ``(..., B, T)`` (0 at non-counted positions); is_clipped where the clipped error is the
    larger one (TRL's ``vf_clipfrac`` is its masked mean)."""

    losses: torch.Tensor
    is_clipped: torch.Tensor


def place_sequence_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``(..., B, T)``: ``rewards (..., B)`` on the last counted token of each row, 0 elsewhere.

    "Last counted token" is the largest ``t`` with ``mask[..., t]`` true, so interior holes in the mask (tool
    outputs) are allowed. OpenRLHF's ``compute_reward`` places it the same way (``eos_indices`` from the flipped
    action mask). Errors: a row that counts no token (the reward would have nowhere to go).
    """
    check_float_tensor(rewards, "rewards")
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
        raise ShapeError(f"mask must be a (..., B, T) tensor, got {type(mask).__name__} "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else ''}")
    m = as_bool_mask(mask, "mask")
    if rewards.shape != m.shape[:-1]:
        raise ShapeError(f"rewards must have shape {tuple(m.shape[:-1])} (one per row of mask {tuple(m.shape)}), "
                         f"got {tuple(rewards.shape)}")
    if not bool(m.any(dim=-1).all()):
        raise ShapeError("place_sequence_rewards: a row of mask counts no token; its reward has no token to land on")
    T = m.shape[-1]
    positions = torch.arange(T, device=m.device).expand(m.shape)
    last = torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=-1, keepdim=True)
    return torch.where(positions == last, rewards.unsqueeze(-1),
                       torch.zeros((), dtype=rewards.dtype, device=rewards.device))


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> GAEOutput:
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438) over the counted tokens of each row.

    With the counted positions ``t_1 < … < t_n`` of a row, token rewards ``r_k`` and values ``V_k = values[t_k]``:
    ``δ_k = r_k + γ·V_{k+1} − V_k`` (``V_{n+1} = 0``: the response ends after its last counted token),
    ``Â_k = Σ_{j>=k} (γλ)^{j−k} δ_j``, ``returns_k = Â_k + V_k``. Non-counted positions are skipped, not treated as
    steps (verl's ``compute_gae_advantage_return`` does the same); TRL's ``PPOTrainer`` steps through every
    position and keeps one padding position alive (``padding_mask_p1``), which is where trl#3750 put the reward.

    Inputs ``(..., B, T)``, constants of the loss (not detached here). Rewards at non-counted positions are an **error**
    (they would be silently
    dropped: the trl#3750 class of bug); build them with :func:`place_sequence_rewards`. ``γ = 1, λ = 1`` gives
    ``Â_k = Σ_{j>=k} r_j − V_k`` (Monte-Carlo return minus a baseline: unbiased for any values); at ``V = V^pi``
    every ``λ`` is unbiased. TRL and verl then whiten the advantages over the batch (``masked_whiten``); this
    function does not (a batch-dependent affine map changes the expected update; whiten in the caller if wanted).
    """
    m = check_batched_tokens(mask, rewards=rewards, values=values)
    gamma = check_nonnegative(gamma, "gamma")
    lam = check_nonnegative(lam, "lam")
    if gamma > 1 or lam > 1:
        raise ObjectiveArgumentError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    r_all = rewards
    stray = (~m) & (r_all.detach() != 0)
    if bool(stray.any()):
        idx = tuple(int(i) for i in stray.nonzero()[0])
        raise ObjectiveArgumentError(f"rewards are non-zero at a non-counted position {idx} ({r_all[idx].item()}); a "
                                     f"reward "
                         "outside the response would be dropped (put it on the last counted token: "
                         "place_sequence_rewards)")
    r = zero_where_masked(r_all, m)
    v = zero_where_masked(values, m)
    zero = torch.zeros(r.shape[:-1], dtype=r.dtype, device=r.device)
    next_value, running = zero, zero
    reversed_adv = []
    for t in range(r.shape[-1] - 1, -1, -1):
        mt = m[..., t]
        delta = r[..., t] + gamma * next_value - v[..., t]
        gae = delta + gamma * lam * running
        reversed_adv.append(torch.where(mt, gae, zero))
        next_value = torch.where(mt, v[..., t], next_value)
        running = torch.where(mt, gae, running)
    adv = torch.stack(reversed_adv[::-1], dim=-1)
    return GAEOutput(adv, zero_where_masked(adv + v, m))


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float | None = 0.2) -> ValueLossOutput:
    """PPO's clipped value loss per token: ``½·max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)`` -> ``(..., B, T)``.

    ``values`` differentiable; ``old_values`` (the critic that produced the rollout) and ``returns`` are constants
    of the loss, used as given;
    ``clip_range=None``: the plain ``½·(V − R)²``. The ½ and the max of clipped and unclipped errors are OpenAI
    baselines' ``ppo2`` and TRL ``PPOTrainer`` (``vf_loss = 0.5·masked_mean(max(vf_losses1, vf_losses2))``), verl
    ``compute_value_loss``, OpenRLHF ``ValueLoss``. At ``V = V_old`` (first epoch) the clip is inactive and the
    gradient is ``V − R``. Reduction: none (TRL and OpenRLHF take the batch token mean, verl its ``agg_loss``);
    the value loss enters the total loss with a coefficient (TRL ``vf_coef = 0.1``).
    """
    m = check_batched_tokens(mask, values=values, old_values=old_values, returns=returns)
    v = zero_where_masked(values, m)
    ret = zero_where_masked(returns, m)
    unclipped = (v - ret) ** 2
    if clip_range is None:
        return ValueLossOutput(zero_where_masked(0.5 * unclipped, m), torch.zeros_like(m))
    c = check_nonnegative(clip_range, "clip_range")
    old = zero_where_masked(old_values, m)
    v_clipped = torch.clamp(v, old - c, old + c)
    clipped = (v_clipped - ret) ** 2
    return ValueLossOutput(zero_where_masked(0.5 * torch.maximum(unclipped, clipped), m),
                           m & (clipped.detach() > unclipped.detach()))
