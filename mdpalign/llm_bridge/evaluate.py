r"""``mdpalign eval reward``: preference accuracy as RewardBench scores it, for a reward model or a DPO policy.

Scoring (RewardBench, Lambert et al. 2024, arXiv 2403.13787): a pair is right when the chosen response's score is
**strictly** above the rejected one's; a tie, or a pair that could not be scored, is wrong. With a ``subset`` column
each subset gets its own accuracy, and the overall number is the example-count-weighted mean of the subset
accuracies, Σ_s n_s·acc_s / Σ_s n_s (RewardBench's weighting within a section; it is the accuracy over all pairs).

What the score is depends on the checkpoint (read from its ``config.json``, or ``adapter_config.json`` for a LoRA
adapter):

* a **reward model** (a ``...ForSequenceClassification`` with one output, as ``objective: reward`` saves it): its
  score of prompt + response, tokenised as in training (:mod:`~mdpalign.llm_bridge.reward_data`);
* a **causal LM** (a DPO-trained policy): the implicit reward ``Σ_t log π(y_t | x, y_<t) − Σ_t log π_ref(y_t | x,
  y_<t)`` over the response tokens (:mod:`~mdpalign.llm_bridge.data`'s counted tokens), the DPO reward without its
  β (accuracy does not depend on β > 0). The reference is ``--ref-model``; for a LoRA policy without one, its base
  model (the adapter switched off), which is DPO's reference when trained with ``reference: adapter_disabled`` or
  without ``ref_model_name_or_path``.

Data: a preference file in any format training reads (``prompt`` + ``chosen`` + ``rejected``, strings or messages;
the DPO score needs the prompt, explicit or as the shared leading messages), optional ``subset``. Nothing is cut:
every sequence is scored whole.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mdpalign.errors import MdpalignError

#: the column that names each pair's subset (RewardBench's)
SUBSET_COLUMN = "subset"
#: what scores a checkpoint's pairs
KINDS = ("reward_model", "implicit_reward")


class RewardEvalError(MdpalignError, ValueError):
    """The model, reference or data given to ``mdpalign eval reward`` cannot be scored as asked."""


# ----------------------------------------------------------------------------- RewardBench's arithmetic


@dataclass(frozen=True)
class SubsetAccuracy:
    """n pairs, of which ``correct`` have chosen > rejected strictly and ``ties`` chosen == rejected."""

    n: int
    correct: int
    ties: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def rewardbench_accuracy(chosen: Sequence[float], rejected: Sequence[float],
                         subsets: Sequence[str] | None = None) -> tuple[dict[str, SubsetAccuracy], float]:
    """Per-subset counts (one subset ``"all"`` without ``subsets``) and the example-count-weighted mean accuracy.

    A pair counts as correct iff ``chosen > rejected``: ties and NaN scores lose."""
    if len(chosen) != len(rejected) or (subsets is not None and len(subsets) != len(chosen)):
        raise ValueError(f"chosen ({len(chosen)}), rejected ({len(rejected)}) and subsets "
                         f"({'none' if subsets is None else len(subsets)}) must have one entry per pair")
    if not len(chosen):
        raise RewardEvalError("no preference pair to score")
    names = ["all"] * len(chosen) if subsets is None else [str(s) for s in subsets]
    counts: dict[str, list[int]] = {}
    for name, c, r in zip(names, chosen, rejected, strict=True):
        n_correct_ties = counts.setdefault(name, [0, 0, 0])
        n_correct_ties[0] += 1
        n_correct_ties[1] += int(c > r)
        n_correct_ties[2] += int(c == r)
    table = {name: SubsetAccuracy(*v) for name, v in counts.items()}
    weighted = sum(s.n * s.accuracy for s in table.values()) / sum(s.n for s in table.values())
    return table, weighted


# ----------------------------------------------------------------------------- which checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """A model directory: what it is (``reward_model`` or ``causal_lm``) and, for a LoRA adapter, its base."""

    path: str
    kind: str
    adapter_base: str | None = None


def _read_json(file: str, what: str, path: str) -> dict:
    """A model directory's JSON config; a broken one is a RewardEvalError naming the file, not json's traceback."""
    try:
        with open(file, encoding="utf-8") as fh:
            info = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise RewardEvalError(f"{what} {path!r}: {os.path.basename(file)} is not valid JSON: {err}") from None
    if not isinstance(info, dict):
        raise RewardEvalError(f"{what} {path!r}: {os.path.basename(file)} is not a JSON object")
    return info


def inspect_checkpoint(path: str, what: str = "--model") -> Checkpoint:
    """Read ``config.json`` (or ``adapter_config.json``) of ``path``: a reward model or a causal LM."""
    if not os.path.isdir(path):
        raise RewardEvalError(f"{what} {path!r}: no such model directory")
    adapter = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter):
        info = _read_json(adapter, what, path)
        task, base = info.get("task_type"), info.get("base_model_name_or_path")
        kinds = {"SEQ_CLS": "reward_model", "CAUSAL_LM": "causal_lm"}
        if task not in kinds:
            raise RewardEvalError(f"{what} {path!r}: a PEFT adapter of task {task!r}; expected SEQ_CLS (a reward "
                                  "model) or CAUSAL_LM (a policy)")
        if not base:
            raise RewardEvalError(f"{what} {path!r}: adapter_config.json names no base_model_name_or_path")
        return Checkpoint(path, kinds[task], adapter_base=base)
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise RewardEvalError(f"{what} {path!r}: no config.json (nor adapter_config.json); not a model directory")
    info = _read_json(config, what, path)
    archs = info.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        labels = len(info["id2label"]) if "id2label" in info else info.get("num_labels", 2)
        if labels != 1:
            raise RewardEvalError(f"{what} {path!r}: a sequence classifier with {labels} outputs; a reward model "
                                  "has one (num_labels=1)")
        return Checkpoint(path, "reward_model")
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return Checkpoint(path, "causal_lm")
    raise RewardEvalError(f"{what} {path!r}: architectures {archs} are neither a sequence classifier (a reward "
                          "model) nor a causal LM")


# ----------------------------------------------------------------------------- scoring


@dataclass
class RewardEval:
    """The result of :func:`evaluate_reward`; ``to_dict`` is the ``--json`` output."""

    model: str
    ref_model: str | None
    data: str
    kind: str
    subsets: dict[str, SubsetAccuracy]
    accuracy: float
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(s.n for s in self.subsets.values())

    @property
    def ties(self) -> int:
        return sum(s.ties for s in self.subsets.values())

    def to_dict(self) -> dict:
        return {"model": self.model, "ref_model": self.ref_model, "data": self.data, "kind": self.kind,
                "n": self.n, "accuracy": self.accuracy, "ties": self.ties,
                "subsets": {k: {**asdict(v), "accuracy": v.accuracy} for k, v in self.subsets.items()}}

    def table(self) -> str:
        how = ("score of the reward model" if self.kind == "reward_model" else
               f"implicit reward: sum log pi - sum log pi_ref, reference {self.ref_model or 'the adapter base model'}")
        width = max(len("all (weighted)"), *(len(k) for k in self.subsets))
        lines = [f"{self.model} on {self.data} ({how}); a pair is right iff chosen > rejected, ties lose",
                 f"{'subset':<{width}}  {'n':>6}  {'accuracy':>8}  {'ties':>5}"]
        rows = list(self.subsets.items())
        if len(rows) > 1 or "all" not in self.subsets:
            rows.append(("all (weighted)", SubsetAccuracy(self.n, sum(s.correct for s in self.subsets.values()),
                                                          self.ties)))
        for name, s in rows:
            acc = self.accuracy if name == "all (weighted)" else s.accuracy
            lines.append(f"{name:<{width}}  {s.n:>6}  {acc:>8.4f}  {s.ties:>5}")
        return "\n".join(lines)


def _device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load_reward(ckpt: Checkpoint, cfg, tok):
    from mdpalign.llm_bridge.reward_model import load_reward_model, prepare_reward_model

    if ckpt.adapter_base is None:
        return load_reward_model(ckpt.path, cfg, tok)
    from peft import PeftModel

    base = load_reward_model(ckpt.adapter_base, cfg, tok)  # its new head is replaced by the adapter's saved one
    return prepare_reward_model(PeftModel.from_pretrained(base, ckpt.path), tok)


def _load_causal(ckpt: Checkpoint, cfg):
    from mdpalign.llm_bridge.models import load_model

    if ckpt.adapter_base is None:
        return load_model(ckpt.path, cfg)
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(ckpt.adapter_base, cfg), ckpt.path)


def _rows_and_subsets(data: str, split: str):
    from mdpalign.llm_bridge.data import load_records

    rows = load_records(data, split)
    subsets = [row.get(SUBSET_COLUMN) for row in rows] if SUBSET_COLUMN in rows[0] else None
    if subsets is not None and any(s is None for s in subsets):
        i = next(i for i, s in enumerate(subsets) if s is None)
        raise RewardEvalError(f"{data}: row {i} has no {SUBSET_COLUMN!r} value while row 0 has one")
    return rows, subsets


def _scores_by_row(n_rows: int, dataset, chosen, rejected) -> tuple[list[float], list[float]]:
    """Scores in row order; a row tokenisation dropped keeps NaN, which loses."""
    c_all, r_all = [math.nan] * n_rows, [math.nan] * n_rows
    for e, c, r in zip(dataset.examples, chosen.tolist(), rejected.tolist(), strict=True):
        c_all[e["index"]], r_all[e["index"]] = c, r
    return c_all, r_all


def evaluate_reward(model: str, data: str, ref_model: str | None = None, *, split: str = "train",
                    batch_size: int = 8, torch_dtype: str = "float32", device: str | None = None,
                    logps_chunk_size: int = 1024) -> RewardEval:
    """Score every pair of ``data`` with ``model`` (see the module docstring) and count as RewardBench does."""
    ckpt = inspect_checkpoint(model)
    if ckpt.kind == "reward_model" and ref_model is not None:
        raise RewardEvalError(f"--ref-model is for a policy scored by its implicit reward; {model!r} is a reward model "
                              "(scored by its own head): remove --ref-model")
    if ckpt.kind == "causal_lm" and ref_model is None and ckpt.adapter_base is None:
        raise RewardEvalError(f"{model!r} is a causal LM, scored by its implicit reward sum log pi - sum log pi_ref: "
                              "pass its reference with --ref-model DIR")
    ref_ckpt = inspect_checkpoint(ref_model, "--ref-model") if ref_model is not None else None
    if ref_ckpt is not None and ref_ckpt.kind != "causal_lm":
        raise RewardEvalError(f"--ref-model {ref_model!r} is a reward model; the reference of an implicit reward is a "
                              "causal LM")
    if not os.path.exists(data):
        raise RewardEvalError(f"--data {data!r}: no such file or directory")
    rows, subsets = _rows_and_subsets(data, split)

    # heavy imports only once the arguments are known to be sound
    from mdpalign.llm_bridge.config import TrainConfig
    from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records
    from mdpalign.llm_bridge.logps import install_logps_forward
    from mdpalign.llm_bridge.models import load_tokenizer
    from mdpalign.llm_bridge.reference import reference_sequence_logps
    from mdpalign.llm_bridge.reward_data import tokenize_reward_records
    from mdpalign.llm_bridge.reward_model import score_dataset

    where = _device(device)
    tok = load_tokenizer(model)
    cfg = TrainConfig(output_dir=os.devnull, torch_dtype=torch_dtype, report_to="none", use_cpu=where.type == "cpu",
                      objective="reward" if ckpt.kind == "reward_model" else "dpo")
    collate = Collator(pad_token_id=tok.pad_token_id)
    if ckpt.kind == "reward_model":
        dataset = tokenize_reward_records(rows, tok, max_length=None)
        scorer = _load_reward(ckpt, cfg, tok).to(where)
        chosen, rejected = score_dataset(scorer, dataset, collate, batch_size, where)
        kind = "reward_model"
    else:
        import torch

        dataset = tokenize_records(rows, tok, TokenizeSettings("dpo"))
        policy = _load_causal(ckpt, cfg).to(where).eval()
        reference = _load_causal(ref_ckpt, cfg).to(where).eval() if ref_ckpt is not None else None
        for m in (policy, reference):
            if m is not None:
                install_logps_forward(m)
        parts = []
        for start in range(0, len(dataset), batch_size):
            batch = {k: v.to(where) for k, v in collate(dataset.examples[start:start + batch_size]).items()}
            pc, pr = reference_sequence_logps(None, policy, batch, logps_chunk_size)
            # reference None: the policy's adapter switched off (reference_sequence_logps's convention)
            rc, rr = reference_sequence_logps(policy, reference, batch, logps_chunk_size)
            parts.append((pc - rc, pr - rr))
        chosen = torch.cat([p[0] for p in parts]).cpu()
        rejected = torch.cat([p[1] for p in parts]).cpu()
        kind = "implicit_reward"
    c_all, r_all = _scores_by_row(len(rows), dataset, chosen, rejected)
    table, weighted = rewardbench_accuracy(c_all, r_all, subsets)
    return RewardEval(model=model, ref_model=ref_model, data=data, kind=kind, subsets=table, accuracy=weighted,
                      chosen_scores=c_all, rejected_scores=r_all)
