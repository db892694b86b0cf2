"""Closed-form optima of the alignment objectives, each with its derivation and a ``check``.

Every function returns an :class:`~mdpalign.proofs.base.Optimum` — a :class:`UniqueOptimum`,
:class:`PinnedDifferences` or :class:`NoFiniteOptimum` — whose ``check(probs=... | log_probs=...,
tol=...)`` says whether a trained tabular policy satisfies the characterisation and by how much it
misses. Pure numpy/scipy float64; no torch import.
"""
from mdpalign.proofs.base import (
    CheckResult,
    NoClosedFormError,
    NoFiniteOptimum,
    Optimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    as_log_policy,
    pair_table,
)
from mdpalign.proofs.crlft import crlft_optimum, crlft_table
from mdpalign.proofs.dpo import (
    bradley_terry_nll,
    bradley_terry_scores,
    dpo_optimum,
    dpo_population_loss,
    dpo_two_arm_log_ratio,
    ford_condition,
    win_table_graph,
)
from mdpalign.proofs.ift import ift_depth2_optimum, ift_deterministic_optimum, ift_sft_limit_optimum
from mdpalign.proofs.ipo import ipo_mu_optimum, ipo_optimum, ipo_population_loss, ipo_scores
from mdpalign.proofs.kl_rl import greedy_limit, kl_rl_gap, kl_rl_optimum, kl_rl_value, optimal_soft_value
from mdpalign.proofs.orpo import log_odds, orpo_optimum, orpo_population_loss, orpo_two_arm_root
from mdpalign.proofs.sft import length_normalised_sft_optimum, sft_optimum, sft_population_loss
from mdpalign.proofs.token_tree import leaf_pair_table, soft_backward_recursion, token_tree_optimum, tree_sft_optimum

__all__ = [
    "CheckResult", "NoClosedFormError", "NoFiniteOptimum", "Optimum", "PinnedDifferences", "ProofInputError",
    "UniqueOptimum", "as_log_policy", "pair_table",
    "crlft_optimum", "crlft_table",
    "bradley_terry_nll", "bradley_terry_scores", "dpo_optimum", "dpo_population_loss", "dpo_two_arm_log_ratio",
    "ford_condition", "win_table_graph",
    "ift_deterministic_optimum", "ift_depth2_optimum", "ift_sft_limit_optimum",
    "ipo_mu_optimum", "ipo_optimum", "ipo_population_loss", "ipo_scores",
    "greedy_limit", "kl_rl_gap", "kl_rl_optimum", "kl_rl_value", "optimal_soft_value",
    "log_odds", "orpo_optimum", "orpo_population_loss", "orpo_two_arm_root",
    "length_normalised_sft_optimum", "sft_optimum", "sft_population_loss",
    "leaf_pair_table", "soft_backward_recursion", "token_tree_optimum", "tree_sft_optimum",
]

# online RL and reward models (issue 11)
from mdpalign.proofs.best_of_n import (
    best_of_n_kl,
    best_of_n_kl_bound,
    best_of_n_policy,
    best_of_n_win_rate,
    raft_iterates,
    raft_limit,
)
from mdpalign.proofs.grpo import GRPO_KL, GRPO_SCALE_REWARDS, TRL_GRPO_EPS, grpo_expected_advantage, grpo_optimum
from mdpalign.proofs.nash import nash_md_fixed_point, nash_md_iterate, preference_against, regularised_nash_optimum
from mdpalign.proofs.online_rl import (
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    FlowLimit,
    k3_loss_optimum,
    kl_effective_advantage,
    kl_effective_penalty,
    kl_estimator_optimum,
    kl_expected_update,
)
from mdpalign.proofs.reward_model import (
    REWARD_GAUGES,
    RewardModelOptimum,
    bradley_terry_reward_optimum,
    bradley_terry_two_arm_margin,
    reward_model_loss,
)
from mdpalign.proofs.rlhf_pipeline import pipeline_offsets_of, rlhf_pipeline_optimum
from mdpalign.proofs.token_tree_online import TREE_LOCAL_KL, token_tree_local_kl_optimum

__all__ += [
    "best_of_n_kl", "best_of_n_kl_bound", "best_of_n_policy", "best_of_n_win_rate", "raft_iterates", "raft_limit",
    "GRPO_KL", "GRPO_SCALE_REWARDS", "TRL_GRPO_EPS", "grpo_expected_advantage", "grpo_optimum",
    "nash_md_fixed_point", "nash_md_iterate", "preference_against", "regularised_nash_optimum",
    "KL_ESTIMATORS", "KL_PLACEMENTS", "FlowLimit", "k3_loss_optimum", "kl_effective_advantage", "kl_effective_penalty",
    "kl_estimator_optimum", "kl_expected_update",
    "REWARD_GAUGES", "RewardModelOptimum", "bradley_terry_reward_optimum", "bradley_terry_two_arm_margin",
    "reward_model_loss",
    "pipeline_offsets_of", "rlhf_pipeline_optimum",
    "TREE_LOCAL_KL", "token_tree_local_kl_optimum",
]
