"""Train Hugging Face causal LMs with the same objective functions as the proofs (``mdpalign.objectives``).

    from mdpalign.llm_bridge import train, TrainConfig
    result = train(TrainConfig(model_name_or_path=..., dataset_path=..., objective="dpo", output_dir=...))

Importing this package is cheap: transformers is imported by the names below only when first used.
Modules: ``config`` (TrainConfig and its option lists), ``data`` (records -> tokens -> batches), ``logps``
(chunked per-token log-probs), ``models`` (loading), ``reference`` (DPO's reference: choice, DeepSpeed engine,
precomputed cache), ``embedding_policy`` (IFT's adapter), ``trainer`` (the loss table), ``training`` (``train``),
``cli`` (``mdpalign train``; ``python -m mdpalign.llm_bridge``; ``mdpalign eval reward``). Reward models:
``reward_data`` (preference rows -> whole sequences), ``reward_model`` (the sequence classifier, its loss),
``evaluate`` (RewardBench accuracy). Online RL: ``online`` (prompts, seeded generation, reward functions),
``online_trainer`` (``OnlineTrainer``: grpo, rloo, reinforce, remax).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "train": "mdpalign.llm_bridge.training",
    "TrainResult": "mdpalign.llm_bridge.training",
    "TrainConfig": "mdpalign.llm_bridge.config",
    "ConfigError": "mdpalign.llm_bridge.config",
    "parse_config": "mdpalign.llm_bridge.config",
    "MdpalignTrainer": "mdpalign.llm_bridge.trainer",
    "UnsupportedModelError": "mdpalign.llm_bridge.embedding_policy",
    "load_records": "mdpalign.llm_bridge.data",
    "tokenize_records": "mdpalign.llm_bridge.data",
    "TokenizeSettings": "mdpalign.llm_bridge.data",
    "counted_token_mask": "mdpalign.llm_bridge.data",
    "DatasetError": "mdpalign.llm_bridge.data",
    "EmptyDatasetError": "mdpalign.llm_bridge.data",
    "MissingColumnsError": "mdpalign.llm_bridge.data",
    "TokenizationBoundaryError": "mdpalign.llm_bridge.data",
    "install_logps_forward": "mdpalign.llm_bridge.logps",
    "batch_token_logps": "mdpalign.llm_bridge.logps",
    "chunked_token_logps": "mdpalign.llm_bridge.logps",
    # reward models
    "tokenize_reward_records": "mdpalign.llm_bridge.reward_data",
    "load_reward_model": "mdpalign.llm_bridge.reward_model",
    "RewardModelError": "mdpalign.llm_bridge.reward_model",
    "evaluate_reward": "mdpalign.llm_bridge.evaluate",
    "rewardbench_accuracy": "mdpalign.llm_bridge.evaluate",
    "RewardEvalError": "mdpalign.llm_bridge.evaluate",
    # online RL
    "OnlineTrainer": "mdpalign.llm_bridge.online_trainer",
    "tokenize_prompts": "mdpalign.llm_bridge.online",
    "RewardFunctionError": "mdpalign.llm_bridge.online",
    "FixedPointWarning": "mdpalign.llm_bridge.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mdpalign.llm_bridge' has no attribute {name!r}")
