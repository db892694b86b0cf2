"""The reference model of the objectives that need one (:data:`~mdpalign.llm_bridge.config.NEEDS_REFERENCE`: DPO).

Reference log-probs (``reference``): ``precomputed`` (one pass before training, cached on disk, keyed by a hash of
the reference model, the tokenised data and the settings), ``model`` (a frozen reference model run live) or
``adapter_disabled`` (the PEFT base model, adapter switched off). This module decides which model that is
(:func:`plan_reference`), prepares it for the run's distribution (DeepSpeed: an inference engine,
:func:`deepspeed_reference_config`; FSDP: sharded like the policy), computes the precomputed table
(:func:`precompute_reference`) and names it on disk (:func:`reference_cache_key`, :func:`model_identity`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from mdpalign.llm_bridge.config import NEEDS_REFERENCE, ConfigError, TrainConfig
from mdpalign.llm_bridge.data import TokenizedDataset
from mdpalign.llm_bridge.logps import batch_token_logps, install_logps_forward
from mdpalign.llm_bridge.models import is_zero3, unwrap_model
from mdpalign.objectives import sequence_logps

if TYPE_CHECKING:  # pragma: no cover - the trainer imports this module
    from mdpalign.llm_bridge.trainer import MdpalignTrainer

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- which reference


@dataclass(frozen=True)
class ReferencePlan:
    """How a run gets its reference log-probs.

    ``load``: a reference model is loaded from ``checkpoint``; ``live``: that model runs at every step
    (``reference: model``); ``precompute``: every example's reference log-probs are computed once before training
    (``reference: precomputed``), from the loaded model or, when none is loaded, from the policy at initialisation."""

    load: bool = False
    checkpoint: str | None = None
    live: bool = False
    precompute: bool = False


def plan_reference(cfg: TrainConfig, model, *, model_given: bool) -> ReferencePlan:
    """The reference of a run whose policy is ``model`` (``model_given``: passed in memory, not loaded by the run).

    Without ``ref_model_name_or_path`` the reference is the policy at initialisation. ZeRO-3 (zero.Init) loads the
    policy as shards that only its engine, built when training starts, can run: a precomputed reference is then
    computed from a second, equally sharded copy of the same checkpoint, which an in-memory model does not have."""
    if cfg.objective not in NEEDS_REFERENCE:
        return ReferencePlan()
    ref_path = cfg.ref_model_name_or_path
    precompute = cfg.reference == "precomputed"
    init_copy = precompute and not ref_path and is_zero3(model)
    if init_copy and (cfg.model_name_or_path is None or model_given):
        raise ConfigError("under DeepSpeed ZeRO-3 the precomputed reference is computed from a copy loaded from a "
                          "checkpoint; an in-memory model has none: set ref_model_name_or_path (or reference: model)")
    load = cfg.reference == "model" or (precompute and bool(ref_path or init_copy))
    return ReferencePlan(load=load, checkpoint=(ref_path or cfg.model_name_or_path) if load else None,
                         live=cfg.reference == "model", precompute=precompute)


def prepare_reference_model(ref_model, trainer: MdpalignTrainer):
    """A frozen reference with the chunked log-prob forward, placed as the run's distribution needs: a DeepSpeed
    inference engine (:func:`prepare_deepspeed_reference`), sharded like the policy under FSDP, else on the device."""
    install_logps_forward(ref_model)
    ref_model.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed_reference(ref_model, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.prepare_model(ref_model, evaluation_mode=True)
    return ref_model.to(trainer.args.device)


@torch.no_grad()
def reference_sequence_logps(policy, model_for_ref, inputs, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (chosen, rejected) of a preference batch under the reference, float64.

    ``model_for_ref`` None: ``policy`` with its PEFT adapter disabled (``reference: adapter_disabled``)."""
    if model_for_ref is None:
        with unwrap_model(policy).disable_adapter():
            tl, m, _ = batch_token_logps(policy, inputs, chunk_size)
    else:
        tl, m, _ = batch_token_logps(model_for_ref, inputs, chunk_size)
    seq = sequence_logps(tl.double(), m, check_logps=False)  # a nan reaches the DPO loss, checked per step
    b = seq.shape[0] // 2
    return seq[:b], seq[b:]


# ----------------------------------------------------------------------------- DeepSpeed

