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
* Reward (a sequence classifier, :mod:`~mdpalign.llm_bridge.reward_model`): batch mean of the Bradley–Terry losses
  + c · batch mean of (r_c + r_r)² (TRL's RewardTrainer).

Each objective's loss is one entry of :attr:`MdpalignTrainer.LOSSES`. The reference log-probs DPO compares with
come from :mod:`mdpalign.llm_bridge.reference`; IFT's two passes see the model through
:class:`~mdpalign.llm_bridge.embedding_policy.CausalLMEmbeddingPolicy`.

Non-finite losses: every ``compute_loss`` checks the reduced loss and raises
:class:`~mdpalign.fit.NonFiniteLossError` naming the step, the objective and the batch's example indices (dataset
rows) instead of training on. The objectives are called with ``check_logps=False`` here: a nan/inf at a counted token
reaches the reduced loss anyway, the loss check also sees nan from elsewhere (reference log-probs, weights), and all
processes decide together (one raising inside the loss path, between two collective forwards, would hang the others).
The positivity part of the objectives' check adds nothing here: ``z_y − logsumexp(z)`` is never above 0.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from mdpalign.fit import NonFiniteLossError
from mdpalign.llm_bridge.config import NEEDS_REFERENCE, SEQUENCE_SCORE_OBJECTIVES, TrainConfig
from mdpalign.llm_bridge.data import PREFERENCE_OBJECTIVES, Collator, TokenizedDataset
from mdpalign.llm_bridge.embedding_policy import CausalLMEmbeddingPolicy, check_embedding_access
from mdpalign.llm_bridge.logps import batch_token_logps, install_logps_forward, scoring_mask, unpack
from mdpalign.llm_bridge.models import unwrap_model
from mdpalign.llm_bridge.reference import precompute_reference, prepare_reference_model, reference_sequence_logps
from mdpalign.llm_bridge.reward_model import reward_loss
from mdpalign.objectives import (
    batch_token_mean,
    crlft_loss,
    crlft_reduce,
    dpo_loss,
    ift_loss,
    ift_two_pass,
    orpo_loss,
    sequence_logps,
    sft_loss,
    sft_pieces,
)


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
        preference = args.objective in PREFERENCE_OBJECTIVES + SEQUENCE_SCORE_OBJECTIVES
        for name, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if ds is not None and ds.preference != preference:
                kind = "preference (prompt/chosen/rejected)" if preference else "single-sequence"
                raise ValueError(f"objective {args.objective!r} needs {kind} data; {name} is not")
        if args.objective == "ift":
            check_embedding_access(model)
        if (args.objective in NEEDS_REFERENCE and args.reference == "adapter_disabled"
                and not hasattr(model, "disable_adapter")):
            raise ValueError("reference='adapter_disabled' needs a PEFT model (use_peft=true)")
        if args.objective not in SEQUENCE_SCORE_OBJECTIVES:  # a sequence classifier has no LM head to score tokens
            install_logps_forward(model)
        pad_id = processing_class.pad_token_id if processing_class is not None else 0
        if pad_id is None:
            pad_id = processing_class.eos_token_id
        kwargs.setdefault("data_collator", Collator(pad_token_id=pad_id, padding_free=args.padding_free))
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        self.ref_model = None if ref_model is None else prepare_reference_model(ref_model, self)
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

    def reference_logps(self, model_for_ref, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence log-probs (chosen, rejected) of a preference batch under the reference (``model_for_ref`` None:
        this trainer's PEFT model with its adapter disabled)."""
        return reference_sequence_logps(self.model, model_for_ref, inputs, self.args.logps_chunk_size)

    def precompute_reference(self, datasets: list[TokenizedDataset], model_for_ref,
                             cache_key: str | None) -> str | None:
        """:func:`~mdpalign.llm_bridge.reference.precompute_reference` into these datasets' examples, which the DPO
        loss then reads by index; returns the cache file's path."""
        path = precompute_reference(self, datasets, model_for_ref, cache_key)
        for ds in datasets:
            self._examples.update({e["index"]: e for e in ds.examples})
        return path

    # ------------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        objective = self.args.objective
        mode = "train" if self.model.training else "eval"
        loss, metrics = self.LOSSES[objective](self, model, inputs, num_items_in_batch)
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
        raise NonFiniteLossError(f"non-finite loss{loss_text} at {where}{procs}, objective {self.args.objective!r}; "
                                 f"{what}")

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
        score = (scoring_mask(inputs, leading_sequences=len(inputs["index"])) if scope == "prompt_and_completion"
                 else None)
        tl, m, scored = batch_token_logps(model, inputs, self.args.logps_chunk_size, score_mask=score)
        b = tl.shape[0] // 2
        nll = {} if score is None else {"nll_token_logps": tl[:b], "nll_mask": scored[:b]}
        out = orpo_loss(tl[:b], m[:b], tl[b:], m[b:], lam=self.args.orpo_lambda, check_logps=False, **nll)
        # TRL: NLL as a token mean over the whole micro-batch, odds-ratio term as a batch mean
        nll_mean = batch_token_mean(out.nll_token_sum, out.nll_token_count)
        loss = nll_mean + self.args.orpo_lambda * out.odds_ratio_loss.mean()
        metrics = {
            "rewards/chosen": out.chosen_rewards, "rewards/rejected": out.rejected_rewards,
            "rewards/margins": out.chosen_rewards - out.rejected_rewards,
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
            "logps/chosen": out.chosen_avg_logps, "logps/rejected": out.rejected_avg_logps,
            "nll_loss": nll_mean,
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
        fwd = ({"position_ids": inputs["position_ids"]} if "seq_lengths" in inputs
               else {"attention_mask": inputs["attention_mask"]})
        policy = CausalLMEmbeddingPolicy(model, unwrap_model(model).get_input_embeddings(), self.args.logps_chunk_size)
        two = ift_two_pass(policy, ids, targets, target_mask, lam=self.args.ift_lambda, **fwd)
        tl, tm = two.token_logps, target_mask
        if "seq_lengths" in inputs:
            tl, tm = unpack(tl, inputs["seq_lengths"]), unpack(tm, inputs["seq_lengths"]).bool()
        out = ift_loss(tl, tm, decay=self.args.ift_decay, detach_weights=self.args.ift_detach_weights,
                       check_logps=False)
        w = out.weights.detach()[tm]
        metrics = {"nll": out.nll_mean, "ift/weight_mean": w.mean(), "ift/weight_max": w.max(),
                   "ift/weight_min": w.min()}
        return out.losses.mean(), metrics

    #: objective -> its loss: (trainer, model, inputs, step normaliser or None) -> (loss, metrics to log)
    LOSSES = {"sft": _loss_sft, "crlft": _loss_crlft, "dpo": _loss_dpo, "orpo": _loss_orpo, "ift": _loss_ift}
    LOSSES["reward"] = reward_loss

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
