"""``transformers.Trainer`` whose loss is one of ``mdpalign.objectives`` — the same functions the MDP proofs check.

The trainer only gets per-token log-probs out of the model (:mod:`mdpalign.llm_bridge.logps`) and
reduces the per-example values the objectives return; no loss formula lives here.

Reductions (each the one TRL uses where TRL has the objective, so the numbers are comparable):

* SFT ``token_mean``: Σ NLL over counted tokens / number of counted tokens, the count taken over the
  whole optimizer step (all gradient-accumulation micro-batches, all processes) as TRL/Trainer do
  with ``num_items_in_batch``; ``sequence_mean`` / ``sequence_sum``: batch mean of the per-sequence
  mean / sum NLL.
* C-RLFT: Σ_i w_i ℓ_i / Σ_i w_i (``crlft_reduce``), Σ_i w_i over the optimizer step like the SFT count;
  ℓ_i the token-sum NLL (``crlft_reduction="token"``, the paper) or the per-sequence mean NLL (``"sequence"``,
  OpenChat's code: each token weighted w_i/n_i).
* DPO: batch mean of per-pair losses. ORPO: batch token mean of the NLL + λ · mean odds-ratio term
  (TRL's ORPOTrainer). IFT: batch mean of per-sequence losses (the reference code); both passes through the
  chunked LM head (greedy tokens and target log-probs without full-vocabulary logits).

Reference log-probs for DPO (``reference``): ``precomputed`` (one pass before training, cached on
disk, keyed by a hash of the reference model, the tokenised data and the settings), ``model`` (a
frozen reference model run live) or ``adapter_disabled`` (the PEFT base model, adapter switched off).

Non-finite losses: every ``compute_loss`` checks the reduced loss and raises
:class:`~mdpalign.fit.NonFiniteLossError` naming the step, the objective and the batch's example indices (dataset
rows) instead of training on. The objectives are called with ``check_logps=False`` here: a nan/inf at a counted token
reaches the reduced loss anyway, the loss check also sees nan from elsewhere (reference log-probs, weights), and all
processes decide together (one raising inside the loss path, between two collective forwards, would hang the others).
The positivity part of the objectives' check adds nothing here: ``z_y − logsumexp(z)`` is never above 0.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
import hashlib
import inspect
import json
import logging
import os
from collections import defaultdict
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer

from mdpalign.fit import NonFiniteLossError
from mdpalign.llm_bridge.config import TrainConfig
from mdpalign.llm_bridge.data import Collator, TokenizedDataset
from mdpalign.llm_bridge.logps import batch_token_logps, install_logps_forward, scoring_mask, unpack
from mdpalign.objectives import (
    batch_token_mean,
    crlft_loss,
    dpo_loss,
    ift_loss,
    ift_two_pass,
    orpo_loss,
    sequence_logps,
    sft_loss,
    sft_pieces,
)

logger = logging.getLogger(__name__)


class UnsupportedModelError(MdpalignError, ValueError):
    """The model cannot run the chosen objective (e.g. IFT without reachable input embeddings)."""


def check_embedding_access(model) -> None:
    """IFT feeds ``inputs_embeds``: the model must expose ``get_input_embeddings()`` and accept them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    try:
        emb = base.get_input_embeddings()
    except (NotImplementedError, AttributeError) as err:
        raise UnsupportedModelError(
            f"objective 'ift' needs the input embeddings, but {name}.get_input_embeddings() failed: {err!r}"
        ) from None
    if not isinstance(emb, torch.nn.Module):
        raise UnsupportedModelError(f"objective 'ift' needs the input embeddings; {name}.get_input_embeddings() returned {emb!r}")
    params = inspect.signature(type(base).forward).parameters
    if "inputs_embeds" not in params:
        raise UnsupportedModelError(f"objective 'ift' needs a forward accepting inputs_embeds; {name}.forward does not")