# DeepSpeed config entries that transformers fills from the model's hidden size when they read "auto"
_HIDDEN_SIZE_AUTO = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def deepspeed_reference_config(train_config: dict, hidden_size: int | None) -> dict:
    """DeepSpeed config for the frozen reference model, derived from the policy's (as TRL's ``prepare_deepspeed``).

    ZeRO-3 stays ZeRO-3: the reference is sharded like the policy, its weights gathered layer by layer by the
    engine's hooks. Any other stage becomes 0, one full replica per process as under DDP (ZeRO-1/2 only shard
    optimizer state and gradients, which a frozen model has none of). The optimizer, scheduler and optimizer offload
    go (no optimizer). The precision blocks stay, so the reference runs in the policy's dtype. ``auto`` sizes that
    transformers fills from the model only when training starts are filled the same way here.
    """
    cfg = copy.deepcopy(train_config)
    for key in ("optimizer", "scheduler"):
        cfg.pop(key, None)
    zero = cfg.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    if zero.get("stage", 0) != 3:
        zero["stage"] = 0
    for key, size in _HIDDEN_SIZE_AUTO.items():
        if zero.get(key) == "auto":
            if hidden_size is None:
                raise ValueError(f"DeepSpeed config has zero_optimization.{key}: auto, but the reference model's "
                                 "config has no hidden_size to fill it from; set a number")
            zero[key] = size(hidden_size)
    left = sorted(_auto_keys(cfg))
    if left:
        raise ValueError(f"DeepSpeed config entries still 'auto' when the reference model is prepared: {left}; "
                         "set them to numbers")
    return cfg


def _auto_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def _hidden_size(model) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "hidden_sizes", None):
        return max(text.hidden_sizes)
    return getattr(text, "hidden_size", None)


def prepare_deepspeed_reference(model, accelerator):
    """The frozen reference wrapped in a DeepSpeed inference engine (no optimizer) with
    :func:`deepspeed_reference_config`. ``accelerator.prepare_model(..., evaluation_mode=True)`` does not do this under
    DeepSpeed: it returns the bare model, whose ZeRO-3 weights (partitioned at load by ``zero.Init``) are then empty
    tensors that no hook gathers ("'weight' must be 2-D" in the embedding)."""
    import deepspeed  # not a dependency of mdpalign: only a DeepSpeed launch gets here

    config = deepspeed_reference_config(accelerator.state.deepspeed_plugin.deepspeed_config, _hidden_size(model))
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


# ----------------------------------------------------------------------------- precomputed reference


def precompute_reference(trainer: MdpalignTrainer, datasets: list[TokenizedDataset], model_for_ref,
                         cache_key: str | None) -> str | None:
    """Fill ``ref_chosen_logps``/``ref_rejected_logps`` of every example, from the disk cache when the key matches;
    returns the cache file's path (None without a key: computed, not cached).

    The main process computes (batch by batch, no grad) and writes ``<ref_cache_dir>/<key>.json``; the others wait
    and read it, so every process trains against the same numbers. Under DeepSpeed ZeRO-3 every forward is a
    collective (each rank holds a shard of the weights), so all processes compute the same table in step instead,
    through a DeepSpeed inference engine around ``model_for_ref`` (which must then be a separate copy: the policy
    has no engine before training starts). ``model_for_ref`` None: the policy itself before training.
    """
    path = reference_cache_path(trainer.args, cache_key)
    sharded = is_zero3(trainer.model) or (model_for_ref is not None and is_zero3(model_for_ref))
    if sharded:
        if model_for_ref is None:
            raise ValueError("under DeepSpeed ZeRO-3 the precomputed reference needs its own model (the policy is "
                             "only partitioned shards before training); pass model_for_ref")
        table = _shared_reference_table(trainer, datasets, model_for_ref, path)
    else:
        table = _main_reference_table(trainer, datasets, model_for_ref, path)
    for ds in datasets:
        for e in ds.examples:
            if e["index"] not in table:
                raise KeyError(f"reference cache {path} has no entry for example {e['index']}")
            e["ref_chosen_logps"], e["ref_rejected_logps"] = table[e["index"]]
    return path


def _main_reference_table(trainer, datasets, model_for_ref, path: str | None) -> dict[int, list[float]]:
    """The main process loads or computes and writes; the others wait for it, then read the file."""
    with trainer.accelerator.main_process_first():
        if path and os.path.isfile(path):
            return read_reference_cache(path)
        if trainer.accelerator.is_main_process or not path:
            table = _compute_reference_table(trainer, datasets, model_for_ref)
            if path:
                write_reference_cache(path, table)
            return table
        raise FileNotFoundError(  # pragma: no cover - the others get here only after the main process wrote it
            f"reference cache {path} missing after the main process computed it")


def _shared_reference_table(trainer, datasets, model_for_ref, path: str | None) -> dict[int, list[float]]:
    """Every process computes the same batches in step (ZeRO-3 forwards are collectives); the main one writes."""
    # the main process decides, so no rank computes while another reads the file (that would hang the collectives)
    cached = broadcast_object_list([bool(path and os.path.isfile(path))])[0]
    if cached:
        return read_reference_cache(path)
    engine = prepare_deepspeed_reference(model_for_ref, trainer.accelerator)
    table = _compute_reference_table(trainer, datasets, engine)
    if path and trainer.accelerator.is_main_process:
        write_reference_cache(path, table)
    trainer.accelerator.wait_for_everyone()
    return table


