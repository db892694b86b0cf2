"""One run configuration: ``transformers.TrainingArguments`` plus model, data and objective fields.

The class *is* a ``TrainingArguments`` so that every Trainer/accelerate option keeps its own name
(``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``bf16``, ``save_steps``,
``gradient_checkpointing``, ``fsdp``, ``deepspeed``...). A run is described by a YAML file whose
keys are field names; ``--key value`` on the command line overrides the file.
"""
from __future__ import annotations

import argparse
import enum
import importlib.util
import json
import math
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from mdpalign.errors import MdpalignError
from mdpalign.objectives import CRLFT_REDUCTIONS, DPO_LOSS_TYPES, KL_ESTIMATORS, SCALE_REWARDS, TOKEN_LOSS_TYPES
from mdpalign.objectives.ift import IFT_DEFAULT_DECAY, IFT_DEFAULT_LAMBDA

OBJECTIVES = ("sft", "dpo", "orpo", "ift", "crlft")
REFERENCE_MODES = ("precomputed", "model", "adapter_disabled")
ORPO_NLL_SCOPES = ("prompt_and_completion", "completion")
SFT_REDUCTIONS = ("token_mean", "sequence_mean", "sequence_sum")
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: objectives whose loss compares the policy with a reference model: the one list every layer asks
NEEDS_REFERENCE = ("dpo",)

#: objectives that train a sequence classifier with one output (a reward model) instead of a causal LM
SEQUENCE_SCORE_OBJECTIVES = ("reward",)
OBJECTIVES = OBJECTIVES + SEQUENCE_SCORE_OBJECTIVES

# --- online RL (objective: grpo | rloo | reinforce | remax); see mdpalign/llm_bridge/online_trainer.py ---
#: objectives that generate their own completions and train on rewards
ONLINE_OBJECTIVES = ("grpo", "rloo", "reinforce", "remax")
OBJECTIVES = OBJECTIVES + ONLINE_OBJECTIVES
#: where the KL penalty goes: subtracted from the reward (a constant of the loss) or added to the per-token loss
#: (``use_bias_correction_kl`` then multiplies it by the importance ratio: the objectives' placement ``loss_is``)
KL_PLACEMENTS_CONFIG = ("reward", "loss")
#: per-objective defaults of the fields left unset (None): num_generations, loss_type
ONLINE_DEFAULTS = {"grpo": (8, "dr_grpo"), "rloo": (2, "seq_sum"), "reinforce": (1, "seq_sum"),
                   "remax": (1, "seq_sum")}


class ConfigError(MdpalignError, ValueError):
    """A run configuration names an unknown option or a value outside its domain."""


def _as_dict(name: str, value: Any) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name} must be a mapping or a JSON object string, got {value!r}: {err}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{name} must be a JSON object, got {value!r}")
        return parsed
    raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")


