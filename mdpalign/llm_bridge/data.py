"""Local datasets -> token ids with the tokens that count marked, and the collators that batch them.

Formats (the ones TRL documents, see https://huggingface.co/docs/trl/dataset_formats):

* language modelling, ``text`` (standard) — every token counts;
* prompt/completion, ``prompt`` + ``completion`` (strings, or lists of chat messages);
* conversational ``messages`` — everything before the **last** message is the prompt, the last
  message (it must be the assistant's) is the completion;
* preference ``prompt`` + ``chosen`` + ``rejected`` (strings or message lists), or implicit-prompt
  ``chosen`` + ``rejected`` message lists whose common leading messages are the prompt;
* class-labelled (C-RLFT): any single-sequence format plus a class column (``class`` by default,
  e.g. ``expert`` / ``suboptimal``) and optionally a weight column. A class prefix (OpenChat style)
  is prepended to the prompt text, or to the first message's content for conversations.

Tokenisation. Strings: ``tok(prompt)`` and ``tok(prompt + completion + eos)`` (EOS appended when
the completion does not already end with it, as TRL does). Messages: the tokenizer's chat template,
the prompt rendered with ``add_generation_prompt=True``. The tokenised prompt must be a prefix of
the tokenised prompt+completion; when it is not (a merge across the boundary, or a template that
renders the prompt differently alone), that is a :class:`TokenizationBoundaryError` naming the
example — TRL only warns and silently trains on a context the model never sees at inference.

Which tokens count (enter every sequence log-probability and every loss): the completion tokens,
after truncation, except input position 0 (nothing predicts it). See :func:`counted_token_mask`.
Truncation: ``max_prompt_length`` keeps the last prompt tokens; ``max_length`` then keeps the start
of prompt+completion. An example left with no completion token (for preferences: in either
response) is dropped and reported (count and indices, logged) — never trained as 0/0 = NaN.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from mdpalign.errors import MdpalignError

logger = logging.getLogger(__name__)

PREFERENCE_OBJECTIVES = ("dpo", "orpo")


class DatasetError(MdpalignError, ValueError):
    """The training data cannot be used as given."""


class EmptyDatasetError(DatasetError):
    """No example to train on (empty file, or every example dropped)."""


class MissingColumnsError(DatasetError):
    """The data lacks the columns the chosen objective needs."""


class TokenizationBoundaryError(DatasetError):
    """The tokenised prompt is not a prefix of the tokenised prompt+completion."""


# ----------------------------------------------------------------------------- loading


def load_records(path: str, split: str = "train") -> list[dict[str, Any]]:
    """Read a local JSONL / JSON / parquet file or a ``save_to_disk`` directory into a list of rows."""
    if path is None:
        raise DatasetError("dataset_path is not set")
    if not os.path.exists(path):
        raise DatasetError(f"dataset_path does not exist: {path}")
    try:
        rows = _read_rows(path, split)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not rows:
        raise EmptyDatasetError(f"{path}: the dataset is empty")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
    return rows


def _read_rows(path: str, split: str) -> list:
    if os.path.isdir(path):
        ds = load_from_disk(path)
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise DatasetError(f"{path}: no split {split!r}; available: {sorted(ds)}")
            ds = ds[split]
        rows = ds.to_list()
    elif path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}:{lineno}: not valid JSON: {err}") from None
    elif path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON: {err}") from None
        if isinstance(data, dict) and split in data:
            data = data[split]
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of rows (or {{{split!r}: [...]}})")
        rows = data
    elif path.endswith(".parquet"):
        try:
            rows = Dataset.from_parquet(path).to_list()
        except pyarrow.ArrowInvalid as err:  # datasets passes pyarrow's own error through
            raise DatasetError(f"{path}: not a valid parquet file: {' '.join(str(err).split())}") from None
    else:
        raise DatasetError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or a save_to_disk directory)")
    return rows


# ----------------------------------------------------------------------------- tokenisation


@dataclass(frozen=True)
class TokenizeSettings:
    objective: str
    max_length: int | None = None
    max_prompt_length: int | None = None
    class_column: str = "class"
    weight_column: str | None = None
    class_weights: dict[str, float] | None = None
    class_prefixes: dict[str, str] | None = None


@dataclass
class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenised examples (dicts of id lists) plus what tokenisation dropped and why."""

    examples: list[dict[str, Any]]
    preference: bool
    dropped: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_columns(rows: list[dict], settings: TokenizeSettings) -> str:
    """Return the format name of the rows, or raise MissingColumnsError naming what is missing."""
    cols = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != cols:
            missing = sorted(cols - set(row))
            extra = sorted(set(row) - cols)
            raise MissingColumnsError(f"row {i} has different columns from row 0 (missing {missing}, extra {extra})")
    if settings.objective in PREFERENCE_OBJECTIVES:
        need = {"chosen", "rejected"}
        if not need <= cols:
            raise MissingColumnsError(
                f"objective {settings.objective!r} needs columns 'chosen' and 'rejected' (and usually 'prompt'); "
                f"found {sorted(cols)}"
            )
        return "preference" if "prompt" in cols else "implicit_preference"
    if settings.objective == "crlft":
        if settings.class_column not in cols and not (settings.weight_column and settings.weight_column in cols):
            raise MissingColumnsError(
                f"objective 'crlft' needs a class column {settings.class_column!r} or a weight column "
                f"{settings.weight_column!r}; found {sorted(cols)}"
            )
        if settings.weight_column is not None and settings.weight_column not in cols:
            raise MissingColumnsError(f"weight column {settings.weight_column!r} not in {sorted(cols)}")
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "text" in cols:
        return "text"
    raise MissingColumnsError(
        f"objective {settings.objective!r} needs 'prompt'+'completion', 'messages' or 'text' columns; "
        f"found {sorted(cols)}"
    )


