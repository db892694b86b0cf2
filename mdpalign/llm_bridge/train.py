"""``train(config) -> TrainResult`` and ``python -m mdpalign.llm_bridge.train --config run.yaml [--key value ...]``.

Works unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed: see ``configs/accelerate/``):
the config is a ``TrainingArguments``, so the launcher's environment decides the distribution.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto"}


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


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer of {path} has neither a pad nor an eos token; set one")
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg):
    """``AutoModelForCausalLM.from_pretrained`` with the config's dtype and attention implementation."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    dtype = cfg.torch_dtype
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _apply_peft(model, cfg):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


def _resume_arg(cfg):
    value = cfg.resume_from_checkpoint
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
        if last is None:
            logger.warning("resume_from_checkpoint=%r but no checkpoint in %s: starting fresh", value, cfg.output_dir)
        return last
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint: no such checkpoint directory {value}")
    return value


def _fingerprint(model) -> list[float]:
    """Cheap identity of in-memory weights: per-tensor float64 sums (for models without a local path)."""
    import torch

    with torch.no_grad():
        return [float(p.double().sum()) for p in model.parameters()]


def train(config, *, model=None, tokenizer=None, callbacks=None) -> TrainResult:
    """Load data and model from ``config`` (a :class:`TrainConfig` or a dict of its fields), train, save.

    ``model``/``tokenizer`` may be passed already built (then ``model_name_or_path`` is only used to
    name the reference in the cache key).
    """
    from mdpalign.llm_bridge.config import ConfigError, TrainConfig, check_launch
    from mdpalign.llm_bridge.data import TokenizeSettings, load_records, tokenize_records
    from mdpalign.llm_bridge.trainer import MdpalignTrainer, is_zero3, model_identity, reference_cache_key

    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    check_launch(cfg)
    if model is None and cfg.model_name_or_path is None:
        raise ConfigError("model_name_or_path is not set")
    if cfg.dataset_path is None:
        raise ConfigError("dataset_path is not set")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.model_name_or_path)
    settings = TokenizeSettings(
        objective=cfg.objective,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        class_column=cfg.crlft_class_column,
        weight_column=cfg.crlft_weight_column,
        class_weights=cfg.crlft_class_weights,
        class_prefixes=cfg.crlft_class_prefixes,
    )
    dataset = tokenize_records(load_records(cfg.dataset_path, cfg.dataset_split), tok, settings)

    model_given = model is not None
    if model is None:
        model = load_model(cfg.model_name_or_path, cfg)
    if cfg.use_peft and not hasattr(model, "disable_adapter"):
        from transformers import set_seed

        # the LoRA A matrices are random: `seed` must fix them, the same in every process and every run
        # (Trainer seeds only once the model exists)
        set_seed(cfg.seed)
        model = _apply_peft(model, cfg)

    needs_ref = cfg.objective == "dpo"
    ref_path = cfg.ref_model_name_or_path
    ref_model = None
    # ZeRO-3 (zero.Init) loads the policy as shards that only its engine, built when training starts, can run: the
    # reference at initialisation is then computed from a second, equally sharded copy of the same checkpoint
    init_copy = needs_ref and cfg.reference == "precomputed" and not ref_path and is_zero3(model)
    if init_copy and (cfg.model_name_or_path is None or model_given):
        raise ConfigError("under DeepSpeed ZeRO-3 the precomputed reference is computed from a copy loaded from a "
                          "checkpoint; an in-memory model has none: set ref_model_name_or_path (or reference: model)")
    if needs_ref and (cfg.reference == "model" or (cfg.reference == "precomputed" and (ref_path or init_copy))):
        ref_model = load_model(ref_path or cfg.model_name_or_path, cfg)

    trainer = MdpalignTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tok,
                              ref_model=ref_model if cfg.reference == "model" else None, callbacks=callbacks)
    cache = None
    resume = _resume_arg(cfg)
    if needs_ref and cfg.reference == "precomputed":
        # computed before trainer.train() loads any checkpoint: without ref_model_name_or_path the reference is
        # the policy at initialisation (adapter disabled under PEFT), also when resuming
        if ref_path:
            ident = model_identity(ref_path, ref_model)
        else:  # the policy at init (also when init_copy loaded it again: the same numbers, so the same key)
            ident = model_identity(cfg.model_name_or_path or "<in-memory model>", model)
            ident["policy_at_init"] = True
            if cfg.model_name_or_path is None or not os.path.isdir(cfg.model_name_or_path):
                ident["weights"] = _fingerprint(model)
        ident["peft"] = bool(cfg.use_peft)
        cache = trainer.precompute_reference([dataset], ref_model, reference_cache_key(ident, [dataset], cfg))
        del ref_model

    out = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, cfg.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(cfg.output_dir)
        with open(os.path.join(cfg.output_dir, "train_result.json"), "w", encoding="utf-8") as fh:
            json.dump({"metrics": out.metrics, "log_history": trainer.state.log_history,
                       "dropped": dataset.dropped, "global_step": trainer.state.global_step,
                       "world_size": cfg.world_size}, fh, indent=1)
    return TrainResult(metrics=dict(out.metrics), output_dir=cfg.output_dir, log_history=list(trainer.state.log_history),
                       dropped=list(dataset.dropped), reference_cache=cache, global_step=trainer.state.global_step)


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
    import torch.distributed as dist

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
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe must not turn success into a traceback
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """``python -m mdpalign.llm_bridge.train ...``: exactly ``mdpalign train ...`` (a mistake in the config, its
    paths or the data is one line and exit status 2; see ``mdpalign.cli``)."""
    from mdpalign.cli import main as mdpalign_main

    return mdpalign_main(["train"] + (sys.argv[1:] if argv is None else list(argv)))


def run_command(argv: list[str]) -> int:
    """The body of ``mdpalign train``: parse, check the paths, train. In a multi-process launch it ends the
    process itself after a successful run (``exit_without_finalization``); with one process it returns 0."""
    from mdpalign.llm_bridge.config import check_paths, parse_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(argv)
    check_paths(cfg)  # before the tokenizer, the data or the model is loaded
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not one per process
        print(json.dumps({"output_dir": result.output_dir, "global_step": result.global_step, **result.metrics}))
    if close_distributed():
        exit_without_finalization(0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


class _CallableModule(type(sys)):
    """``mdpalign.llm_bridge.train`` names both this module and its ``train`` function; calling either trains."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
