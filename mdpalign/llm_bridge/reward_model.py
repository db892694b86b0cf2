r"""Reward models (``objective: reward``): a sequence classifier with one output, its scores, its loss.

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` built from a causal-LM checkpoint, as TRL's
``RewardTrainer`` builds it: the backbone's weights, a new linear score head (random, so ``seed`` is set before it is
made), the LM head dropped. ``config.pad_token_id`` is the tokenizer's pad token, because transformers reads the
score at the **rightmost token that is not the pad token** (``GenericForSequenceClassification``): the last token of
each right-padded row. With a tokenizer whose pad token is its EOS token (no pad token of its own), that skips the
EOS appended to every response and reads the token before it, in training and in every later use of the model
alike; TRL behaves the same.

The loss (:func:`reward_loss`) is the Bradley–Terry loss of :mod:`mdpalign.objectives.reward`; no loss math here::

    L = mean_i −log σ(r_c,i − r_r,i − m_i)  +  c · mean_i (r_c,i + r_r,i)²

over the pairs of the micro-batch (``m_i`` the ``margin`` column, 0 without one; ``c`` =
``center_rewards_coefficient``, no term when unset): TRL's ``RewardTrainer.compute_loss`` reduction. Micro-batches
of one optimizer step are averaged (Trainer divides by the accumulation steps, DDP averages over processes), which
is the mean over all pairs of the step when micro-batches have equal size. Departure from TRL: the scores are
upcast to float32 before the loss (TRL takes the bf16 logits of a bf16 model as they are), so the loss and the
logged accuracy of a bf16 model are not rounded to 8 bits; in fp32 the numbers are TRL's (tested to 1e-5).

Logged (TRL's names where TRL has them): ``loss``, ``accuracy`` (fraction of pairs with r_c > r_r **strictly**: a
tie is wrong), ``margin`` (mean r_c − r_r, without the margin column), ``mean_reward`` / ``min_reward`` /
``max_reward`` (over every chosen and rejected score of the batch, all processes), ``rewards/chosen`` and
``rewards/rejected`` (mean score of each side; TRL's reward trainer logs neither, its DPO trainer uses these names).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

from mdpalign.errors import MdpalignError
from mdpalign.llm_bridge.config import TrainConfig
from mdpalign.llm_bridge.models import unwrap_model
from mdpalign.objectives import bradley_terry_loss, center_rewards_penalty

logger = logging.getLogger(__name__)

#: class-name endings transformers gives a sequence classifier's architecture in ``config.json``
SEQUENCE_CLASSIFIER_SUFFIX = "ForSequenceClassification"
# the keys a causal-LM checkpoint loaded as a sequence classifier is expected to miss (the new head) and to have
# over (the LM head): not worth a load report to a user who asked for exactly that
_NEW_HEAD_KEYS = (r"^score\.", r"^classifier\.")
_DROPPED_HEAD_KEYS = (r"^lm_head\.",)


class RewardModelError(MdpalignError, ValueError):
    """A model that cannot be used as a reward model (not a one-output sequence classifier)."""


def is_sequence_classifier(config) -> bool:
    """Whether a model config (``config.json``) names a sequence-classification architecture."""
    return any(a.endswith(SEQUENCE_CLASSIFIER_SUFFIX) for a in (getattr(config, "architectures", None) or []))


@contextlib.contextmanager
def _expected_head_keys_quiet(model_class):
    """While loading, transformers does not report the new score head as missing nor the LM head as unexpected."""
    names = {"_keys_to_ignore_on_load_missing": _NEW_HEAD_KEYS,
             "_keys_to_ignore_on_load_unexpected": _DROPPED_HEAD_KEYS}
    own = {name: model_class.__dict__[name] for name in names if name in model_class.__dict__}
    for name, keys in names.items():
        setattr(model_class, name, [*(getattr(model_class, name, None) or []), *keys])
    try:
        yield
    finally:
        for name in names:
            if name in own:
                setattr(model_class, name, own[name])
            else:  # inherited before: inherited again
                delattr(model_class, name)


def load_reward_model(path: str, cfg: TrainConfig, tokenizer):
    """A one-output sequence classifier from ``path``: a causal-LM checkpoint (new score head, seeded by
    ``cfg.seed``) or a reward model saved earlier (its head kept), with the config's dtype and attention."""
    config = AutoConfig.from_pretrained(path)
    if is_sequence_classifier(config) and config.num_labels != 1:
        raise RewardModelError(f"{path} is a sequence classifier with num_labels={config.num_labels}; a reward model "
                               "has one output (num_labels=1)")
    kwargs = {"num_labels": 1, "dtype": "auto" if cfg.torch_dtype == "auto" else getattr(torch, cfg.torch_dtype)}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    # the new score head is random: `seed` must fix it, the same in every process and every run
    set_seed(cfg.seed)
    mapping = AutoModelForSequenceClassification._model_mapping
    # an architecture without a sequence classifier: from_pretrained below says so in its own words
    quiet = _expected_head_keys_quiet(mapping[type(config)]) if type(config) in mapping else contextlib.nullcontext()
    with quiet:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    if not is_sequence_classifier(config):
        logger.info("%s: built a %s with a new score head (seed %d) on the causal LM's backbone", path,
                    type(model).__name__, cfg.seed)
    return prepare_reward_model(model, tokenizer)


