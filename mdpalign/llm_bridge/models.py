"""Loading the tokenizer and the causal LM a run names, LoRA on top, and what a wrapped model is underneath."""
from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mdpalign.llm_bridge.config import (
    SEQUENCE_SCORE_OBJECTIVES,
    ConfigError,
    TrainConfig,
)


def load_tokenizer(path: str):
    """``AutoTokenizer.from_pretrained``; a tokenizer without a pad token pads with its eos token."""
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except ValueError as err:  # e.g. a model directory without tokenizer files: transformers' message names no path
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path!r}: cannot load a tokenizer from it ({first.rstrip(': ')}); a model directory "
                          "needs its tokenizer files (tokenizer.json / tokenizer_config.json)") from err
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(f"tokenizer of {path} has neither a pad nor an eos token; set one")
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: TrainConfig):
    """``AutoModelForCausalLM.from_pretrained`` with the config's dtype and attention implementation."""
    kwargs: dict[str, Any] = {}
    dtype = cfg.torch_dtype
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def apply_peft(model, cfg: TrainConfig):
    """``model`` with a LoRA adapter from the config's ``lora_*`` fields (``all-linear`` unless modules are named).

    A reward model's adapter is peft's ``SEQ_CLS`` task: peft then trains the new score head whole (it adds
    ``score`` / ``classifier`` to ``modules_to_save``, saved with the adapter) and keeps it out of ``all-linear``."""
    task_type = "SEQ_CLS" if cfg.objective in SEQUENCE_SCORE_OBJECTIVES else "CAUSAL_LM"
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or "all-linear",
        task_type=task_type,
    )
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


def unwrap_model(model):
    """The module inside a DDP wrapper or a DeepSpeed engine (``.module``); any other model as it is."""
    return model.module if hasattr(model, "module") else model


def is_zero3(model) -> bool:
    """True when DeepSpeed ZeRO-3 partitioned ``model``'s weights (each rank holds a shard; calls are collectives)."""
    return any(hasattr(p, "ds_id") for p in unwrap_model(model).parameters())