def _render_ids(tokenizer, value, *, generation_prompt: bool) -> list[int]:
    if isinstance(value, list):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DatasetError("conversational data needs a tokenizer with a chat_template")
        out = tokenizer.apply_chat_template(
            value, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )
        return list(out["input_ids"])
    return list(tokenizer(value)["input_ids"])


def _split_ids(tokenizer, prompt, completion, index: int, what: str = "completion") -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) with the prefix check that makes them a faithful split."""
    if isinstance(prompt, list) != isinstance(completion, list):
        raise DatasetError(f"example {index}: prompt and {what} must both be strings or both be message lists")
    for name, value in (("prompt", prompt), (what, completion)):
        if not isinstance(value, (str, list)):  # a number or a null in the file: say so before the tokenizer does
            raise DatasetError(f"example {index}: {name} must be a string or a list of {{role, content}} messages, "
                               f"got {type(value).__name__} {value!r}")
    if isinstance(prompt, list):
        prompt_ids = _render_ids(tokenizer, prompt, generation_prompt=True)
        full_ids = _render_ids(tokenizer, prompt + completion, generation_prompt=False)
    else:
        eos = tokenizer.eos_token
        if eos is not None and not completion.endswith(eos):
            completion = completion + eos
        prompt_ids = _render_ids(tokenizer, prompt, generation_prompt=False) if prompt else []
        full_ids = _render_ids(tokenizer, prompt + completion, generation_prompt=False)
    n = len(prompt_ids)
    if full_ids[:n] != prompt_ids:
        # the first difference within the shorter of the two (they differ in length when one is cut short)
        k = next((j for j, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
                 min(n, len(full_ids)))
        raise TokenizationBoundaryError(
            f"example {index}: the tokenised prompt is not a prefix of the tokenised prompt+{what} "
            f"(they differ from token {k}: prompt alone ends {tokenizer.decode(prompt_ids[k:])!r}, "
            f"prompt+{what} continues {tokenizer.decode(full_ids[k:k + max(1, n - k)])!r}). "
            "End the prompt on a token boundary (e.g. a trailing space or newline belongs to the prompt), "
            "or use a chat template that renders the prompt the same way alone and followed by a reply."
        )
    return prompt_ids, full_ids[n:]


def _with_prefix(prompt, prefix: str):
    if not prefix:
        return prompt
    if isinstance(prompt, list):
        if not prompt:
            raise DatasetError("cannot apply a class prefix to an empty conversation")
        first = dict(prompt[0])
        first["content"] = prefix + first["content"]
        return [first] + list(prompt[1:])
    return prefix + prompt


def _truncate(prompt_ids: list[int], completions: list[list[int]], settings: TokenizeSettings):
    if settings.max_prompt_length is not None:
        prompt_ids = prompt_ids[-settings.max_prompt_length :]
    if settings.max_length is not None:
        room = max(0, settings.max_length - len(prompt_ids))
        prompt_ids = prompt_ids[: settings.max_length]
        completions = [c[:room] for c in completions]
    return prompt_ids, completions


def _example_weight(row: dict, index: int, settings: TokenizeSettings) -> float:
    if settings.weight_column is not None:
        w = row[settings.weight_column]
        if not isinstance(w, (int, float)) or not (w >= 0) or w != w or w == float("inf"):
            raise DatasetError(f"example {index}: weight {w!r} in column {settings.weight_column!r} is not a finite "
                               "number >= 0")
        return float(w)
    cls = row[settings.class_column]
    weights = settings.class_weights or {}
    if cls not in weights:
        raise DatasetError(f"example {index}: class {cls!r} has no weight in crlft_class_weights {sorted(weights)}")
    return float(weights[cls])


def tokenize_records(rows: Sequence[dict], tokenizer, settings: TokenizeSettings) -> TokenizedDataset:
    """Tokenise rows for ``settings.objective``; see the module docstring for formats and rules."""
    if len(rows) == 0:
        raise EmptyDatasetError("the dataset is empty")
    fmt = _check_columns(list(rows), settings)
    preference = fmt in ("preference", "implicit_preference")
    examples: list[dict[str, Any]] = []
    dropped: list[int] = []
    for i, row in enumerate(rows):
        if preference:
            chosen, rejected = row["chosen"], row["rejected"]
            if fmt == "implicit_preference":
                if not (_is_conversation(chosen) and _is_conversation(rejected)):
                    raise MissingColumnsError(
                        f"example {i}: without a 'prompt' column, 'chosen' and 'rejected' must be message lists "
                        "sharing their leading (prompt) messages"
                    )
                k = 0
                while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
                    k += 1
                prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
            else:
                prompt = row["prompt"]
            p_c, c_ids = _split_ids(tokenizer, prompt, chosen, i, "chosen")
            p_r, r_ids = _split_ids(tokenizer, prompt, rejected, i, "rejected")
            if p_c != p_r:  # pragma: no cover - both equal tokenize(prompt) by construction
                raise TokenizationBoundaryError(f"example {i}: prompt tokenises differently before chosen and rejected")
            p_ids, (c_ids, r_ids) = _truncate(p_c, [c_ids, r_ids], settings)
            if not c_ids or not r_ids:
                dropped.append(i)
                continue
            examples.append({"prompt_ids": p_ids, "chosen_ids": c_ids, "rejected_ids": r_ids, "index": i})
            continue

        if fmt == "prompt_completion":
            prompt, completion = row["prompt"], row["completion"]
        elif fmt == "messages":
            msgs = row["messages"]
            if not _is_conversation(msgs) or not msgs:
                raise DatasetError(f"example {i}: 'messages' must be a non-empty list of {{role, content}} dicts")
            if msgs[-1]["role"] != "assistant":
                raise DatasetError(f"example {i}: the last message must be the assistant's (it is the completion), "
                                   f"got role {msgs[-1]['role']!r}")
            prompt, completion = msgs[:-1], msgs[-1:]
        else:  # text: the whole text is the completion
            prompt, completion = "", row["text"]
        out: dict[str, Any] = {"index": i}
        if settings.objective == "crlft":
            cls = row.get(settings.class_column)
            prefix = (settings.class_prefixes or {}).get(cls, "") if cls is not None else ""
            if settings.class_prefixes and cls is not None and cls not in settings.class_prefixes:
                raise DatasetError(f"example {i}: class {cls!r} has no prefix in crlft_class_prefixes "
                                   f"{sorted(settings.class_prefixes)}")
            prompt = _with_prefix(prompt, prefix)
            out["weight"] = _example_weight(row, i, settings)
        p_ids, c_ids = _split_ids(tokenizer, prompt, completion, i)
        p_ids, (c_ids,) = _truncate(p_ids, [c_ids], settings)
        if not p_ids and len(c_ids) < 2 or not c_ids:
            dropped.append(i)
            continue
        out.update(prompt_ids=p_ids, completion_ids=c_ids)
        examples.append(out)

    if dropped:
        logger.warning(
            "dropped %d of %d examples whose completion is empty after truncation (max_length=%s, "
            "max_prompt_length=%s): indices %s",
            len(dropped), len(rows), settings.max_length, settings.max_prompt_length, dropped,
        )
    if not examples:
        raise EmptyDatasetError(
            f"all {len(rows)} examples were dropped: their completions are empty after truncation "
            f"(max_length={settings.max_length}, max_prompt_length={settings.max_prompt_length})"
        )
    return TokenizedDataset(examples=examples, preference=preference, dropped=dropped)


def counted_token_mask(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[bool]:
    """Which input positions of ``prompt_ids + completion_ids`` enter the loss.

    mask[t] = t >= len(prompt_ids) and t >= 1: completion tokens, each scored as
    log pi(x_t | x_<t); position 0 has no context and is never scored.
    """
    n_p, n = len(prompt_ids), len(prompt_ids) + len(completion_ids)
    return [t >= n_p and t >= 1 for t in range(n)]


# ----------------------------------------------------------------------------- collation


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class Collator:
    """Batch tokenised examples.

    Padded (default): ``input_ids``/``attention_mask``/``completion_mask`` of shape (R, T), right
    padding, where R = B rows for single-sequence data and R = 2B rows — the B chosen, then the B
    rejected — for preferences, so one forward scores both. ``completion_mask`` is
    :func:`counted_token_mask` per row.

    Padding-free: the same R sequences concatenated into one row (1, N), ``position_ids`` restarting
    at 0 for each sequence, no ``attention_mask`` (transformers then derives a block-diagonal causal
    mask from the position_ids; flash-attention uses its varlen path), and ``seq_lengths`` (R,)
    to unpack the per-token log-probs into the padded (R, T) layout.
    """

    pad_token_id: int
    padding_free: bool = False

    def sequences(self, examples: list[dict]) -> tuple[list[list[int]], list[list[bool]]]:
        if "chosen_ids" in examples[0]:
            seqs = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + [
                e["prompt_ids"] + e["rejected_ids"] for e in examples
            ]
            masks = [counted_token_mask(e["prompt_ids"], e["chosen_ids"]) for e in examples] + [
                counted_token_mask(e["prompt_ids"], e["rejected_ids"]) for e in examples
            ]
        else:
            seqs = [e["prompt_ids"] + e["completion_ids"] for e in examples]
            masks = [counted_token_mask(e["prompt_ids"], e["completion_ids"]) for e in examples]
        return seqs, masks

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = self.sequences(examples)
        batch: dict[str, torch.Tensor] = {}
        if self.padding_free:
            batch["input_ids"] = torch.tensor([sum(seqs, [])], dtype=torch.long)
            batch["position_ids"] = torch.tensor([[t for s in seqs for t in range(len(s))]], dtype=torch.long)
            batch["completion_mask"] = torch.tensor([sum(masks, [])], dtype=torch.bool)
            batch["seq_lengths"] = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        else:
            batch["input_ids"] = _pad(seqs, self.pad_token_id)
            batch["attention_mask"] = _pad([[1] * len(s) for s in seqs], 0)
            batch["completion_mask"] = _pad([[int(m) for m in ms] for ms in masks], 0).bool()
        # per-example floats (class weights, reference log-probs) are looked up by index in the trainer,
        # not carried here: DeepSpeed casts every float input to the model dtype (bf16 ruins a log-prob of -200)
        batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        return batch