def prepare_reward_model(model, tokenizer):
    """Check that ``model`` (possibly PEFT-wrapped) is a one-output sequence classifier and give it the
    tokenizer's pad token id, where transformers looks for the end of each row."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if not name.endswith(SEQUENCE_CLASSIFIER_SUFFIX):
        raise RewardModelError(f"objective 'reward' trains a sequence classifier (AutoModelForSequenceClassification,"
                               f" num_labels=1); got a {name}")
    if base.config.num_labels != 1:
        raise RewardModelError(f"a reward model has one output (num_labels=1); {name} has {base.config.num_labels}")
    base.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model


def sequence_rewards(model, batch: dict) -> torch.Tensor:
    """The score of every row of a collated (padded) batch: ``(R,)`` float32."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits
    if logits.dim() != 2 or logits.shape != (batch["input_ids"].shape[0], 1):
        raise RewardModelError(f"a reward model returns one score per row, shape (rows, 1); got logits of shape "
                               f"{tuple(logits.shape)}")
    return logits[:, 0].float()


def reward_loss(trainer, model, inputs, _num_items):
    """The loss of ``objective: reward`` for :attr:`MdpalignTrainer.LOSSES` (see the module docstring)."""
    rewards = sequence_rewards(model, inputs)
    b = rewards.shape[0] // 2
    chosen, rejected = rewards[:b], rewards[b:]
    first = trainer._examples[int(inputs["index"][0])]
    margin = trainer._lookup(inputs, "margin", rewards.device) if "margin" in first else None
    out = bradley_terry_loss(chosen, rejected, margin)
    loss = out.losses.mean()
    coefficient = trainer.args.center_rewards_coefficient
    if coefficient is not None:
        loss = loss + center_rewards_penalty(chosen, rejected, coefficient).mean()
    every = trainer.accelerator.gather(rewards.detach())  # a collective: every process computes its loss here
    metrics = {
        "accuracy": out.accuracies, "margin": out.margins, "mean_reward": rewards,
        "min_reward": every.min(), "max_reward": every.max(),
        "rewards/chosen": chosen, "rewards/rejected": rejected,
    }
    return loss, metrics


@torch.no_grad()
def score_dataset(model, dataset, collator, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores, float64, of every example of a tokenised reward dataset, in its order.

    Each distinct token sequence is scored once, so identical responses get identical scores: a tie is a tie, not a
    coin flip on the rounding of two rows of a batch (CPU matmuls round the same row differently by position)."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    unique: dict[tuple[int, ...], int] = {}
    for e in dataset.examples:
        for key in ("chosen_ids", "rejected_ids"):
            unique.setdefault(tuple(e["prompt_ids"] + e[key]), len(unique))
    sequences = [{"prompt_ids": [], "completion_ids": list(s), "index": i} for s, i in unique.items()]
    scores = []
    try:
        for start in range(0, len(sequences), batch_size):
            batch = {k: v.to(device) for k, v in collator(sequences[start:start + batch_size]).items()}
            scores.append(sequence_rewards(model, batch).double().cpu())
    finally:
        model.train(was_training)
    flat = torch.cat(scores)
    chosen = [flat[unique[tuple(e["prompt_ids"] + e["chosen_ids"])]] for e in dataset.examples]
    rejected = [flat[unique[tuple(e["prompt_ids"] + e["rejected_ids"])]] for e in dataset.examples]
    return torch.stack(chosen), torch.stack(rejected)
