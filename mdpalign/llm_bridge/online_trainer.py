r"""Online RL on a causal LM: ``objective`` grpo | rloo | reinforce | remax, through the library's own objectives.

One optimizer step (``gradient_accumulation_steps`` micro-batches on every process) is one **generation round**
(reused for ``num_iterations`` steps, PPO-style):

1. the step's prompts (``per_device_train_batch_size / num_generations`` per micro-batch) each get ``num_generations``
   completions from the policy itself (:func:`~mdpalign.llm_bridge.online.generate_completions`, seeded per
   completion), or — ``generation="exact"``, for tests — every completion of ``max_completion_length`` tokens;
2. rewards (:func:`~mdpalign.llm_bridge.online.score_completions`); without gradient, the sampling policy's and the
   reference's per-token log-probs through the chunked scored-position LM head
   (:func:`~mdpalign.llm_bridge.logps.batch_token_logps`: no full-vocabulary logits); the reference is a frozen copy
   (``reference: model``) or the PEFT adapter disabled (``adapter_disabled``: no second copy), none when β = 0;
3. the KL in the reward (:func:`~mdpalign.objectives.kl_penalised_rewards`, summed over the completion, of the
   sampling policy) and the advantages over the whole step on all processes (gathered):
   :func:`~mdpalign.objectives.grpo_advantages` (grpo), :func:`~mdpalign.objectives.rloo_advantages` (rloo), the
   shaped reward itself (reinforce), :func:`~mdpalign.objectives.remax_advantages` against the greedy completion's
   reward (remax).

The loss of a micro-batch (:meth:`OnlineTrainer._loss_online`): grpo is TRL ``GRPOTrainer._compute_loss`` — the
per-token :func:`~mdpalign.objectives.ppo_clip_loss` plus ``β·``:func:`~mdpalign.objectives.kl_loss_term` (KL as a
loss), aggregated by :func:`~mdpalign.objectives.aggregate_token_loss` with ``loss_type``; rloo / reinforce / remax are
TRL ``RLOOTrainer._compute_loss`` — the clipped loss on the *sequence* ratio ``exp(Σ log π − Σ log π_old)``, mean over
completions (plus a KL loss term summed per completion, if placed there). ``num_iterations = 1`` is on-policy
(``π_old`` = the current policy detached, as TRL). ``dapo`` divides by the counted tokens of the whole step on all
processes, and the micro-batch losses are summed (the trl#2617 class of bug avoided); the other aggregations are
averaged over micro-batches.

**Exact mode.** Every batch ``D`` of the step (one prompt and an ordered group of ``G`` of its ``N`` completions: all
``N^G``) enters the loss with its probability ``w(D) = Π_i π(y_i)`` under the sampling policy, a constant:
``Σ_D w(D)·ℓ(θ; D)``, whose gradient is the *expected* update of the sampled trainer, computed by the same code
(advantages and aggregation per batch ``D``). A sampled micro-batch is the case of one batch with weight 1.

Where TRL 1.16 departs: its defaults do not land on the KL-regularised optimum (``scale_rewards: group``,
``loss_type: dapo``, k3 as a loss, β = 0; :func:`~mdpalign.llm_bridge.config.fixed_point_problems` says where each
lands); a reward function's ``None`` is an unscorable completion dropped from the baseline there and an error here;
TRL samples with ``torch.multinomial`` on the global RNG (the same distribution, other random numbers, and not the
same draws on one and on two processes); TRL logs the token entropy, which needs the full-vocabulary logits this
trainer never forms; ``normalize_advantages`` (RLOO), ``mask_truncated_completions``, ``delta``, ``top_k``/``min_p``,
``importance_sampling_level: sequence`` (GSPO), ``steps_per_generation`` and vLLM are not implemented.

Reproducibility: the sampling noise of completion ``i`` of round ``k`` is a function of ``(seed, k, i)`` and the round
of a step is ``global_step // num_iterations``, so a resumed run draws what the uninterrupted one draws, and two
processes draw what one process draws for the same global batch. A checkpoint taken inside a round stores that
round's generation batch (``online_buffer_rank<r>.pt``), so the resumed steps reuse it exactly.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from mdpalign.llm_bridge.config import ONLINE_OBJECTIVES, ConfigError, TrainConfig, kl_placement_of
from mdpalign.llm_bridge.data import Collator
from mdpalign.llm_bridge.logps import batch_token_logps
from mdpalign.llm_bridge.models import is_zero3, unwrap_model
from mdpalign.llm_bridge.online import (
    EXACT_MAX_BATCHES,
    PromptDataset,
    StepSampler,
    exact_completions,
    exact_groups,
    generate_completions,
    load_reward_funcs,
    prompt_collator,
    sample_key,
    score_completions,
)
from mdpalign.llm_bridge.trainer import MdpalignTrainer
from mdpalign.objectives import (
    aggregate_token_loss,
    grpo_advantages,
    kl_loss_term,
    kl_penalised_rewards,
    ppo_clip_loss,
    remax_advantages,
    rloo_advantages,
)

logger = logging.getLogger(__name__)

#: how a round gets its completions: sampled from the policy, or every completion (tests, tiny vocabularies)
GENERATION_MODES = ("sample", "exact")
#: objectives trained on the sequence-level ratio (TRL RLOOTrainer); grpo uses the token-level one
SEQUENCE_LEVEL = ("rloo", "reinforce", "remax")


@dataclass
class GenerationRound:
    """The micro-batches of one generation round (this process), reused for ``num_iterations`` steps."""

    round: int
    batches: list[dict]
    num_items: torch.Tensor | None


def completion_layout(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-layout ``(R, T)`` values at counted positions -> completion layout ``(R, L)``: row r's completion
    tokens first, zero-padded on the right; returns ``(values, mask)``. Differentiable in ``values``."""
    mask = mask.bool()
    counts = mask.sum(-1)
    width = max(int(counts.max()), 1)
    pos = mask.long().cumsum(-1) - 1
    rows, cols = mask.nonzero(as_tuple=True)
    out = values.new_zeros(values.shape[0], width).index_put((rows, pos[rows, cols]), values[rows, cols])
    return out, torch.arange(width, device=mask.device)[None, :] < counts[:, None]