class _EmbeddingPolicy:
    """The EmbeddingPolicy protocol (``embed`` / ``forward_embeds``) over a (wrapped) HF causal LM, with the optional
    hooks ``greedy_from_embeds`` / ``token_logps_from_embeds`` that :func:`~mdpalign.objectives.ift_two_pass` uses:
    both go through the model's patched forward (:func:`~mdpalign.llm_bridge.logps.install_logps_forward`), so the
    LM head runs ``chunk_size`` positions at a time (argmax under no_grad; target log-probs upcast per chunk and
    recomputed in backward) and no (B, T, vocab) fp32 logits are ever held."""

    def __init__(self, model, embeddings: torch.nn.Module, chunk_size: int = 1024):
        self.model, self.embeddings, self.chunk_size = model, embeddings, int(chunk_size)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(ids)

    def forward_embeds(self, embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        # fp32 so the objectives' log_softmax is not done in bf16 (full logits: only for callers without the hooks)
        return self.model(inputs_embeds=embeds, use_cache=False, **kwargs).logits.float()

    # the embedding recipe runs inside the model's forward (build_inputs_embeds), where FSDP2 has the whole table
    def greedy_from_embeds(self, build_embeds, **kwargs) -> torch.Tensor:
        return self.model(build_inputs_embeds=build_embeds, greedy_mask=True, logps_chunk_size=self.chunk_size,
                          **kwargs).greedy

    def token_logps_from_embeds(self, build_embeds, targets: torch.Tensor, mask: torch.Tensor,
                                **kwargs) -> torch.Tensor:
        return self.model(build_inputs_embeds=build_embeds, score_mask=mask, score_targets=targets,
                          score_layout="target", logps_chunk_size=self.chunk_size, **kwargs).token_logps


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


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
    import copy

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
                raise ValueError(f"DeepSpeed config has zero_optimization.{key}: auto, but the reference model's config "
                                 "has no hidden_size to fill it from; set a number")
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
    import deepspeed

    config = deepspeed_reference_config(accelerator.state.deepspeed_plugin.deepspeed_config, _hidden_size(model))
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def is_zero3(model) -> bool:
    """True when DeepSpeed ZeRO-3 partitioned ``model``'s weights (each rank holds a shard; calls are collectives)."""
    return any(hasattr(p, "ds_id") for p in _unwrap(model).parameters())


class MdpalignTrainer(Trainer):
    """Trainer for ``args.objective`` in {sft, dpo, orpo, ift, crlft}; ``train_dataset`` from ``tokenize_records``."""

    def __init__(
        self,
        model,
        args: TrainConfig,
        train_dataset: TokenizedDataset,
        processing_class=None,
        ref_model=None,
        eval_dataset: TokenizedDataset | None = None,
        **kwargs,
    ):
        if not isinstance(args, TrainConfig):
            raise TypeError(f"args must be a TrainConfig, got {type(args).__name__}")
        preference = args.objective in ("dpo", "orpo")
        for name, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if ds is not None and ds.preference != preference:
                kind = "preference (prompt/chosen/rejected)" if preference else "single-sequence"
                raise ValueError(f"objective {args.objective!r} needs {kind} data; {name} is not")
        if args.objective == "ift":
            check_embedding_access(model)
        if args.objective == "dpo" and args.reference == "adapter_disabled" and not hasattr(model, "disable_adapter"):
            raise ValueError("reference='adapter_disabled' needs a PEFT model (use_peft=true)")
        install_logps_forward(model)
        pad_id = processing_class.pad_token_id if processing_class is not None else 0
        if pad_id is None:
            pad_id = processing_class.eos_token_id
        kwargs.setdefault("data_collator", Collator(pad_token_id=pad_id, padding_free=args.padding_free))
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        self.ref_model = ref_model
        if ref_model is not None:
            install_logps_forward(ref_model)
            ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed_reference(ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.args.device)
        self._examples: dict[int, dict] = {}
        for ds in (train_dataset, eval_dataset):
            if ds is not None:
                self._examples.update({e["index"]: e for e in ds.examples})
        # the loss is already divided by a count over the whole optimizer step (see _get_num_items_in_batch)
        self.loss_is_scaled_for_ga = self._global_normaliser
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ------------------------------------------------------------------ normalisation over a step

    @property
    def _global_normaliser(self) -> bool:
        a = self.args
        return (a.objective == "sft" and a.sft_reduction == "token_mean") or a.objective == "crlft"

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Σ counted tokens (SFT token_mean) or Σ class weights (C-RLFT) over the micro-batches of one optimizer
        step and over processes; None for objectives reduced per micro-batch."""
        if not self._global_normaliser or not batch_samples:
            return None
        if self.args.objective == "sft":
            total = sum(int(self._counted(b).sum()) for b in batch_samples)
        else:
            total = sum(sum(self._weights(b).tolist()) for b in batch_samples)
        total = torch.tensor(float(total), dtype=torch.float64, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    @staticmethod
    def _counted(batch) -> torch.Tensor:
        m = batch["completion_mask"].bool()
        if "position_ids" in batch and "seq_lengths" in batch:
            m = m & (batch["position_ids"] > 0)
        return m

    def _weights(self, batch) -> torch.Tensor:
        w = [self._examples[int(i)]["weight"] for i in batch["index"].tolist()]
        return torch.tensor(w, dtype=torch.float64)

    def _lookup(self, inputs, key: str, device) -> torch.Tensor:
        ids = inputs["index"].tolist()
        try:
            return torch.tensor([self._examples[i][key] for i in ids], dtype=torch.float64, device=device)
        except KeyError:
            raise KeyError(f"example(s) {ids} have no {key!r}; precompute the reference log-probs first") from None

    def _scale_global(self, total: torch.Tensor, normaliser) -> torch.Tensor:
        if normaliser is None:  # evaluation: no step-level count, normalise within the batch
            return None
        loss = total / normaliser.to(total.dtype)
        # DDP averages gradients over processes while the normaliser already counts all of them
        if self.args.world_size > 1:
            loss = loss * self.args.world_size
        return loss

    # ------------------------------------------------------------------ reference log-probs

    @torch.no_grad()
    def reference_logps(self, model_for_ref, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence log-probs (chosen, rejected) of a preference batch under the reference."""
        chunk = self.args.logps_chunk_size
        if model_for_ref is None:  # adapter_disabled
            unwrapped = _unwrap(self.model)
            with unwrapped.disable_adapter():
                tl, m, _ = batch_token_logps(self.model, inputs, chunk)
        else:
            tl, m, _ = batch_token_logps(model_for_ref, inputs, chunk)
        seq = sequence_logps(tl.double(), m, check_logps=False)  # a nan reaches the DPO loss, checked per step
        b = seq.shape[0] // 2
        return seq[:b], seq[b:]

    def precompute_reference(self, datasets: list[TokenizedDataset], model_for_ref, cache_key: str | None) -> str | None:
        """Fill ``ref_chosen_logps``/``ref_rejected_logps`` of every example, from the disk cache when the key matches.

        The main process computes (batch by batch, no grad) and writes ``<ref_cache_dir>/<key>.json``; the others wait
        and read it, so every process trains against the same numbers. Under DeepSpeed ZeRO-3 every forward is a
        collective (each rank holds a shard of the weights), so all processes compute the same table in step instead,
        through a DeepSpeed inference engine around ``model_for_ref`` (which must then be a separate copy: the policy
        has no engine before training starts).
        """
        cache_dir = self.args.ref_cache_dir or os.path.join(self.args.output_dir, "ref_cache")
        path = os.path.join(cache_dir, f"{cache_key}.json") if cache_key else None
        sharded = is_zero3(self.model) or (model_for_ref is not None and is_zero3(model_for_ref))
        if sharded:
            if model_for_ref is None:
                raise ValueError("under DeepSpeed ZeRO-3 the precomputed reference needs its own model (the policy is "
                                 "only partitioned shards before training); pass model_for_ref")
            table = self._shared_reference_table(datasets, model_for_ref, path)
        else:
            table = self._main_reference_table(datasets, model_for_ref, path)
        for ds in datasets:
            for e in ds.examples:
                if e["index"] not in table:
                    raise KeyError(f"reference cache {path} has no entry for example {e['index']}")
                e["ref_chosen_logps"], e["ref_rejected_logps"] = table[e["index"]]
                self._examples[e["index"]] = e
        return path

    def _main_reference_table(self, datasets, model_for_ref, path: str | None) -> dict[int, list[float]]:
        """The main process loads or computes and writes; the others wait for it, then read the file."""
        with self.accelerator.main_process_first():
            if path and os.path.isfile(path):
                return _read_reference_cache(path)
            if self.accelerator.is_main_process or not path:
                table = self._compute_reference_table(datasets, model_for_ref)
                if path:
                    _write_reference_cache(path, table)
                return table
            raise FileNotFoundError(f"reference cache {path} missing after the main process computed it")  # pragma: no cover

    def _shared_reference_table(self, datasets, model_for_ref, path: str | None) -> dict[int, list[float]]:
        """Every process computes the same batches in step (ZeRO-3 forwards are collectives); the main one writes."""
        from accelerate.utils import broadcast_object_list

        # the main process decides, so no rank computes while another reads the file (that would hang the collectives)
        cached = broadcast_object_list([bool(path and os.path.isfile(path))])[0]
        if cached:
            return _read_reference_cache(path)
        engine = prepare_deepspeed_reference(model_for_ref, self.accelerator)
        table = self._compute_reference_table(datasets, engine)
        if path and self.accelerator.is_main_process:
            _write_reference_cache(path, table)
        self.accelerator.wait_for_everyone()
        return table

    def _compute_reference_table(self, datasets, model_for_ref) -> dict[int, list[float]]:
        """model_for_ref None: the policy itself before training (adapter disabled for a PEFT model)."""
        device = self.args.device
        model = model_for_ref if model_for_ref is not None else self.model
        install_logps_forward(_unwrap(model))
        if not is_zero3(model):  # a ZeRO-3 engine placed its shards itself
            model = model.to(device)
        peft_base = model_for_ref is None and hasattr(_unwrap(self.model), "disable_adapter")
        was_training = model.training
        model.eval()
        table: dict[int, list[float]] = {}
        bs = self.args.per_device_eval_batch_size
        # one pass over the whole dataset before step 1: minutes on real data, so it shows progress
        bar = tqdm(total=sum(-(-len(ds) // bs) for ds in datasets), desc="reference log-probs", unit="batch",
                   disable=self.args.disable_tqdm or not self.accelerator.is_local_main_process)
        try:
            for ds in datasets:
                for start in range(0, len(ds), bs):
                    batch = self.data_collator(ds.examples[start : start + bs])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    c, r = self.reference_logps(None if peft_base else model, batch)
                    for i, ci, ri in zip(batch["index"].tolist(), c.tolist(), r.tolist()):
                        table[i] = [ci, ri]
                    bar.update()
        finally:
            bar.close()
            model.train(was_training)
        return table

    # ------------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        objective = self.args.objective
        mode = "train" if self.model.training else "eval"
        loss, metrics = getattr(self, f"_loss_{objective}")(model, inputs, num_items_in_batch)
        self._check_finite_loss(loss, inputs, mode)
        for k, v in metrics.items():
            v = v.detach().reshape(-1).float()
            self._metrics[mode][k].append(self.accelerator.gather_for_metrics(v).mean().item())
        return (loss, {}) if return_outputs else loss

    def _check_finite_loss(self, loss: torch.Tensor, inputs, mode: str) -> None:
        """Raise :class:`NonFiniteLossError` on every process when the loss of any process is nan or ±inf.

        One host read of a flag per call (compute_loss reads its metrics anyway) and, with several processes, one
        1-element all-gather beside the metrics' gathers, so all processes stop together and none waits in a
        collective for one that raised."""
        flag = (~torch.isfinite(loss.detach())).any().reshape(1).to(torch.float32)
        mine = flag
        if self.args.world_size > 1:
            flag = self.accelerator.gather(flag)
        flags = flag.tolist()
        if not any(flags):
            return
        ids = inputs["index"].tolist()
        where = (f"training step {self.state.global_step + 1}" if mode == "train"
                 else f"evaluation after step {self.state.global_step}")
        bad_procs = [rank for rank, f in enumerate(flags) if f]
        procs = f" on process(es) {bad_procs} of {len(flags)}" if len(flags) > 1 else ""
        if bool(mine):
            value = float(loss.detach().reshape(-1)[0])
            what = (f"example indices (dataset rows) of the batch: {ids}. Check these examples, lower the learning "
                    "rate, or train in fp32 to find where it starts")
        else:  # another process's loss: that process's error names its examples
            value = None
            what = (f"this is process {self.args.process_index}, whose batch {ids} had a finite loss; the error of "
                    f"process(es) {bad_procs} names their examples")
        loss_text = f" ({value})" if value is not None else ""
        raise NonFiniteLossError(f"non-finite loss{loss_text} at {where}{procs}, objective {self.args.objective!r}; {what}")

    def _loss_sft(self, model, inputs, num_items):
        tl, m, _ = batch_token_logps(model, inputs, self.args.logps_chunk_size)
        red = self.args.sft_reduction
        if red == "token_mean":
            pieces = sft_pieces(tl, m, check_logps=False)
            loss = self._scale_global(pieces.nll_sum.sum(), num_items)
            if loss is None:
                loss = batch_token_mean(pieces.nll_sum, pieces.token_count)
            nll = pieces.nll_sum.sum() / pieces.token_count.sum()
        else:
            loss = sft_loss(tl, m, normalize=(red == "sequence_mean"), check_logps=False).mean()
            nll = sft_loss(tl, m, normalize=True, check_logps=False).detach().mean()
        return loss, {"nll": nll, "num_tokens": m.sum().float()}

    def _loss_crlft(self, model, inputs, weight_sum):
        tl, m, _ = batch_token_logps(model, inputs, self.args.logps_chunk_size)
        w = self._weights(inputs).to(device=tl.device, dtype=tl.dtype)
        out = crlft_loss(tl, m, w, reduction=self.args.crlft_reduction, check_logps=False)
        loss = self._scale_global(out.losses.sum(), weight_sum)
        if loss is None:
            from mdpalign.objectives import crlft_reduce

            loss = crlft_reduce(out)
        return loss, {"nll": (out.nll / out.token_count).mean(), "weights": out.weights.mean()}

    def _loss_dpo(self, model, inputs, _):
        tl, m, _s = batch_token_logps(model, inputs, self.args.logps_chunk_size)
        seq = sequence_logps(tl, m, check_logps=False)
        b = seq.shape[0] // 2
        chosen, rejected = seq[:b], seq[b:]
        mode = self.args.reference
        if mode == "precomputed":
            ref_c = self._lookup(inputs, "ref_chosen_logps", seq.device)
            ref_r = self._lookup(inputs, "ref_rejected_logps", seq.device)
        else:
            ref_c, ref_r = self.reference_logps(self.ref_model if mode == "model" else None, inputs)
        ref_c, ref_r = ref_c.to(seq.dtype), ref_r.to(seq.dtype)
        counts = {}
        if self.args.loss_type == "ipo":  # TRL's length-normalised IPO
            n = m.sum(-1).to(seq.dtype)
            counts = {"chosen_token_counts": n[:b], "rejected_token_counts": n[b:]}
        out = dpo_loss(chosen, rejected, ref_c, ref_r, beta=self.args.beta, loss_type=self.args.loss_type,
                       label_smoothing=self.args.label_smoothing, check_logps=False, **counts)
        metrics = {
            "rewards/chosen": out.chosen_rewards, "rewards/rejected": out.rejected_rewards,
            "rewards/margins": out.margins, "rewards/accuracies": out.accuracies,
            "logps/chosen": chosen, "logps/rejected": rejected,
        }
        return out.losses.mean(), metrics

    def _loss_orpo(self, model, inputs, _):
        scope = self.args.orpo_nll_scope
        # the NLL covers the chosen sequence only: the rejected rows are scored on their completions alone
        score = scoring_mask(inputs, leading_sequences=len(inputs["index"])) if scope == "prompt_and_completion" else None
        tl, m, scored = batch_token_logps(model, inputs, self.args.logps_chunk_size, score_mask=score)
        b = tl.shape[0] // 2
        nll = {} if score is None else {"nll_token_logps": tl[:b], "nll_mask": scored[:b]}
        out = orpo_loss(tl[:b], m[:b], tl[b:], m[b:], lam=self.args.orpo_lambda, check_logps=False, **nll)
        # TRL: NLL as a token mean over the whole micro-batch, odds-ratio term as a batch mean
        loss = batch_token_mean(out.nll_token_sum, out.nll_token_count) + self.args.orpo_lambda * out.odds_ratio_loss.mean()
        metrics = {
            "rewards/chosen": out.chosen_rewards, "rewards/rejected": out.rejected_rewards,
            "rewards/margins": out.chosen_rewards - out.rejected_rewards,
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
            "logps/chosen": out.chosen_avg_logps, "logps/rejected": out.rejected_avg_logps,
            "nll_loss": batch_token_mean(out.nll_token_sum, out.nll_token_count),
            "log_odds_ratio": -out.odds_ratio_loss, "log_odds_chosen": out.log_odds,
        }
        return loss, metrics

    def _loss_ift(self, model, inputs, _):
        ids = inputs["input_ids"]
        counted = self._counted(inputs)
        # target layout: position j scores token j+1
        targets = torch.roll(ids, -1, dims=1)
        target_mask = torch.zeros_like(counted)
        target_mask[:, :-1] = counted[:, 1:]
        fwd = {"position_ids": inputs["position_ids"]} if "seq_lengths" in inputs else {"attention_mask": inputs["attention_mask"]}
        policy = _EmbeddingPolicy(model, _unwrap(model).get_input_embeddings(), self.args.logps_chunk_size)
        two = ift_two_pass(policy, ids, targets, target_mask, lam=self.args.ift_lambda, **fwd)
        tl, tm = two.token_logps, target_mask
        if "seq_lengths" in inputs:
            tl, tm = unpack(tl, inputs["seq_lengths"]), unpack(tm, inputs["seq_lengths"]).bool()
        out = ift_loss(tl, tm, decay=self.args.ift_decay, detach_weights=self.args.ift_detach_weights,
                       check_logps=False)
        w = out.weights.detach()[tm]
        metrics = {"nll": out.nll_mean, "ift/weight_mean": w.mean(), "ift/weight_max": w.max(), "ift/weight_min": w.min()}
        return out.losses.mean(), metrics

    # ------------------------------------------------------------------ logging / eval

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _read_reference_cache(path: str) -> dict[int, list[float]]:
    with open(path, encoding="utf-8") as fh:
        table = {int(k): v for k, v in json.load(fh).items()}
    logger.info("reference log-probs loaded from cache %s", path)
    return table


def _write_reference_cache(path: str, table: dict[int, list[float]]) -> None:
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
