r"""Per-token KL estimators to a reference policy, and the two places an online-RL trainer can put them.

With ``h = log pi(y_t|s_t) − log pi_ref(y_t|s_t)`` on a token sampled from ``pi`` (Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html):

* ``k1 = h``                                   (unbiased for KL(pi‖ref), can be negative)
* ``k2 = h²/2``                                (biased, >= 0)
* ``k3 = pi_ref/pi − log(pi_ref/pi) − 1 = e^{−h} + h − 1``  (unbiased for KL(pi‖ref), >= 0), computed as
  ``expm1(−h) + h``: no cancellation against the 1, so small ``|h|`` keeps its relative precision.

**Which gradient each one gives** (exact expectation over a softmax policy, verified with autograd in
``tests/objectives/test_kl.py``; ``∇KL`` below is ``∇_θ KL(pi_θ‖ref)``, ``∇rKL`` is ``∇_θ KL(ref‖pi_θ)``):

=========  ==========================================  ==============================  ===========================
estimator  in the reward (detached, ``−β·Σ_t k`` added   as a loss ``β·k`` (sampling     as a loss ``β·k·ρ``,
           to the sequence reward, REINFORCE on it)     weights detached, on-policy)   ``ρ = pi/pi_old`` (TRL
                                                                                       ``use_bias_correction_kl``)
=========  ==========================================  ==============================  ===========================
k1         ``∇KL`` (unbiased)                           **0** (``E_pi ∇log pi = 0``)   ``∇KL``
k2         ``∇E_pi[h²/2] − ∇KL`` (no KL's gradient)     ``∇KL`` (on-policy only)        ``∇E_pi[h²/2]``
k3         **``∇KL − ∇rKL``** (ascends +KL(ref‖pi))     **``∇rKL``** (biased)           ``∇KL``
=========  ==========================================  ==============================  ===========================

Derivation: in the reward the penalty's loss gradient is ``β·E_pi[k·∇log pi]``; with ``k1`` that is ``β∇KL``
(``∇KL = E[h∇log pi] + E[∇h]`` and ``E[∇h] = E[∇log pi] = 0``). As a loss the gradient is ``β·E_pi[∇k]``:
``∇k2 = h∇log pi`` gives ``∇KL``; ``∇k3 = (1 − pi_ref/pi)∇log pi`` gives ``Σ_y (pi − pi_ref)∇log pi = ∇rKL``.
Importance-corrected, ``E_{pi_old}[ρ·k]`` equals ``E_pi[k]`` for every θ, so its gradient is ``∇E_pi[k]`` —
``∇KL`` for the unbiased ``k1`` and ``k3`` even off-policy (PPO inner epochs), not for ``k2``.
Consequences for the fixed points (THEORY.md "Online RL"): k1 in the reward, k2 as a loss and k3·ρ as a loss land
on the Gibbs policy ``pi_ref·e^{r/β}/Z``; k3 as a loss (GRPO's original choice, verl ``low_var_kl`` with
``use_kl_loss``) lands on ``pi = β·pi_ref/(λ − r)``; k1 as a loss does not regularise at all; k3 in the reward
(trl PR#3240 documented it as unbiased) rewards moving away from ``pi_ref`` in reverse KL and collapses.

Where the libraries differ: verl's ``core_algos.kl_penalty`` clamps the ``k3`` log-ratio to ±20 and ``k3`` to ±10,
OpenRLHF's ``compute_approx_kl`` clamps every estimator to ±10; a clamp zeroes the gradient exactly where the
estimator is largest — mdpalign does not clamp. verl's ``k3+`` / ``low_var_kl+`` is a straight-through estimator
(value of ``k3``, gradient of ``k2``: ``k2 − sg(k2) + sg(k3)``), not ``k3·ρ``: on-policy both give ``∇KL``, off-policy
(later PPO epochs) only ``k3·ρ`` stays exact. TRL's ``GRPOTrainer._compute_loss`` computes ``k3`` as
``exp(ref − logp) − (ref − logp) − 1`` (loses relative precision for small ``|h|``) and, in TRL 1.16, multiplies it
by ``ρ`` by default (``use_bias_correction_kl=True``); TRL's ``RLOOTrainer`` puts ``k1`` of the *old* log-probs in the
reward, summed over the sequence (:func:`kl_penalised_rewards`).
"""
from __future__ import annotations

import torch

from mdpalign.objectives.common import ObjectiveArgumentError, ShapeError, as_bool_mask, check_beta
from mdpalign.objectives.token_batches import check_batched_tokens, check_float_tensor, check_option, zero_where_masked

__all__ = ["KL_ESTIMATORS", "KL_PLACEMENTS", "kl_estimate", "kl_penalised_rewards", "kl_loss_term"]

#: Schulman's estimators of KL(pi‖ref) from one sample.
KL_ESTIMATORS = ("k1", "k2", "k3")
#: Where the estimate enters training: subtracted from the reward (a constant), added to the loss, or added to the
#: loss multiplied by the importance ratio ``pi/pi_old`` (TRL's ``use_bias_correction_kl``).
KL_PLACEMENTS = ("reward", "loss", "loss_is")


def _estimate(h: torch.Tensor, estimator: str) -> torch.Tensor:
    if estimator == "k1":
        return h
    if estimator == "k2":
        return 0.5 * h * h
    return torch.expm1(-h) + h