def disable_dropout(model) -> None:
    """Dropout off (as TRL's ``disable_dropout``): the sampling policy's log-probs and the training forward must
    be the same function, or ``ρ`` carries dropout noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class OnlineTrainer(MdpalignTrainer):
    """Trainer for ``args.objective`` in :data:`~mdpalign.llm_bridge.config.ONLINE_OBJECTIVES` (module docstring).

    ``train_dataset``: a :class:`~mdpalign.llm_bridge.online.PromptDataset`; ``reward_funcs``: callables or
    ``reward_funcs`` strings (default ``args.reward_funcs``); ``ref_model``: the frozen reference for
    ``reference: model`` with β > 0; ``generation``: one of :data:`GENERATION_MODES`."""

    def __init__(self, model, args: TrainConfig, train_dataset: PromptDataset, processing_class=None,
                 reward_funcs=None, ref_model=None, generation: str = "sample", **kwargs):
        if not isinstance(args, TrainConfig) or args.objective not in ONLINE_OBJECTIVES:
            raise ValueError(f"OnlineTrainer trains {ONLINE_OBJECTIVES}; got objective "
                             f"{getattr(args, 'objective', None)!r}")
        if generation not in GENERATION_MODES:
            raise ValueError(f"unknown generation {generation!r}; expected one of {', '.join(GENERATION_MODES)}")
        if not isinstance(train_dataset, PromptDataset):
            raise ValueError("online objectives train on prompts: train_dataset must be a PromptDataset "
                             "(mdpalign.llm_bridge.online.tokenize_prompts)")
        if is_zero3(model):
            raise ConfigError("online RL under DeepSpeed ZeRO-3 is not supported (generation would need the gathered "
                              "weights); use DDP or ZeRO-1/2")
        if args.beta > 0 and args.reference == "adapter_disabled" and not hasattr(model, "disable_adapter"):
            raise ValueError("reference='adapter_disabled' needs a PEFT model (use_peft=true)")
        if args.beta > 0 and args.reference == "model" and ref_model is None:
            raise ValueError("reference='model' with beta > 0 needs ref_model (a frozen copy of the starting policy)")
        self._generation = generation
        disable_dropout(model)
        pad_id = 0
        if processing_class is not None:
            pad_id = processing_class.pad_token_id if processing_class.pad_token_id is not None else (
                processing_class.eos_token_id)
        self._pad_id = pad_id
        kwargs.setdefault("data_collator", prompt_collator)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         ref_model=ref_model if args.beta > 0 else None, **kwargs)
        if self.is_fsdp_enabled:
            raise ConfigError("online RL under FSDP is not supported yet (generation would need the gathered "
                              "weights); use DDP")
        self._train_collator = Collator(pad_token_id=pad_id, padding_free=args.padding_free)
        self._prompts = {e["index"]: e for e in train_dataset.examples}
        self.reward_funcs = load_reward_funcs(args.reward_funcs if reward_funcs is None else reward_funcs,
                                              device=args.device)
        if args.reward_weights is not None and len(args.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(args.reward_weights)} entries for {len(self.reward_funcs)} "
                              "reward functions")
        # the dataloader yields prompts: per_device_train_batch_size counts completions (TRL's convention)
        self._train_batch_size = args.per_device_train_batch_size // args.num_generations
        self._buffer: GenerationRound | None = None
        self._resume_from: str | None = None
        if self.ref_model is not None:
            disable_dropout(self.ref_model)

    # ------------------------------------------------------------------ batching

    @property
    def _global_normaliser(self) -> bool:
        return self.args.loss_type == "dapo"  # divided by the whole step's token count: micro-batches summed

    def _get_num_items_in_batch(self, batch_samples, device):
        return None  # known only once the completions exist (GenerationRound.num_items)

    def _get_train_sampler(self, train_dataset=None):
        ds = self.train_dataset if train_dataset is None else train_dataset
        a = self.args
        block = self._train_batch_size * a.gradient_accumulation_steps * a.world_size
        return StepSampler(len(ds), block, repeats=a.num_iterations,
                           seed=a.data_seed if a.data_seed is not None else a.seed)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:
            path = get_last_checkpoint(self.args.output_dir)
        self._resume_from = path if isinstance(path, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches: generated from the prompts the loader yields (every ``num_iterations`` steps;
        the reuse steps' prompts are the same block, read and set aside)."""
        prompts, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not prompts:
            return prompts, None
        k = self.args.num_iterations
        round_ = self.state.global_step // k
        if self._buffer is None or self._buffer.round != round_:
            loaded = self._load_buffer(round_) if self.state.global_step % k else None
            self._buffer = loaded if loaded is not None else self._generate_round(prompts, round_)
        return list(self._buffer.batches), self._buffer.num_items

    # ------------------------------------------------------------------ one generation round

    def _policy_logps(self, model, batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, L) completion-layout log-probs (and mask) of the sampling policy or the reference, without grad."""
        chunk = self.args.logps_chunk_size
        with torch.no_grad():
            if reference and self.ref_model is None:
                with unwrap_model(self.model).disable_adapter():
                    tl, m, _ = batch_token_logps(model, batch, chunk)
            else:
                tl, m, _ = batch_token_logps(self.ref_model if reference else model, batch, chunk)
        return completion_layout(tl, m)

    def _texts(self, prompt, ids: list[int]):
        text = self.processing_class.decode(ids, skip_special_tokens=True) if self.processing_class is not None else (
            " ".join(map(str, ids)))
        return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text

    def _eos_ids(self, model) -> list[int]:
        ids = set()
        tok = self.processing_class
        if tok is not None and tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        gen = getattr(model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update([extra] if isinstance(extra, int) else list(extra or []))
        return sorted(ids)

    def _rewards(self, prompts, completion_ids, columns) -> tuple[torch.Tensor, torch.Tensor]:
        completions = [self._texts(p, c) for p, c in zip(prompts, completion_ids, strict=True)]
        return score_completions(self.reward_funcs, self.args.reward_weights, prompts, completions, completion_ids,
                                 columns, trainer_state=self.state)

    def _generate_round(self, prompt_batches: list[dict], round_: int) -> GenerationRound:
        a = self.args
        G, W, rank = a.num_generations, a.world_size, a.process_index
        exact = self._generation == "exact"
        model = unwrap_model(self.accelerator.unwrap_model(self.model))
        micro = [[self._prompts[int(i)] for i in b["index"].tolist()] for b in prompt_batches]
        P = len(micro[0])
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            if exact:
                vocab = model.get_output_embeddings().weight.shape[0]
                support = exact_completions(vocab, a.max_completion_length)
                if P * len(support) ** G > EXACT_MAX_BATCHES:
                    raise ConfigError(f"exact generation would enumerate {P}·{len(support)}^{G} batches > "
                                      f"{EXACT_MAX_BATCHES}; use a smaller vocabulary, length or group")
                rows = [(e, list(c)) for exs in micro for e in exs for c in support]
            else:
                prompt_rows, keys, owners = [], [], []
                for j, exs in enumerate(micro):
                    for k, e in enumerate(exs):
                        position = j * W * P + rank * P + k  # its place in the step's global batch
                        for g in range(G):
                            prompt_rows.append(e["prompt_ids"])
                            keys.append(sample_key(a.seed, round_, position * G + g))
                            owners.append(e)
                comps = generate_completions(model, prompt_rows, keys, max_new_tokens=a.max_completion_length,
                                             pad_token_id=self._pad_id, eos_token_ids=self._eos_ids(model),
                                             temperature=a.temperature, top_p=a.top_p)
                rows = list(zip(owners, comps, strict=True))
            greedy = None
            if a.objective == "remax":
                flat = [e for exs in micro for e in exs]
                greedy_ids = generate_completions(model, [e["prompt_ids"] for e in flat], None,
                                                  max_new_tokens=a.max_completion_length, pad_token_id=self._pad_id,
                                                  eos_token_ids=[] if exact else self._eos_ids(model))
                greedy, _ = self._rewards([e["prompt"] for e in flat], greedy_ids, self._columns(flat))
        finally:
            model.train(was_training)
        gen_time = time.perf_counter() - start
        owners = [e for e, _ in rows]
        rewards, per_func = self._rewards([e["prompt"] for e in owners], [c for _, c in rows], self._columns(owners))
        per_micro = len(rows) // len(micro)
        batches, shaped, seq_old = [], [], []
        for j in range(len(micro)):
            part = rows[j * per_micro:(j + 1) * per_micro]
            batch = self._train_collator([{"prompt_ids": e["prompt_ids"], "completion_ids": c, "index": e["index"]}
                                          for e, c in part])
            batch = {k: v.to(a.device) for k, v in batch.items()}
            need_old = exact or a.num_iterations > 1 or (a.beta > 0 and a.kl_placement == "reward")
            old = ref = None
            if need_old:
                old, mask = self._policy_logps(model, batch, reference=False)
            if a.beta > 0:
                ref, mask = self._policy_logps(model, batch, reference=True)
            if old is None and ref is None:
                _, mask = completion_layout(batch["completion_mask"].float(), batch["completion_mask"])
            r = rewards[j * per_micro:(j + 1) * per_micro].to(a.device)
            if a.beta > 0 and a.kl_placement == "reward":
                r = kl_penalised_rewards(r, old.double(), ref.double(), mask, a.beta, a.kl_estimator)
            shaped.append(r)
            seq_old.append(None if old is None else (old.double() * mask).sum(-1))
            batch.update(completion_mask_c=mask)
            if old is not None:
                batch["old_logps"] = old
            if ref is not None:
                batch["ref_logps"] = ref
            batches.append(batch)
        greedy = None if greedy is None else greedy.to(a.device)
        num_items = self._advantages(batches, shaped, seq_old, greedy, support_size=len(rows) // (len(micro) * P))
        self._log_round(rewards, per_func, rows, gen_time, seq_old if exact else None)
        return GenerationRound(round_, batches, num_items)

    @staticmethod
    def _columns(examples) -> dict[str, list]:
        keys = examples[0]["columns"].keys() if examples else ()
        return {k: [e["columns"][k] for e in examples] for k in keys}

    def _advantage_of(self, shaped: torch.Tensor, greedy: torch.Tensor | None, G: int):
        a = self.args
        if a.objective == "grpo":
            out = grpo_advantages(shaped, G, a.scale_rewards, eps=1e-4)
            return out.advantages, out.stds
        if a.objective == "rloo":
            return rloo_advantages(shaped, G).advantages, None
        if a.objective == "remax":
            return remax_advantages(shaped, greedy, group_size=G).advantages, None
        return shaped, None  # reinforce: the (shaped) reward itself

    def _advantages(self, batches, shaped, seq_old, greedy, support_size: int):
        """Fill each micro-batch's ``advantages``, ``batch_index``, ``batch_weights`` (and exact mode's per-batch
        token counts); return the step's ``num_items_in_batch`` for dapo (sampled mode)."""
        a = self.args
        G = a.num_generations
        dev = a.device
        if self._generation == "exact":
            groups = exact_groups(support_size, G).to(dev)
            for j, batch in enumerate(batches):
                n_prompts = shaped[j].shape[0] // support_size
                index = torch.cat([groups + p * support_size for p in range(n_prompts)])      # (M, G)
                g = None if greedy is None else greedy.reshape(len(batches), -1)[j].repeat_interleave(groups.shape[0])
                adv, stds = self._advantage_of(shaped[j][index], None if g is None else g[:, None], G)
                batch.update(advantages=adv, batch_index=index, batch_weights=torch.exp(seq_old[j][index].sum(-1)),
                             batch_num_items=batch["completion_mask_c"][index].sum((-2, -1)).double())
            return None
        local = torch.cat(shaped)
        gathered = self.accelerator.gather(local) if a.world_size > 1 else local
        g_all = None
        if greedy is not None:
            g_all = self.accelerator.gather(greedy) if a.world_size > 1 else greedy
        adv, stds = self._advantage_of(gathered, g_all, G)
        if stds is not None:
            zero = torch.isclose(stds.reshape(-1, G)[:, 0], torch.zeros((), dtype=stds.dtype, device=stds.device))
            self._metrics["train"]["frac_reward_zero_std"].append(float(zero.double().mean()))
        mine = adv[a.process_index * local.shape[0]:(a.process_index + 1) * local.shape[0]]
        start = 0
        counted = torch.zeros((), dtype=torch.float64, device=dev)
        for batch, s in zip(batches, shaped, strict=True):
            n = s.shape[0]
            batch.update(advantages=mine[start:start + n][None, :], batch_index=torch.arange(n, device=dev)[None, :],
                         batch_weights=torch.ones(1, dtype=torch.float64, device=dev))
            counted = counted + batch["completion_mask_c"].sum()
            start += n
        if a.loss_type != "dapo":
            return None
        total = self.accelerator.gather(counted.reshape(1)).sum() if a.world_size > 1 else counted
        # the data-parallel all-reduce averages gradients over processes: each divides by total / world_size
        return (total / a.world_size).clamp(min=1.0)

    def _log_round(self, rewards, per_func, rows, gen_time: float, exact_seq_logps=None) -> None:
        """Reward (total, per function), completion lengths, truncation, generation time, over every process. Exact
        mode logs the expected reward ``Σ_y π(y)·r(y)`` per prompt instead (an enumeration has no sample mean)."""
        a = self.args
        m = self._metrics["train"]
        lengths = torch.tensor([float(len(c)) for _, c in rows], dtype=torch.float64)
        eos = set(self._eos_ids(unwrap_model(self.model)))
        clipped = torch.tensor([float(not (c and c[-1] in eos)) for _, c in rows], dtype=torch.float64)
        stats = torch.cat([rewards[:, None], per_func, lengths[:, None], clipped[:, None]], dim=1).to(a.device)
        if a.world_size > 1:
            stats = self.accelerator.gather(stats)
        m["timing/generation_s"].append(gen_time)
        m["generation/tokens"].append(float(stats[:, -2].sum()))
        if exact_seq_logps is not None:
            probs = torch.exp(torch.cat(exact_seq_logps)).cpu()
            n_prompts = float(probs.sum())  # each prompt's completions sum to 1
            m["reward"].append(float((probs * rewards).sum()) / n_prompts)
            for i, f in enumerate(self.reward_funcs):
                m[f"rewards/{f.name}/mean"].append(float((probs * per_func[:, i]).sum()) / n_prompts)
            return
        m["reward"].append(float(stats[:, 0].mean()))
        m["reward_std"].append(float(stats[:, 0].std()) if stats.shape[0] > 1 else 0.0)
        for i, f in enumerate(self.reward_funcs):
            m[f"rewards/{f.name}/mean"].append(float(stats[:, 1 + i].mean()))
        m["completions/mean_length"].append(float(stats[:, -2].mean()))
        m["completions/clipped_ratio"].append(float(stats[:, -1].mean()))
        if gen_time > 0:
            m["generation/tokens_per_s"].append(float(stats[:, -2].sum()) / gen_time / max(a.world_size, 1))

    # ------------------------------------------------------------------ checkpoints

    def _buffer_file(self, folder: str) -> str:
        return os.path.join(folder, f"online_buffer_rank{self.args.process_index}.pt")

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._buffer is None or self.state.global_step % self.args.num_iterations == 0:
            return  # the next step generates anew
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        path = self._buffer_file(folder)
        tmp = f"{path}.tmp"
        cpu = [{k: v.cpu() for k, v in b.items()} for b in self._buffer.batches]
        torch.save({"round": self._buffer.round, "batches": cpu,
                    "num_items": None if self._buffer.num_items is None else self._buffer.num_items.cpu()}, tmp)
        os.replace(tmp, path)

    def _load_buffer(self, round_: int) -> GenerationRound | None:
        path = self._buffer_file(self._resume_from) if self._resume_from else None
        if path is None or not os.path.isfile(path):
            logger.warning("resuming inside generation round %d without its stored batch: generating it again from "
                           "the current policy (the run departs from the uninterrupted one)", round_)
            return None
        data = torch.load(path, weights_only=True)
        if data["round"] != round_:
            return None
        dev = self.args.device
        n = data["num_items"]
        return GenerationRound(round_, [{k: v.to(dev) for k, v in b.items()} for b in data["batches"]],
                               None if n is None else n.to(dev))

    # ------------------------------------------------------------------ the loss

    def _loss_online(self, model, inputs, num_items):
        a = self.args
        tl, m, _ = batch_token_logps(model, inputs, a.logps_chunk_size)
        tl, m = completion_layout(tl, m)
        idx = inputs["batch_index"]                                   # (M, B): the batches D of this micro-batch
        lp, mask = tl[idx], m[idx]                                    # (M, B, L)
        on_policy = a.num_iterations == 1  # the policy has not moved since it sampled: ρ = 1, ∇ρ = ∇log π
        old = None if on_policy else inputs["old_logps"][idx]
        adv = inputs["advantages"]
        place = kl_placement_of(a)
        kl_term = None
        if a.beta > 0 and place != "reward":
            corrected = place == "loss_is"
            kl_term = kl_loss_term(lp, inputs["ref_logps"][idx], mask, a.kl_estimator,
                                   old_token_logps=old if corrected else None, use_bias_correction_kl=corrected)
        if a.objective in SEQUENCE_LEVEL:
            seq = lp.sum(-1, keepdim=True)                            # lp is 0 outside the completion
            ones = torch.ones_like(seq, dtype=torch.bool)
            clip = ppo_clip_loss(seq, None if old is None else old.sum(-1, keepdim=True), adv, ones, a.epsilon,
                                 a.epsilon_high)
            losses = aggregate_token_loss(clip.losses, ones, "seq_sum")
            if kl_term is not None:
                losses = losses + a.beta * aggregate_token_loss(kl_term, mask, "seq_sum")
            flags = ones
        else:
            clip = ppo_clip_loss(lp, old, adv, mask, a.epsilon, a.epsilon_high)
            per_token = clip.losses if kl_term is None else clip.losses + a.beta * kl_term
            extra = {}
            if a.loss_type == "dr_grpo":
                extra["max_completion_length"] = a.max_completion_length
            elif a.loss_type == "dapo":
                extra["num_items_in_batch"] = inputs["batch_num_items"] if "batch_num_items" in inputs else num_items
            losses = aggregate_token_loss(per_token, mask, a.loss_type, **extra)
            flags = mask
        loss = (inputs["batch_weights"].to(losses.dtype) * losses).sum()
        metrics = {"clip_ratio/low_mean": self._global_mean(clip.is_low_clipped, flags),
                   "clip_ratio/high_mean": self._global_mean(clip.is_high_clipped, flags),
                   "clip_ratio/region_mean": self._global_mean(clip.is_clipped, flags)}
        if a.beta > 0:
            metrics["kl"] = (lp - inputs["ref_logps"][idx]).sum(-1).detach()  # Σ_t k1: the completion's KL estimate
        return loss, metrics

    def _global_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` at ``mask`` over every process (one element, the same on each: processes hold
        different numbers of tokens, so per-token metrics cannot be gathered as they are)."""
        stats = torch.stack([values[mask].double().sum(), mask.sum().double()])
        if self.args.world_size > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        return (stats[0] / stats[1].clamp(min=1.0)).reshape(1)

    LOSSES = {**MdpalignTrainer.LOSSES, **dict.fromkeys(ONLINE_OBJECTIVES, _loss_online)}
