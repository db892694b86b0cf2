"""TRL 1.16's GRPO / RLOO loss code called on given per-token log-probs, through stub trainers (no model, no
generation): the same ``_compute_loss`` a TRL run executes, fed the tensors a test chooses."""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x


def _inputs(mask, adv, **extra):
    B, T = mask.shape
    return {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
            "advantages": adv, **extra}


def trl_grpo_loss(token_logps, old, ref, adv, mask, loss_type, beta, bias_correction, epsilon=0.2,
                  epsilon_high=0.2, max_completion_length=None, num_items=None):
    """TRL 1.16 ``GRPOTrainer._compute_loss`` on given per-token log-probs ``(B, T)`` (completion layout; ``old`` None:
    on-policy) in eval mode, so no gradient-accumulation rescaling."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (token_logps, torch.zeros_like(token_logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=epsilon,
        epsilon_high=epsilon_high, use_vllm=False, model=SimpleNamespace(training=False),
        args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
        current_gradient_accumulation_steps=1, accelerator=_Accelerator(), max_completion_length=max_completion_length,
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    extra = {"ref_per_token_logps": ref}
    if old is not None:
        extra["old_per_token_logps"] = old
    if num_items is not None:
        extra["num_items_in_batch"] = torch.tensor(float(num_items), dtype=torch.float64)
    return GRPOTrainer._compute_loss(stub, None, _inputs(mask, adv, **extra))


def trl_rloo_loss(token_logps, mask, old_seq, adv, epsilon=0.2, epsilon_high=0.2):
    """TRL 1.16 ``RLOOTrainer._compute_loss``: the clipped loss on the sequence ratio of summed log-probs, mean over
    sequences; ``old_seq`` the sampling policy's sequence log-probs ``(B,)``."""
    from trl.trainer.rloo_trainer import RLOOTrainer

    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (token_logps, torch.zeros_like(token_logps), None),
        aux_loss_enabled=False, epsilon_low=epsilon, epsilon_high=epsilon_high, model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(reduce=lambda x, reduction="sum": x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    return RLOOTrainer._compute_loss(stub, None, _inputs(mask, adv, old_logps=old_seq))