@dataclass
class TrainConfig(TrainingArguments):
    """``TrainingArguments`` + the fields below. Defaults follow TRL where TRL has the same knob."""

    # --- model ---
    model_name_or_path: str | None = field(default=None, metadata={"help": "Local checkpoint dir or hub id."})
    torch_dtype: str = field(default="float32", metadata={"help": f"One of {TORCH_DTYPES}."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Passed to from_pretrained: eager | sdpa | flash_attention_2 | ..."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names for LoRA; default 'all-linear'."}
    )
    # --- objective ---
    objective: str = field(default="sft", metadata={"help": f"One of {OBJECTIVES}."})
    loss_type: str | None = field(
        default=None,
        metadata={"help": f"DPO loss: one of {DPO_LOSS_TYPES} (default sigmoid). Online RL, objective grpo: the token "
                          f"aggregation, one of {TOKEN_LOSS_TYPES} (TRL's names; default dr_grpo: sum / (batch · "
                          "max_completion_length), a constant normaliser, so the expected gradient is the policy "
                          "gradient of the sequence objective; TRL 1.16's default dapo divides by the batch's token "
                          "count and grpo by each completion's length (biased towards short positive and long "
                          "negative answers, Dr. GRPO §3); seq_sum = mean over completions of the token sum). "
                          "rloo/reinforce/remax: seq_sum only (TRL RLOOTrainer's sequence-level ratio)."})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature (IPO: tau). Online RL: the KL coefficient "
                                                       "(>= 0; 0 = no KL and no reference model, TRL GRPO's default)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "DPO robust/sigmoid label noise in [0, 0.5)."})
    sft_reduction: str = field(
        default="token_mean",
        metadata={"help": f"SFT reduction, one of {SFT_REDUCTIONS}; token_mean is TRL's (sum NLL / counted tokens)."},
    )
    orpo_lambda: float = field(default=0.1, metadata={"help": "Weight of ORPO's odds-ratio term."})
    orpo_nll_scope: str = field(
        default="prompt_and_completion",
        metadata={"help": f"Tokens of ORPO's NLL term, one of {ORPO_NLL_SCOPES} (TRL: prompt_and_completion)."},
    )
    ift_lambda: float = field(
        default=IFT_DEFAULT_LAMBDA,
        metadata={"help": f"IFT embedding-fusion weight in [0, 1); default the paper's {IFT_DEFAULT_LAMBDA}."},
    )
    ift_decay: float = field(
        default=IFT_DEFAULT_DECAY,
        metadata={"help": f"IFT discount gamma of the propagation weights in [0, 1]; default the paper's "
                          f"{IFT_DEFAULT_DECAY}."},
    )
    ift_detach_weights: bool = field(
        default=False, metadata={"help": "Detach IFT propagation weights (the reference code does not)."}
    )
    crlft_class_column: str = field(default="class", metadata={"help": "Column naming each example's class."})
    crlft_weight_column: str | None = field(
        default=None, metadata={"help": "Optional per-example weight column (overrides class weights)."}
    )
    crlft_class_weights: dict | str | None = field(
        default=None, metadata={"help": 'Class -> weight, e.g. {"expert": 1.0, "suboptimal": 0.1} (OpenChat).'}
    )
    crlft_reduction: str = field(
        default="token",
        metadata={"help": f"C-RLFT reduction, one of {CRLFT_REDUCTIONS}: token = the paper's sum of token NLL of each "
                          "sequence weighted by its class weight w, normalised by the sum of w over the optimizer "
                          "step; sequence = OpenChat's code, each token weighted by w_i/n_i (n_i = counted tokens of "
                          "sequence i), same normalisation."},
    )
    crlft_class_prefixes: dict | str | None = field(
        default=None,
        metadata={"help": 'Class -> prompt prefix, e.g. {"expert": "GPT4 Correct User: ", '
                          '"suboptimal": "GPT3 User: "}.'},
    )
    # --- reward model (objective: reward) ---
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Reward models: adds c * mean((r_chosen + r_rejected)^2) to the Bradley-Terry loss (TRL's "
                          "name; Eisenstein et al. 2023 use 0.01). Default none."},
    )
    # --- reference ---
    reference: str | None = field(
        default=None,
        metadata={"help": f"One of {REFERENCE_MODES}; default precomputed (DPO), for online RL model, or "
                          "adapter_disabled with use_peft (precomputed cannot apply to fresh completions)."})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference checkpoint; default: model_name_or_path."}
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where precomputed reference log-probs are cached; default output_dir/ref_cache."},
    )
    # --- data ---
    dataset_path: str | None = field(
        default=None, metadata={"help": "JSONL / JSON / parquet file or save_to_disk dir."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a saved DatasetDict."})
    max_length: int | None = field(default=1024, metadata={"help": "Max prompt+completion tokens (keep start)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Keep only the last N prompt tokens."})
    padding_free: bool = field(
        default=False, metadata={"help": "Pack a batch into one row with restarting position_ids (no padding)."}
    )
    logps_chunk_size: int = field(
        default=1024, metadata={"help": "Positions per chunk of the log-softmax (bounds fp32 logits memory)."}
    )
    # --- online RL (objective: grpo | rloo | reinforce | remax); README "Online RL" ---
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Rewards: 'module:function' or 'path/to/file.py:function' (TRL's signature "
                          "(prompts, completions, **columns) -> list[float]) and/or reward-model directories "
                          "(a sequence classifier with one output); the weighted sum is the reward."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward_funcs entry (TRL's name); default all 1."})
    num_generations: int | None = field(
        default=None,
        metadata={"help": "Completions per prompt (the group); default grpo 8 (TRL), rloo 2 (TRL), reinforce and "
                          "remax 1. per_device_train_batch_size counts completions and must be a multiple of it."})
    max_completion_length: int = field(default=256, metadata={"help": "Generated tokens per completion at most."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    kl_estimator: str = field(
        default="k1",
        metadata={"help": f"Per-token KL estimator, one of {KL_ESTIMATORS} (TRL GRPO always uses k3). With "
                          "kl_placement reward: k1 lands on the KL-regularised optimum pi_ref·exp(r/beta)/Z (also "
                          "sequence-level, on completions of many tokens); k2 and k3 in the reward have no fixed "
                          "point (the policy collapses; trl PR#3240)."})
    kl_placement: str = field(
        default="reward",
        metadata={"help": f"Where the KL goes, one of {KL_PLACEMENTS_CONFIG}. reward (default): -beta·sum_t k of the "
                          "sampling policy, a constant of the loss (TRL RLOOTrainer). loss: + beta·k per token "
                          "(TRL GRPOTrainer): k1 does not regularise (expected gradient 0), k3 lands on "
                          "beta·pi_ref/(lambda - r) (the gradient of KL(ref||pi)), k2 and k3 with "
                          "use_bias_correction_kl on the optimum, but only per token: on completions of more than "
                          "one token a KL loss lands on the myopic policy (tests/harness/test_harness_online.py)."})
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={"help": "kl_placement loss only: multiply the per-token KL by pi/pi_old (TRL's name; TRL 1.16 "
                          "defaults it to true): k3·rho has the gradient of KL(pi||ref)."})
    scale_rewards: str = field(
        default="none",
        metadata={"help": f"grpo: divide the group-centred reward by the std of the group or batch, one of "
                          f"{SCALE_REWARDS} (TRL's name; TRL defaults to group). none (Dr. GRPO) keeps the optimum; "
                          "group/batch land on the GRPO fixed point pi_ref/(1 - P_G/beta) (Vojnovic & Yun, arXiv "
                          "2502.18548), not the KL-regularised optimum."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range (TRL's name)."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clip range; default epsilon (DAPO: 0.28)."})
    num_iterations: int = field(
        default=1,
        metadata={"help": "Optimizer steps on each generation batch (TRL's name, PPO epochs); the sampling policy's "
                          "log-probs are computed once per batch."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (not implemented; needs vllm)."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = "mdpalign-run"
        # our collators build the model inputs; Trainer must not drop their columns
        self.remove_unused_columns = False
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except ValueError as err:  # TrainingArguments' own checks: a setting to change, not a bug
            raise ConfigError(_training_arguments_problem(err)) from err
        self.crlft_class_weights = _as_dict("crlft_class_weights", self.crlft_class_weights)
        self.crlft_class_prefixes = _as_dict("crlft_class_prefixes", self.crlft_class_prefixes)
        validate(self)


def _training_arguments_problem(err: ValueError) -> str:
    message = " ".join(str(err).split())
    if re.search(r"\b(bf16|fp16|half)\b|gpu", message, re.IGNORECASE):
        message = message.rstrip(".") + ("; without a GPU that supports it, set bf16: false and fp16: false "
                                          "(--bf16 false --fp16 false) to train in float32, or use_cpu: true "
                                          "(--use_cpu true) to train on the CPU")
    return f"TrainingArguments: {message}"


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def validate(cfg: TrainConfig) -> None:
    """Check the mdpalign fields; raise ``ConfigError`` naming the first bad one."""
    _one_of("objective", cfg.objective, OBJECTIVES)
    resolve_objective_defaults(cfg)
    if cfg.objective not in ONLINE_OBJECTIVES:
        _one_of("loss_type", cfg.loss_type, DPO_LOSS_TYPES)
    _one_of("reference", cfg.reference, REFERENCE_MODES)
    _one_of("orpo_nll_scope", cfg.orpo_nll_scope, ORPO_NLL_SCOPES)
    _one_of("sft_reduction", cfg.sft_reduction, SFT_REDUCTIONS)
    _one_of("crlft_reduction", cfg.crlft_reduction, CRLFT_REDUCTIONS)
    _one_of("torch_dtype", cfg.torch_dtype, TORCH_DTYPES)
    if cfg.objective in ONLINE_OBJECTIVES:
        validate_online(cfg)
    elif not (math.isfinite(cfg.beta) and cfg.beta > 0):
        raise ConfigError(f"beta must be a finite number > 0, got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.label_smoothing > 0 and cfg.loss_type not in ("sigmoid", "robust"):
        raise ConfigError(f"label_smoothing applies to loss_type sigmoid/robust, not {cfg.loss_type!r}")
    if not (math.isfinite(cfg.orpo_lambda) and cfg.orpo_lambda >= 0):
        raise ConfigError(f"orpo_lambda must be >= 0, got {cfg.orpo_lambda}")
    if not 0.0 <= cfg.ift_lambda < 1.0:
        raise ConfigError(f"ift_lambda must be in [0, 1), got {cfg.ift_lambda}")
    if not 0.0 <= cfg.ift_decay <= 1.0:
        raise ConfigError(f"ift_decay must be in [0, 1], got {cfg.ift_decay}")
    if cfg.max_length is not None and cfg.max_length < 2:
        raise ConfigError(f"max_length must be >= 2, got {cfg.max_length}")
    if cfg.max_prompt_length is not None and cfg.max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be >= 1, got {cfg.max_prompt_length}")
    if cfg.logps_chunk_size < 1:
        raise ConfigError(f"logps_chunk_size must be >= 1, got {cfg.logps_chunk_size}")
    if cfg.reference == "adapter_disabled" and cfg.objective in NEEDS_REFERENCE and not cfg.use_peft:
        raise ConfigError("reference='adapter_disabled' needs use_peft=true (the reference is the base model)")
    _check_reward_fields(cfg)
    if cfg.objective == "crlft":
        if cfg.crlft_class_weights is None and cfg.crlft_weight_column is None:
            raise ConfigError("objective 'crlft' needs crlft_class_weights or crlft_weight_column")
        for cls, w in (cfg.crlft_class_weights or {}).items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"crlft_class_weights[{cls!r}] must be a finite number >= 0, got {w!r}")
        for cls, p in (cfg.crlft_class_prefixes or {}).items():
            if not isinstance(p, str):
                raise ConfigError(f"crlft_class_prefixes[{cls!r}] must be a string, got {p!r}")


def _check_reward_fields(cfg: TrainConfig) -> None:
    """Options that mean nothing for a reward model, and the reward model's option on another objective: errors,
    never silently ignored. (Fields left at their defaults cannot be told from unset ones and are not checked.)"""
    c = cfg.center_rewards_coefficient
    if c is not None and not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
        raise ConfigError(f"center_rewards_coefficient must be a finite number >= 0, got {c!r}")
    if cfg.objective not in SEQUENCE_SCORE_OBJECTIVES:
        if c is not None:
            raise ConfigError(f"center_rewards_coefficient applies to objective 'reward', not {cfg.objective!r}")
        return
    reason = "a reward model is trained without a reference model"
    if cfg.ref_model_name_or_path is not None:
        raise ConfigError(f"ref_model_name_or_path is set, but {reason}; remove it (objective 'reward')")
    if cfg.reference != "precomputed":
        raise ConfigError(f"reference={cfg.reference!r} is set, but {reason}; remove it (objective 'reward')")
    if cfg.max_prompt_length is not None:
        raise ConfigError("max_prompt_length does not apply to objective 'reward': the reward model scores the whole "
                          "sequence and pairs longer than max_length are dropped; remove it")
    if cfg.padding_free:
        raise ConfigError("padding_free is not supported for objective 'reward': the sequence classifier reads one "
                          "score per row; set padding_free: false")


def launch_problem(use_cpu: bool, world_size: int, deepspeed: bool, env: dict[str, str]) -> str | None:
    """Why this process's view of the launch contradicts the launcher's (``env``: its environment), or None.

    Both cases below train without an error otherwise, just not what was asked: every process alone on its own
    batch, or DDP where DeepSpeed was configured.
    """
    cpu_deepspeed = "set use_cpu: false and ddp_backend: gloo (configs/accelerate/cpu_deepspeed_zero3.yaml)"
    if deepspeed and use_cpu:
        return ("the launch asks for DeepSpeed, but use_cpu: true makes accelerate drop DeepSpeed and run plain DDP; "
                f"for DeepSpeed on CPU {cpu_deepspeed}")
    launched = int(env.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size != launched:
        # accelerate picks the DeepSpeed backend from the devices it finds: on CPU none, so each process is alone
        hint = f"; DeepSpeed on CPU: {cpu_deepspeed}" if deepspeed else ""
        return (f"the launcher started {launched} processes but the Trainer sees a world of {world_size}: each process "
                f"would train alone{hint}")
    return None


def check_launch(cfg: TrainConfig, env: dict[str, str] | None = None) -> None:
    """Raise ``ConfigError`` on a :func:`launch_problem`."""
    env = dict(os.environ) if env is None else env
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" or bool(cfg.deepspeed)
    problem = launch_problem(cfg.use_cpu, cfg.world_size, deepspeed, env)
    if problem:
        raise ConfigError(problem)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _accepts(hint, value) -> bool | None:
    """Whether a non-string YAML ``value`` fits the field type ``hint`` (None: this check cannot tell)."""
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return False  # strings are converted and checked by the parser itself
    origin = typing.get_origin(hint) or hint
    if origin in (list, dict):
        return isinstance(value, origin)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return None


def _yaml_type_problem(name: str, value: Any, hint) -> str | None:
    if isinstance(value, str):
        return None  # parsed by argparse like a command-line value, with its own error message
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    verdicts = [_accepts(t, value) for t in options]
    if any(v is None or v for v in verdicts):
        return None
    return f"{name} must be {' or '.join(_type_name(t) for t in options)}, got {type(value).__name__} {value!r}"


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``--config run.yaml`` then ``--key value`` overrides -> ``TrainConfig``.

    YAML values become the parser's defaults, so the command line wins; YAML keys that are not
    fields are an error (a typo must not be silently ignored), and so are values of the wrong type,
    options the parser does not know and settings ``TrainingArguments`` rejects: all as
    :class:`ConfigError` naming the file or the option.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainConfig, prog="mdpalign train")  # its own errors name the command, not argv[0]
    parser.add_argument("--config", default=None, help="YAML file of TrainConfig fields.")
    if known.config is not None:
        if not os.path.isfile(known.config):
            raise ConfigError(f"config file not found: {known.config}")
        with open(known.config, encoding="utf-8") as fh:
            try:
                values = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{known.config}: not valid YAML: {' '.join(str(err).split())}") from None
            except UnicodeDecodeError as err:
                raise ConfigError(f"{known.config}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{known.config}: expected a mapping of field: value at top level")
        names = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - names, key=str)
        if unknown:
            raise ConfigError(f"{known.config}: unknown keys {unknown}")
        hints = typing.get_type_hints(TrainConfig)
        for key, value in values.items():
            problem = _yaml_type_problem(key, value, hints[key]) if key in hints else None
            if problem:
                raise ConfigError(f"{known.config}: {problem}")
        parser.set_defaults(**values)
    _, unused = parser.parse_known_args(rest)
    if unused:
        raise ConfigError(f"unknown options {unused}; every TrainConfig field is an option "
                          "(mdpalign train --help)")
    outputs = parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)
    cfg = outputs[0]
    return cfg


# a Hugging Face hub id: "name" or "namespace/name" (letters, digits, '-', '_', '.')
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_RESUME_FLAGS = (True, False, "true", "True", "false", "False", "last", "")


def check_paths(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` for a path in ``cfg`` that cannot be what it names, before anything is loaded.

    A model path must be a local directory or a hub id (``org/name``; a hub id is only resolved when loaded); the
    dataset must exist; ``resume_from_checkpoint`` must be a checkpoint directory (or true / last).
    """
    for name in ("model_name_or_path", "ref_model_name_or_path"):
        value = getattr(cfg, name)
        if value is None or os.path.isdir(value):
            continue
        if os.path.exists(value):
            raise ConfigError(f"{name} {value!r} is a file; expected a model directory (config.json and weights) "
                              "or a hub id such as org/name")
        if not _HUB_ID.fullmatch(value) or ".." in value:
            raise ConfigError(f"{name} {value!r}: no such directory (and not a hub id such as org/name)")
    if cfg.dataset_path is not None and not os.path.exists(cfg.dataset_path):
        raise ConfigError(f"dataset_path {cfg.dataset_path!r}: no such file or directory")
    resume = cfg.resume_from_checkpoint
    if resume is not None and resume not in _RESUME_FLAGS and not os.path.isdir(resume):
        raise ConfigError(f"resume_from_checkpoint {resume!r}: no such checkpoint directory "
                          "(or set it to true / last for the latest checkpoint in output_dir)")
    # last, so that a missing dataset or checkpoint is named first; transformers' own message for a directory
    # without a config is a traceback that does not name the option
    for name in ("model_name_or_path", "ref_model_name_or_path"):
        value = getattr(cfg, name)
        if value is not None and os.path.isdir(value) and not any(
                os.path.isfile(os.path.join(value, f)) for f in ("config.json", "adapter_config.json")):
            raise ConfigError(f"{name} {value!r} has no config.json (nor adapter_config.json): not a model "
                              "directory")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Programmatic construction with the same checks (``TrainConfig(**values)`` also works)."""
    return TrainConfig(**values)


# ----------------------------------------------------------------------------- online RL


class FixedPointWarning(UserWarning):
    """An online-RL configuration whose fixed point is not the KL-regularised optimum ``pi_ref·exp(r/β)/Z``."""


_HARNESS = "tests/harness/test_harness_online.py::"


def resolve_objective_defaults(cfg: TrainConfig) -> None:
    """Fill the fields whose default depends on the objective (left ``None``): ``loss_type``, ``reference`` and
    ``num_generations``."""
    online = cfg.objective in ONLINE_OBJECTIVES
    if cfg.reference is None:
        cfg.reference = ("adapter_disabled" if cfg.use_peft else "model") if online else "precomputed"
    if online:
        generations, loss_type = ONLINE_DEFAULTS[cfg.objective]
        cfg.num_generations = generations if cfg.num_generations is None else cfg.num_generations
        cfg.loss_type = loss_type if cfg.loss_type is None else cfg.loss_type
    elif cfg.loss_type is None:
        cfg.loss_type = "sigmoid"


def kl_placement_of(cfg: TrainConfig) -> str:
    """The objectives' placement name (:data:`mdpalign.objectives.KL_PLACEMENTS`) of this configuration."""
    return "loss_is" if cfg.kl_placement == "loss" and cfg.use_bias_correction_kl else cfg.kl_placement


def fixed_point_problems(cfg: TrainConfig) -> list[str]:
    """Why this online configuration does not land on the KL-regularised optimum, each with its proof ([] if it
    does). The defaults (k1 in the reward, no std scaling, a constant token normaliser) have none."""
    out = []
    beta, est, place = cfg.beta, cfg.kl_estimator, kl_placement_of(cfg)
    long = cfg.max_completion_length > 1
    if beta > 0:
        if place == "reward" and est in ("k2", "k3"):
            test = ("test_k3_in_the_reward_collapses_with_a_linearly_growing_gap" if est == "k3"
                    else "test_k2_in_the_reward_collapses_onto_a_face")
            out.append(f"{est} in the reward has no fixed point: its gradient ascends KL(ref||pi), the policy "
                       f"collapses onto the best completions (trl PR#3240; proof {_HARNESS}{test}, "
                       f"mdpalign.proofs.kl_estimator_optimum); use k1 in the reward")
        if place == "loss" and est == "k1":
            out.append("k1 as a loss has expected gradient 0 (E_pi ∇log pi = 0): no regularisation, the policy tends "
                       f"to the argmax reward (proof {_HARNESS}test_k1_as_a_loss_tends_to_the_argmax)")
        if place == "loss" and est == "k3":
            out.append("k3 as a loss has the gradient of KL(ref||pi), not KL(pi||ref): it lands on "
                       f"beta·pi_ref/(lambda - r) (proof {_HARNESS}test_k3_as_a_loss_lands_on_the_reverse_kl_point, "
                       "mdpalign.proofs.kl_estimator_optimum); set use_bias_correction_kl: true or use k1 in the "
                       "reward")
        if place == "loss_is" and est == "k2":
            out.append("k2·rho as a loss has the gradient of E_pi[h²/2], not of the KL (proof "
                       f"{_HARNESS}test_k2_importance_corrected_is_the_second_moment_point_not_gibbs)")
        if place == "loss" and est == "k2" and cfg.num_iterations > 1:
            out.append("k2 as a loss has the KL's gradient on-policy only; num_iterations > 1 trains off-policy "
                       "(mdpalign/objectives/kl.py, table of gradients)")
        if place != "reward" and long:
            out.append("a KL loss is per token (local): on completions of more than one token it lands on the myopic "
                       "policy pi(a|s) ∝ pi_ref(a|s)·exp(Q_r(s,a)/beta), not the sequence-level optimum (Tang & Munos, "
                       f"arXiv 2506.09477; proof {_HARNESS}test_per_token_kl_loss_is_myopic_on_a_tree); k1 in the "
                       "reward (summed over the completion) reaches it")
    if cfg.objective == "grpo":
        if cfg.scale_rewards != "none":
            out.append(f"scale_rewards {cfg.scale_rewards!r} divides by a reward std: the fixed point is "
                       "pi_ref/(1 - P_G/beta) (Vojnovic & Yun, arXiv 2502.18548; proof "
                       f"{_HARNESS}test_grpo_fixed_point_is_vojnovic_yun, mdpalign.proofs.grpo_optimum), not the "
                       "KL-regularised optimum; scale_rewards: none keeps it")
        elif beta > 0 and place != "reward":
            out.append("the group mean contains the sample, which scales the reward's gradient by (G-1)/G but not a "
                       "KL loss's: the fixed point is the optimum at temperature beta·G/(G-1) (proof "
                       f"{_HARNESS}test_dr_grpo_is_gibbs_at_temperature_beta_g_over_g_minus_1); with the KL in "
                       "the reward both are scaled alike")
        if cfg.loss_type == "grpo" and long:
            out.append("loss_type grpo divides each completion's loss by its length: short completions with positive "
                       "and long ones with negative advantage weigh more (Dr. GRPO, arXiv 2503.20783 §3; trl#2995); "
                       "dr_grpo or seq_sum keep the policy gradient")
    return out


def validate_online(cfg: TrainConfig) -> None:
    """Check the online-RL fields (objective in :data:`ONLINE_OBJECTIVES`); one :class:`FixedPointWarning` listing
    every reason the configuration does not land on the KL-regularised optimum."""
    if not (math.isfinite(cfg.beta) and cfg.beta >= 0):
        raise ConfigError(f"beta must be a finite number >= 0 for objective {cfg.objective!r}, got {cfg.beta}")
    _one_of("kl_estimator", cfg.kl_estimator, KL_ESTIMATORS)
    _one_of("kl_placement", cfg.kl_placement, KL_PLACEMENTS_CONFIG)
    _one_of("scale_rewards", cfg.scale_rewards, SCALE_REWARDS)
    if cfg.use_bias_correction_kl and cfg.kl_placement != "loss":
        raise ConfigError("use_bias_correction_kl applies to kl_placement: loss (a KL in the reward is a constant)")
    if cfg.objective == "grpo":
        _one_of("loss_type", cfg.loss_type, TOKEN_LOSS_TYPES)
    else:
        if cfg.loss_type != "seq_sum":
            raise ConfigError(f"loss_type {cfg.loss_type!r} applies to objective grpo; {cfg.objective} uses TRL "
                              "RLOOTrainer's sequence-level ratio averaged over completions (loss_type seq_sum)")
        if cfg.scale_rewards != "none":
            raise ConfigError(f"scale_rewards applies to objective grpo, not {cfg.objective}")
    g = cfg.num_generations
    least = 2 if cfg.objective in ("grpo", "rloo") else 1
    if isinstance(g, bool) or not isinstance(g, int) or g < least:
        raise ConfigError(f"num_generations must be an integer >= {least} for objective {cfg.objective!r} (a group "
                          f"baseline needs other samples of the prompt), got {g!r}")
    if cfg.per_device_train_batch_size % g:
        raise ConfigError(f"per_device_train_batch_size ({cfg.per_device_train_batch_size}) counts completions and "
                          f"must be a multiple of num_generations ({g}): each process holds whole groups")
    if cfg.max_completion_length < 1:
        raise ConfigError(f"max_completion_length must be >= 1, got {cfg.max_completion_length}")
    if cfg.max_length is not None and cfg.max_length <= cfg.max_completion_length:
        raise ConfigError(f"max_length ({cfg.max_length}) must exceed max_completion_length "
                          f"({cfg.max_completion_length}): it bounds prompt + completion")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if not 0 <= cfg.epsilon < 1:
        raise ConfigError(f"epsilon must be in [0, 1), got {cfg.epsilon}")
    if cfg.epsilon_high is not None and not (math.isfinite(cfg.epsilon_high) and cfg.epsilon_high >= 0):
        raise ConfigError(f"epsilon_high must be a finite number >= 0, got {cfg.epsilon_high}")
    if cfg.num_iterations < 1:
        raise ConfigError(f"num_iterations must be >= 1, got {cfg.num_iterations}")
    if cfg.reward_weights is not None:
        n = len(cfg.reward_funcs or [])
        if len(cfg.reward_weights) != n:
            raise ConfigError(f"reward_weights has {len(cfg.reward_weights)} entries for {n} reward_funcs")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in cfg.reward_weights):
            raise ConfigError(f"reward_weights must be finite numbers, got {cfg.reward_weights}")
    if cfg.reference == "precomputed":
        raise ConfigError("reference: precomputed cannot score completions generated during training; use model "
                          "(a frozen copy) or adapter_disabled (use_peft)")
    if cfg.reference == "adapter_disabled" and cfg.beta > 0 and not cfg.use_peft:
        raise ConfigError("reference='adapter_disabled' needs use_peft=true (the reference is the base model)")
    if str(getattr(cfg.eval_strategy, "value", cfg.eval_strategy)) != "no":
        raise ConfigError(f"evaluation is not implemented for objective {cfg.objective!r}; set eval_strategy: no")
    if cfg.use_vllm:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm: true needs vllm, which is not installed (pip install vllm); or set "
                              "use_vllm: false to generate with transformers")
        raise ConfigError("use_vllm: generation with vLLM is not implemented yet; set use_vllm: false (generation "
                          "with transformers generate)")
    problems = fixed_point_problems(cfg)
    if problems:
        warnings.warn(FixedPointWarning(f"objective {cfg.objective!r} with this configuration does not land on the "
                                        "KL-regularised optimum pi_ref·exp(r/beta)/Z: " + "; ".join(problems)),
                      stacklevel=3)
