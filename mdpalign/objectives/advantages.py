r"""Critic-free advantages from sampled groups: RLOO, GRPO / Dr. GRPO, ReMax.

Layout (as TRL's ``GRPOTrainer`` / ``RLOOTrainer``): ``rewards`` is ``(..., N)`` with ``N = n_prompts·group_size``
and the ``group_size`` completions of one prompt **contiguous** (``rewards.view(-1, G)`` is one row per prompt);
every leading index is an independent batch. Outputs satisfy ``advantages == (rewards − baselines) / scales``
exactly; nothing is detached (rewards are data; see :mod:`~mdpalign.objectives.token_batches`).

Expected effect on a tabular softmax policy (THEORY.md "Online RL"): a baseline that does not depend on the
sample itself (RLOO's leave-one-out mean, ReMax's greedy reward, a value baseline) leaves the expected
policy gradient ``E[r·∇log pi]`` unchanged; GRPO's group mean *contains* the sample, which scales the reward's
gradient by ``(G−1)/G`` (Dr. GRPO with a reverse-KL gradient lands on Gibbs at temperature ``β·G/(G−1)``), and its
std division makes the effective advantage nonlinear in ``r`` (fixed point ``pi_ref/(1 − P_G/β)``, Vojnovic & Yun,
arXiv 2502.18548).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mdpalign.objectives.common import ObjectiveArgumentError, ShapeError
from mdpalign.objectives.token_batches import check_float_tensor, check_nonnegative, check_option

__all__ = ["SCALE_REWARDS", "AdvantageOutput", "rloo_advantages", "grpo_advantages", "remax_advantages"]

#: GRPO's reward scaling, TRL's ``GRPOConfig.scale_rewards``: divide by the group std, by the std of the whole batch
#: (PPO-Lite, arXiv 2508.08221), or not at all (Dr. GRPO, arXiv 2503.20783).
SCALE_REWARDS = ("group", "batch", "none")


class AdvantageOutput(NamedTuple):
    """advantages ``(rewards − baselines) / scales``; baselines (per element); scales (per element, 1 where
    unscaled); stds: the reward std the method looked at (GRPO: group or batch std before ``eps``, also for
    ``"none"``, as TRL logs ``frac_reward_zero_std``; ``None`` for RLOO and ReMax). All shaped like ``rewards``."""

    advantages: torch.Tensor
    baselines: torch.Tensor
    scales: torch.Tensor
    stds: torch.Tensor | None


def _check_group_rewards(rewards, group_size: int, min_group: int = 2) -> tuple[torch.Tensor, int]:
    check_float_tensor(rewards, "rewards")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ObjectiveArgumentError(f"group_size must be an int, got {group_size!r}")
    if group_size < min_group:
        raise ObjectiveArgumentError(f"group_size must be >= {min_group} (a baseline needs other samples of the "
                                     f"prompt), "
                         f"got {group_size}")
    n = rewards.shape[-1]
    if n % group_size:
        raise ShapeError(f"rewards' last dimension ({n}) must be a multiple of group_size {group_size} "
                         f"(n_prompts·group_size, groups contiguous)")
    r = rewards
    if not bool(torch.isfinite(r.detach()).all()):
        idx = tuple(int(i) for i in (~torch.isfinite(r)).nonzero()[0])
        raise ObjectiveArgumentError(f"rewards must be finite; found {r[idx].item()} at index {idx} (TRL's NaN "
                                     f"'unscorable' "
                         "convention is not supported: drop those completions)")
    return r, group_size


def _grouped(r: torch.Tensor, g: int) -> torch.Tensor:
    return r.reshape(*r.shape[:-1], r.shape[-1] // g, g)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> AdvantageOutput:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al., arXiv 2402.14740):
    ``A_i = r_i − (1/(G−1))·Σ_{j≠i} r_j`` over the other completions of the same prompt -> ``(..., N)``.

    Equivalently ``G/(G−1)·(r_i − mean_G r)`` (verl's ``compute_rloo_outcome_advantage`` writes it so). The
    baseline does not depend on ``y_i``, so the expected gradient is the plain policy gradient. TRL's
    ``RLOOTrainer`` computes the same baseline ``(Σ_G r − r_i)/(G−1)``; with ``normalize_advantages=True`` (default
    False) it then standardises over the batch, which this function does not.
    Errors: ``group_size < 2``, length not a multiple of it, non-finite rewards.
    """
    r, g = _check_group_rewards(rewards, group_size)
    grouped = _grouped(r, g)
    baselines = ((grouped.sum(dim=-1, keepdim=True) - grouped) / (g - 1)).reshape(r.shape)
    return AdvantageOutput(r - baselines, baselines, torch.ones_like(r), None)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                    eps: float = 1e-4) -> AdvantageOutput:
    """GRPO's group-relative advantage (Shao et al., DeepSeekMath, arXiv 2402.03300, Eq. for outcome supervision):
    ``A_i = (r_i − mean_G r) / (std + eps)`` -> ``(..., N)``.

    ``std`` is the **unbiased** (Bessel, ``ddof=1``) standard deviation, as TRL's ``nanstd`` and verl's
    ``torch.std``: of the prompt's group for ``scale_rewards="group"``; of all ``N`` rewards of the batch (each
    leading index separately) for ``"batch"`` — the baseline stays the group mean; for ``"none"`` (Dr. GRPO) no
    division (``scales = 1``). ``eps`` is **added to the std** (TRL: ``1e-4``, verl: ``1e-6``). A group with equal
    rewards gets ``A = 0``. Matches TRL 1.16 ``GRPOTrainer._generate_and_score_completions``
    (``multi_objective_aggregation="sum_then_normalize"``), except that TRL's ``nanstd`` computes its Bessel factor
    ``count/(count − 1)`` from integer tensors, i.e. in float32: a relative error up to ~3e-8 in its std even for
    float64 rewards. Errors: ``group_size < 2``, bad length, non-finite
    rewards, unknown ``scale_rewards``, ``eps < 0``.
    """
    r, g = _check_group_rewards(rewards, group_size)
    check_option(scale_rewards, SCALE_REWARDS, "scale_rewards")
    eps = check_nonnegative(eps, "eps")
    grouped = _grouped(r, g)
    baselines = grouped.mean(dim=-1, keepdim=True).expand_as(grouped).reshape(r.shape)
    if scale_rewards == "batch":
        if r.shape[-1] < 2:
            raise ShapeError("scale_rewards='batch' needs at least 2 rewards per batch")
        stds = r.std(dim=-1, keepdim=True).expand_as(r)
    else:
        stds = grouped.std(dim=-1, keepdim=True).expand_as(grouped).reshape(r.shape)
    scales = torch.ones_like(r) if scale_rewards == "none" else stds + eps
    return AdvantageOutput((r - baselines) / scales, baselines, scales, stds)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor, group_size: int = 1) -> AdvantageOutput:
    """ReMax (Li et al., arXiv 2310.10505): ``A_i = r_i − r(x_i, ŷ_i)``, the reward of the **greedy** response to the
    same prompt as baseline -> ``(..., N)``.

    ``greedy_rewards`` has one entry per prompt, ``(..., N // group_size)``, and is repeated over the
    ``group_size`` contiguous samples of that prompt (``group_size=1``: one sample per prompt, shapes equal, as
    verl's ``compute_remax_outcome_advantage`` takes ``reward_baselines (bs,)``). The baseline is independent of
    the sample, so the expected gradient is the plain policy gradient. verl subtracts the greedy *task* reward from
    the per-token returns ``Σ_{k>=t} r_k`` (the same thing for an outcome reward on the last token).
    """
    r, g = _check_group_rewards(rewards, group_size, min_group=1)
    check_float_tensor(greedy_rewards, "greedy_rewards")
    expect = (*r.shape[:-1], r.shape[-1] // g)
    if tuple(greedy_rewards.shape) != expect:
        raise ShapeError(f"greedy_rewards must have shape {expect} (one per prompt), got {tuple(greedy_rewards.shape)}")
    b = greedy_rewards
    if not bool(torch.isfinite(b).all()):
        raise ObjectiveArgumentError("greedy_rewards must be finite")
    baselines = b.unsqueeze(-1).expand(*expect, g).reshape(r.shape).to(r.dtype)
    return AdvantageOutput(r - baselines, baselines, torch.ones_like(r), None)