def _compute_reference_table(trainer, datasets, model_for_ref) -> dict[int, list[float]]:
    """model_for_ref None: the policy itself before training (adapter disabled for a PEFT model)."""
    args = trainer.args
    device = args.device
    model = model_for_ref if model_for_ref is not None else trainer.model
    install_logps_forward(unwrap_model(model))
    if not is_zero3(model):  # a ZeRO-3 engine placed its shards itself
        model = model.to(device)
    peft_base = model_for_ref is None and hasattr(unwrap_model(trainer.model), "disable_adapter")
    was_training = model.training
    model.eval()
    table: dict[int, list[float]] = {}
    bs = args.per_device_eval_batch_size
    # one pass over the whole dataset before step 1: minutes on real data, so it shows progress
    bar = tqdm(total=sum(-(-len(ds) // bs) for ds in datasets), desc="reference log-probs", unit="batch",
               disable=args.disable_tqdm or not trainer.accelerator.is_local_main_process)
    try:
        for ds in datasets:
            for start in range(0, len(ds), bs):
                batch = trainer.data_collator(ds.examples[start : start + bs])
                batch = {k: v.to(device) for k, v in batch.items()}
                c, r = reference_sequence_logps(trainer.model, None if peft_base else model, batch,
                                                args.logps_chunk_size)
                for i, ci, ri in zip(batch["index"].tolist(), c.tolist(), r.tolist(), strict=True):
                    table[i] = [ci, ri]
                bar.update()
    finally:
        bar.close()
        model.train(was_training)
    return table


# ----------------------------------------------------------------------------- the cache on disk


def reference_cache_path(args: TrainConfig, cache_key: str | None) -> str | None:
    """``<ref_cache_dir>/<key>.json`` (default ``ref_cache_dir``: ``output_dir/ref_cache``); None without a key."""
    cache_dir = args.ref_cache_dir or os.path.join(args.output_dir, "ref_cache")
    return os.path.join(cache_dir, f"{cache_key}.json") if cache_key else None


def read_reference_cache(path: str) -> dict[int, list[float]]:
    with open(path, encoding="utf-8") as fh:
        table = {int(k): v for k, v in json.load(fh).items()}
    logger.info("reference log-probs loaded from cache %s", path)
    return table


def write_reference_cache(path: str, table: dict[int, list[float]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # atomic: a concurrent reader never sees half a file
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({str(k): v for k, v in table.items()}, fh)
    os.replace(tmp, path)


def reference_cache_key(reference_id: dict[str, Any], datasets: list[TokenizedDataset], cfg: TrainConfig) -> str:
    """sha256 of (reference model identity, tokenised examples, settings that change the numbers)."""
    h = hashlib.sha256()
    h.update(json.dumps(reference_id, sort_keys=True, default=str).encode())
    settings = {"torch_dtype": cfg.torch_dtype, "attn_implementation": cfg.attn_implementation,
                "padding_free": cfg.padding_free, "bf16": cfg.bf16, "fp16": cfg.fp16, "reference": cfg.reference}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for ds in datasets:
        for e in ds.examples:
            h.update(json.dumps([e["index"], e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]]).encode())
    return h.hexdigest()[:32]


def reference_identity(cfg: TrainConfig, policy, ref_model) -> dict[str, Any]:
    """What identifies the reference of a precomputed run, for :func:`reference_cache_key`: the loaded reference
    (``ref_model_name_or_path``) or the policy at initialisation (also when a ZeRO-3 run loaded it again: the same
    numbers, so the same key), weights fingerprinted when they do not come from a local directory."""
    if cfg.ref_model_name_or_path:
        ident = model_identity(cfg.ref_model_name_or_path, ref_model)
    else:
        ident = model_identity(cfg.model_name_or_path or "<in-memory model>", policy)
        ident["policy_at_init"] = True
        if cfg.model_name_or_path is None or not os.path.isdir(cfg.model_name_or_path):
            ident["weights"] = fingerprint(policy)
    ident["peft"] = bool(cfg.use_peft)
    return ident


def model_identity(path_or_model, model=None) -> dict[str, Any]:
    """What identifies reference weights: the path, its config, and size+mtime of each weight file when local."""
    ident: dict[str, Any] = {"path": str(path_or_model)}
    if model is not None:
        ident["config"] = model.config.to_dict()
    if isinstance(path_or_model, str) and os.path.isdir(path_or_model):
        files = sorted(f for f in os.listdir(path_or_model) if f.endswith((".safetensors", ".bin", ".pt")))
        ident["files"] = [[f, os.path.getsize(os.path.join(path_or_model, f)),
                           os.path.getmtime(os.path.join(path_or_model, f))] for f in files]
    return ident


def fingerprint(model) -> list[float]:
    """Cheap identity of in-memory weights: per-tensor float64 sums (for models without a local path)."""
    with torch.no_grad():
        return [float(p.double().sum()) for p in model.parameters()]