def kl_estimate(token_logps: torch.Tensor, ref_token_logps: torch.Tensor, estimator: str = "k3",
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL estimate (see the module table) -> same shape as ``token_logps``.

    ``h = token_logps − ref_token_logps`` elementwise; ``k1 = h``, ``k2 = h²/2``, ``k3 = expm1(−h) + h``. Any shape
    (the two inputs equal); with ``mask`` (same shape, bool or 0/1) non-counted positions return exactly 0 and
    their inputs are never touched (a ``-inf`` there cannot make a ``nan`` gradient). Reduction: none.
    Differentiable in both inputs; which gradient that gives depends on the placement (module docstring).
    """
    check_option(estimator, KL_ESTIMATORS, "estimator")
    check_float_tensor(token_logps, "token_logps")
    check_float_tensor(ref_token_logps, "ref_token_logps")
    if ref_token_logps.shape != token_logps.shape:
        raise ShapeError(f"ref_token_logps must have the shape of token_logps {tuple(token_logps.shape)}, "
                         f"got {tuple(ref_token_logps.shape)}")
    if mask is None:
        return _estimate(token_logps - ref_token_logps, estimator)
    if not isinstance(mask, torch.Tensor) or mask.shape != token_logps.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ShapeError(f"mask must have the shape of token_logps {tuple(token_logps.shape)}, got {got}")
    m = as_bool_mask(mask, "mask")
    h = zero_where_masked(token_logps, m) - zero_where_masked(ref_token_logps, m)
    return zero_where_masked(_estimate(h, estimator), m)


def kl_penalised_rewards(rewards: torch.Tensor, token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
                         mask: torch.Tensor, beta: float, estimator: str = "k1") -> torch.Tensor:
    """Sequence rewards with the KL penalty in the reward: ``r_i − β·Σ_t m_it·k(h_it)`` -> ``(..., B)``.

    Shapes: ``rewards (..., B)``, token tensors ``(..., B, T)``. Reduction: a **sum** over the counted tokens of each
    sequence (the sequence-level KL ``log pi(y) − log pi_ref(y)`` for ``k1``), no mean. A reward is a constant of the
    policy-gradient loss: pass the log-probs of the policy that *sampled* the batch (``old_token_logps``, computed
    without gradient — this function does not detach, see :mod:`~mdpalign.objectives.token_batches`), as TRL's
    ``RLOOTrainer`` does (``per_token_kl = old_per_token_logps − ref_per_token_logps``,
    ``rewards − β·kl.sum(-1)``) and as InstructGPT-style PPO does per token. With ``k1`` this is the unbiased
    placement (Gibbs fixed point); ``k3`` here is the trl PR#3240 bug (module docstring).
    """
    beta = check_beta(beta)
    check_option(estimator, KL_ESTIMATORS, "estimator")
    m = check_batched_tokens(mask, token_logps=token_logps, ref_token_logps=ref_token_logps)
    check_float_tensor(rewards, "rewards")
    if rewards.shape != token_logps.shape[:-1]:
        raise ShapeError(f"rewards must have shape {tuple(token_logps.shape[:-1])} (one per sequence of token_logps "
                         f"{tuple(token_logps.shape)}), got {tuple(rewards.shape)}")
    return rewards - beta * kl_estimate(token_logps, ref_token_logps, estimator, mask=m).sum(dim=-1)


def kl_loss_term(token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k3",
                 old_token_logps: torch.Tensor | None = None, use_bias_correction_kl: bool = False) -> torch.Tensor:
    """Per-token KL loss term (multiply by β and add to the per-token policy loss) -> ``(..., B, T)``.

    ``k(h_t)`` with ``h_t = log pi − log pi_ref``, differentiable in ``token_logps``; with ``use_bias_correction_kl``
    ``k(h_t)·ρ_t``, ``ρ_t = exp(log pi − log pi_old)`` with ``old_token_logps`` a constant (default ``None``: the
    detached ``token_logps`` themselves, i.e. on-policy, where ``ρ = 1`` in value but ``∇ρ = ∇log pi``). 0 at
    non-counted positions. Reduction: none; aggregate with
    :func:`~mdpalign.objectives.policy_gradient.aggregate_token_loss` together with the policy term, as TRL's
    ``GRPOTrainer._compute_loss`` adds ``β·per_token_kl`` to ``per_token_loss`` before aggregating.

    On a token tree this is a *local* (per-token) KL: its expected gradient at a prefix ignores the KL of the
    continuation, so even an unbiased estimator lands on the myopic fixed point
    ``pi(a|s) ∝ pi_ref(a|s)·exp(Q_r(s,a)/β)``, not the soft optimum (Tang & Munos, arXiv 2506.09477; THEORY.md).
    """
    check_option(estimator, KL_ESTIMATORS, "estimator")
    m = check_batched_tokens(mask, token_logps=token_logps, ref_token_logps=ref_token_logps)
    kl = kl_estimate(token_logps, ref_token_logps, estimator, mask=m)
    if not use_bias_correction_kl:
        if old_token_logps is not None:
            raise ObjectiveArgumentError("old_token_logps is used only with use_bias_correction_kl=True")
        return kl
    if old_token_logps is None:
        old = token_logps.detach()
    else:
        if old_token_logps is token_logps:
            raise ObjectiveArgumentError("old_token_logps is token_logps itself: ρ ≡ 1 would carry no gradient; pass "
                                         "None for "
                             "the on-policy ratio (token_logps.detach()) or the sampling policy's log-probs")
        check_batched_tokens(m, token_logps=token_logps, old_token_logps=old_token_logps)
        old = old_token_logps
    log_ratio = zero_where_masked(token_logps, m) - zero_where_masked(old, m)
    return zero_where_masked(kl * torch.exp(log_ratio), m)
