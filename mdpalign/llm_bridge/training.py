"""``train(config) -> TrainResult``: load the data and the model a config names, train, save.

Works unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed: see ``configs/accelerate/``): the config is a
``TrainingArguments``, so the launcher's environment decides the distribution. The command line
(``mdpalign train``, ``python -m mdpalign.llm_bridge``) is :mod:`mdpalign.cli.llm`.
"""
from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from mdpalign.llm_bridge.config import (
    ONLINE_OBJECTIVES,
    SEQUENCE_SCORE_OBJECTIVES,
    ConfigError,
    TrainConfig,
    check_launch,
)
from mdpalign.llm_bridge.data import TokenizedDataset, TokenizeSettings, load_records, tokenize_records
from mdpalign.llm_bridge.models import apply_peft, load_model, load_tokenizer
from mdpalign.llm_bridge.reference import plan_reference, reference_cache_key, reference_identity
from mdpalign.llm_bridge.reward_data import tokenize_reward_records
from mdpalign.llm_bridge.reward_model import load_reward_model, prepare_reward_model
from mdpalign.llm_bridge.trainer import MdpalignTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """metrics: Trainer's final train metrics; log_history: every logged dict (loss, rewards/..., per step);
    dropped: indices of examples dropped by truncation; reference_cache: path of the reference log-probs cache."""

    metrics: dict[str, Any]
    output_dir: str
    log_history: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    reference_cache: str | None = None
    global_step: int = 0


