"""Alignment objectives as pure torch functions of per-token log-probabilities and masks.

Each returns per-example tensors (plus metrics as NamedTuples); the caller reduces.
"""
from mdpalign.objectives.common import (
    LOGP_ROUNDING_EPS,
    InvalidLogProbError,
    ObjectiveArgumentError,
    ShapeError,
    as_bool_mask,
    batch_token_mean,
    check_beta,
    check_number,
    check_same_shape,
    check_sequence_inputs,
    check_sequence_logps,
    check_token_inputs,
    log1mexp,
    logp_rounding_tolerance,
    masked_token_values,
    sequence_logps,
    token_counts,
    token_logps_from_logits,
)
from mdpalign.objectives.crlft import (
    CRLFT_REDUCTIONS,
    OPENCHAT_CLASS_REWARDS,
    CRLFTOutput,
    crlft_class_weights,
    crlft_loss,
    crlft_reduce,
)
from mdpalign.objectives.dpo import DPO_LOSS_TYPES, DPOOutput, dpo_loss
from mdpalign.objectives.ift import (
    IFT_FORMS,
    IFTOutput,
    IFTTwoPass,
    causal_predicted_inputs,
    fuse_embeddings,
    ift_loss,
    ift_two_pass,
    propagation_weights,
    shift_mask_to_inputs,
    successor_from_table,
    successor_predicted_inputs,
)
from mdpalign.objectives.kl_rl import (
    kl_rl_objective,
    kl_rl_optimal_log_policy,
    normalisation_tolerance,
)
from mdpalign.objectives.orpo import ORPOOutput, orpo_log_odds, orpo_loss
from mdpalign.objectives.sft import SFTPieces, sft_loss, sft_pieces

__all__ = [
    "ShapeError", "InvalidLogProbError", "ObjectiveArgumentError", "LOGP_ROUNDING_EPS", "logp_rounding_tolerance",
    "as_bool_mask", "batch_token_mean", "check_beta", "check_number", "check_same_shape", "check_sequence_inputs",
    "check_sequence_logps", "check_token_inputs", "log1mexp", "masked_token_values", "sequence_logps", "token_counts",
    "token_logps_from_logits",
    "SFTPieces", "sft_loss", "sft_pieces",
    "DPO_LOSS_TYPES", "DPOOutput", "dpo_loss",
    "ORPOOutput", "orpo_log_odds", "orpo_loss",
    "IFT_FORMS", "IFTOutput", "IFTTwoPass", "causal_predicted_inputs", "fuse_embeddings", "ift_loss",
    "ift_two_pass", "propagation_weights", "shift_mask_to_inputs", "successor_from_table",
    "successor_predicted_inputs",
    "CRLFT_REDUCTIONS", "OPENCHAT_CLASS_REWARDS", "CRLFTOutput", "crlft_class_weights", "crlft_loss", "crlft_reduce",
    "kl_rl_objective", "kl_rl_optimal_log_policy", "normalisation_tolerance",
]

# Online RL and reward models (issue 11).
from mdpalign.objectives.advantages import (
    SCALE_REWARDS,
    AdvantageOutput,
    grpo_advantages,
    remax_advantages,
    rloo_advantages,
)
from mdpalign.objectives.kl import KL_ESTIMATORS, KL_PLACEMENTS, kl_estimate, kl_loss_term, kl_penalised_rewards
from mdpalign.objectives.policy_gradient import TOKEN_LOSS_TYPES, PPOClipOutput, aggregate_token_loss, ppo_clip_loss
from mdpalign.objectives.reward import BradleyTerryOutput, bradley_terry_loss, center_rewards_penalty
from mdpalign.objectives.value import (
    GAEOutput,
    ValueLossOutput,
    clipped_value_loss,
    gae_advantages,
    place_sequence_rewards,
)

__all__ += [
    "SCALE_REWARDS", "AdvantageOutput", "grpo_advantages", "remax_advantages", "rloo_advantages",
    "KL_ESTIMATORS", "KL_PLACEMENTS", "kl_estimate", "kl_loss_term", "kl_penalised_rewards",
    "TOKEN_LOSS_TYPES", "PPOClipOutput", "aggregate_token_loss", "ppo_clip_loss",
    "BradleyTerryOutput", "bradley_terry_loss", "center_rewards_penalty",
    "GAEOutput", "ValueLossOutput", "clipped_value_loss", "gae_advantages", "place_sequence_rewards",
]
