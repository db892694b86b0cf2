"""Preference rows -> the token ids a reward model scores: each response whole, prompt included.

Formats (TRL's preference formats, https://huggingface.co/docs/trl/dataset_formats#preference):

* explicit prompt: ``prompt`` + ``chosen`` + ``rejected``, all strings or all lists of chat messages;
* implicit prompt: ``chosen`` + ``rejected`` alone, each the whole text (strings) or the whole conversation
  (message lists; the shared leading messages are the prompt);
* an optional ``margin`` column (a finite number per pair): the loss is ``−log σ(r_c − r_r − margin)``
  (:func:`mdpalign.objectives.bradley_terry_loss`; Llama 2, arXiv 2307.09288, Eq. 2).

Tokenisation, as TRL's ``RewardTrainer``: strings are ``tok(prompt + response + eos)`` (EOS appended when the
response does not already end with it); messages are the chat template of ``prompt + response`` without a
generation prompt. A reward model reads its score at the end of the sequence, so the prompt/response boundary plays
no part (unlike DPO, no prefix check). Pairs in which either sequence is longer than ``max_length`` are **dropped**
and reported (count and indices, logged), as TRL filters them: cutting the end off would read the score in the
middle of a response, and a long shared prompt cut at ``max_length`` would make chosen and rejected identical.

An example holds ``prompt_ids`` (always empty: the whole sequence is the response), ``chosen_ids``,
``rejected_ids``, ``index`` (the row) and, with a margin column, ``margin``; the collator of
:mod:`mdpalign.llm_bridge.data` batches them (B chosen rows, then B rejected rows).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from mdpalign.llm_bridge.data import (
    DatasetError,
    EmptyDatasetError,
    MissingColumnsError,
    TokenizedDataset,
    _is_conversation,
    _render_ids,
)

logger = logging.getLogger(__name__)

#: the optional per-pair margin column (TRL's name)
MARGIN_COLUMN = "margin"


def _response_kind(value, index: int, column: str) -> str:
    if isinstance(value, str):
        return "text"
    if _is_conversation(value):
        return "messages"
    raise DatasetError(f"example {index}: {column!r} must be a string or a list of {{role, content}} messages, got "
                       f"{type(value).__name__} {value!r:.60}")


def _margin(row: dict, index: int) -> float:
    m = row[MARGIN_COLUMN]
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
        raise DatasetError(f"example {index}: margin {m!r} in column {MARGIN_COLUMN!r} is not a finite number")
    return float(m)


def _full_ids(tokenizer, prompt, response, kind: str) -> list[int]:
    if kind == "messages":
        return _render_ids(tokenizer, (prompt or []) + response, generation_prompt=False)
    eos = tokenizer.eos_token
    if eos is not None and not response.endswith(eos):
        response = response + eos
    return _render_ids(tokenizer, (prompt or "") + response, generation_prompt=False)


def _check_columns(rows: Sequence[dict]) -> set[str]:
    cols = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != cols:
            raise MissingColumnsError(f"row {i} has different columns from row 0 (missing {sorted(cols - set(row))}, "
                                      f"extra {sorted(set(row) - cols)})")
    if not {"chosen", "rejected"} <= cols:
        raise MissingColumnsError(f"objective 'reward' needs columns 'chosen' and 'rejected' (and optionally 'prompt' "
                                  f"and {MARGIN_COLUMN!r}); found {sorted(cols)}")
    return cols


def tokenize_reward_records(rows: Sequence[dict], tokenizer, max_length: int | None = None) -> TokenizedDataset:
    """Tokenise preference rows for a reward model; see the module docstring for the formats and rules."""
    if len(rows) == 0:
        raise EmptyDatasetError("the dataset is empty")
    cols = _check_columns(rows)
    has_prompt, has_margin = "prompt" in cols, MARGIN_COLUMN in cols
    examples, dropped = [], []
    for i, row in enumerate(rows):
        kind = _response_kind(row["chosen"], i, "chosen")
        if _response_kind(row["rejected"], i, "rejected") != kind:
            raise DatasetError(f"example {i}: 'chosen' and 'rejected' must both be strings or both be message lists")
        prompt = row["prompt"] if has_prompt else None
        if has_prompt and _response_kind(prompt, i, "prompt") != kind:
            raise DatasetError(f"example {i}: 'prompt' and the responses must all be strings or all be message lists")
        chosen = _full_ids(tokenizer, prompt, row["chosen"], kind)
        rejected = _full_ids(tokenizer, prompt, row["rejected"], kind)
        example = {"prompt_ids": [], "chosen_ids": chosen, "rejected_ids": rejected, "index": i}
        if has_margin:
            example["margin"] = _margin(row, i)
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            dropped.append(i)
            continue
        examples.append(example)
    if dropped:
        logger.warning("dropped %d of %d preference pairs longer than max_length=%s tokens: indices %s",
                       len(dropped), len(rows), max_length, dropped)
    if not examples:
        raise EmptyDatasetError(f"all {len(rows)} preference pairs are longer than max_length={max_length} tokens; "
                                "raise max_length")
    return TokenizedDataset(examples=examples, preference=True, dropped=dropped)