def train(config, *, model=None, tokenizer=None, callbacks=None) -> TrainResult:
    """Load data and model from ``config`` (a :class:`TrainConfig` or a dict of its fields), train, save.

    ``model``/``tokenizer`` may be passed already built (then ``model_name_or_path`` is only used to
    name the reference in the cache key).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    check_launch(cfg)
    if cfg.objective in ONLINE_OBJECTIVES:
        return train_online(cfg, model=model, tokenizer=tokenizer, callbacks=callbacks)
    if model is None and cfg.model_name_or_path is None:
        raise ConfigError("model_name_or_path is not set")
    if cfg.dataset_path is None:
        raise ConfigError("dataset_path is not set")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.model_name_or_path)
    dataset = _tokenized_dataset(cfg, tok)
    model_given = model is not None
    model = _policy(cfg, model, tok)

    plan = plan_reference(cfg, model, model_given=model_given)
    ref_model = load_model(plan.checkpoint, cfg) if plan.load else None
    trainer = MdpalignTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tok,
                              ref_model=ref_model if plan.live else None, callbacks=callbacks)
    cache = None
    resume = _resume_arg(cfg)
    if plan.precompute:
        # computed before trainer.train() loads any checkpoint: without ref_model_name_or_path the reference is
        # the policy at initialisation (adapter disabled under PEFT), also when resuming
        key = reference_cache_key(reference_identity(cfg, model, ref_model), [dataset], cfg)
        cache = trainer.precompute_reference([dataset], ref_model, key)
        del ref_model

    out = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, cfg.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(cfg.output_dir)
        _write_train_result(trainer, out.metrics, dataset, cfg)
    return TrainResult(metrics=dict(out.metrics), output_dir=cfg.output_dir,
                       log_history=list(trainer.state.log_history), dropped=list(dataset.dropped),
                       reference_cache=cache, global_step=trainer.state.global_step)


def train_online(cfg: TrainConfig, *, model=None, tokenizer=None, callbacks=None,
                 reward_funcs=None) -> TrainResult:
    """:func:`train` for the online objectives (grpo, rloo, reinforce, remax): prompts, reward functions (resolved
    before the model is loaded, so a bad one fails fast), the policy, its reference (a frozen copy when
    ``reference: model`` and β > 0; none for ``adapter_disabled``), :class:`~mdpalign.llm_bridge.online_trainer.
    OnlineTrainer`. ``reward_funcs`` (callables) replaces ``cfg.reward_funcs``."""
    from mdpalign.llm_bridge.online import load_reward_funcs, tokenize_prompts
    from mdpalign.llm_bridge.online_trainer import OnlineTrainer

    if model is None and cfg.model_name_or_path is None:
        raise ConfigError("model_name_or_path is not set")
    if cfg.dataset_path is None:
        raise ConfigError("dataset_path is not set")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.model_name_or_path)
    dataset = tokenize_prompts(load_records(cfg.dataset_path, cfg.dataset_split), tok, cfg.max_prompt_length,
                               cfg.max_length, cfg.max_completion_length)
    funcs = load_reward_funcs(cfg.reward_funcs if reward_funcs is None else reward_funcs, device=cfg.device)
    model_given = model is not None
    ref_model = None
    if cfg.beta > 0 and cfg.reference == "model":
        if cfg.ref_model_name_or_path or not model_given:
            ref_model = load_model(cfg.ref_model_name_or_path or cfg.model_name_or_path, cfg)
        else:
            ref_model = copy.deepcopy(model)  # the in-memory policy before training
    model = _policy(cfg, model, tok)
    trainer = OnlineTrainer(model, cfg, dataset, processing_class=tok, reward_funcs=funcs, ref_model=ref_model,
                            callbacks=callbacks)
    out = trainer.train(resume_from_checkpoint=_resume_arg(cfg))
    save_final_model(trainer, cfg.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(cfg.output_dir)
        _write_train_result(trainer, out.metrics, dataset, cfg)
    return TrainResult(metrics=dict(out.metrics), output_dir=cfg.output_dir,
                       log_history=list(trainer.state.log_history), global_step=trainer.state.global_step)


def _tokenized_dataset(cfg: TrainConfig, tok) -> TokenizedDataset:
    if cfg.objective in SEQUENCE_SCORE_OBJECTIVES:
        return tokenize_reward_records(load_records(cfg.dataset_path, cfg.dataset_split), tok, cfg.max_length)
    settings = TokenizeSettings(
        objective=cfg.objective,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        class_column=cfg.crlft_class_column,
        weight_column=cfg.crlft_weight_column,
        class_weights=cfg.crlft_class_weights,
        class_prefixes=cfg.crlft_class_prefixes,
    )
    return tokenize_records(load_records(cfg.dataset_path, cfg.dataset_split), tok, settings)


def _policy(cfg: TrainConfig, model, tok):
    """The model to train: ``model`` or the config's checkpoint (a reward model: a sequence classifier built on it),
    with a LoRA adapter when ``use_peft``."""
    if cfg.objective in SEQUENCE_SCORE_OBJECTIVES:
        model = load_reward_model(cfg.model_name_or_path, cfg, tok) if model is None else \
            prepare_reward_model(model, tok)
    elif model is None:
        model = load_model(cfg.model_name_or_path, cfg)
    if cfg.use_peft and not hasattr(model, "disable_adapter"):
        # the LoRA A matrices are random: `seed` must fix them, the same in every process and every run
        # (Trainer seeds only once the model exists)
        set_seed(cfg.seed)
        model = apply_peft(model, cfg)
    return model


def _resume_arg(cfg: TrainConfig):
    value = cfg.resume_from_checkpoint
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "last"):
        last = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
        if last is None:
            logger.warning("resume_from_checkpoint=%r but no checkpoint in %s: starting fresh", value, cfg.output_dir)
        return last
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint: no such checkpoint directory {value}")
    return value


def _write_train_result(trainer: MdpalignTrainer, metrics: dict[str, Any], dataset: TokenizedDataset,
                        cfg: TrainConfig) -> None:
    with open(os.path.join(cfg.output_dir, "train_result.json"), "w", encoding="utf-8") as fh:
        json.dump({"metrics": metrics, "log_history": trainer.state.log_history,
                   "dropped": dataset.dropped, "global_step": trainer.state.global_step,
                   "world_size": cfg.world_size}, fh, indent=1)


def save_final_model(trainer, output_dir: str) -> None:
    """``trainer.save_model``, except that FSDP's final weights are always written whole.

    transformers writes no weights at all from ``save_model`` when FSDP's ``state_dict_type`` is
    ``SHARDED_STATE_DICT`` — accelerate's default for FSDP2 — so the trained model would exist only inside
    the last intermediate checkpoint, if any. For the final save the state dict type is switched to
    ``FULL_STATE_DICT`` (gathered on the main process, loadable by ``from_pretrained``) and switched back.
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not trainer.is_fsdp_enabled or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        trainer.save_model(output_dir)
        return
    previous = plugin.state_dict_type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(output_dir)
    finally:
        plugin.set_state_dict_type(previous)


def close_distributed() -> bool:
    """Wait for every process, then end the process group (for scripts that end after training; ``train`` leaves
    the group to its caller). Returns whether there was a group to close.

    Ending the group is not enough to make the exit safe: see ``exit_without_finalization``."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False


def exit_without_finalization(code: int = 0) -> None:
    """End a process that ran in a process group: run the ``atexit`` handlers (trackers, loggers), flush the
    streams, then ``os._exit(code)``, which skips interpreter finalization and C++ static destructors.

    Why: a two-process run on gloo that succeeded, closed its group and returned, now and then still dies in
    interpreter shutdown with "terminate called without an active exception" (SIGABRT), and ``accelerate launch``
    then reports the whole run as failed. Seen here about once in 30 DeepSpeed runs and once in a CI run of the
    FSDP2 tests, after the final weights were written. A C++ thread (gloo's) that still holds Python-owned
    tensors takes the GIL after finalization began, CPython ends that thread with ``pthread_exit``, and the
    forced unwind through a ``noexcept`` frame terminates the process: pytorch/pytorch#179291 (an ``atexit``
    destroy, abandoned), #190489. Finalization has nothing left to do for a finished run, so it is skipped."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe must not turn success into a traceback
            pass
    os._exit(code)
