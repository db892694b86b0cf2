"""llm_bridge data: formats, which tokens count, the tokenisation-boundary error, truncation, collation."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from datasets import Dataset, DatasetDict  # noqa: E402
from llm_fixtures import COMPLETIONS, PREFERENCES, build_tokenizer, write_jsonl  # noqa: E402

from mdpalign.llm_bridge.config import parse_config  # noqa: E402
from mdpalign.llm_bridge.data import (  # noqa: E402
    Collator,
    DatasetError,
    EmptyDatasetError,
    MissingColumnsError,
    TokenizationBoundaryError,
    TokenizeSettings,
    counted_token_mask,
    load_records,
    tokenize_records,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_counted_token_mask_is_completion_after_position_zero():
    assert counted_token_mask([5, 6], [7, 8, 9]) == [False, False, True, True, True]
    # no prompt: the first token has no context and is never scored
    assert counted_token_mask([], [7, 8]) == [False, True]


def test_prompt_completion_split_matches_separate_tokenisation(tok):
    ds = tokenize_records(COMPLETIONS, tok, TokenizeSettings("sft"))
    for row, ex in zip(COMPLETIONS, ds.examples, strict=True):
        assert ex["prompt_ids"] == tok(row["prompt"])["input_ids"]
        full = tok(row["prompt"] + row["completion"] + tok.eos_token)["input_ids"]
        assert ex["prompt_ids"] + ex["completion_ids"] == full
        assert ex["completion_ids"][-1] == tok.eos_token_id  # EOS appended and counted


def test_conversational_formats_use_the_chat_template(tok):
    msgs = [{"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four"}]
    ds = tokenize_records([{"messages": msgs}], tok, TokenizeSettings("sft"))
    ex = ds.examples[0]
    assert tok.decode(ex["completion_ids"]) == "four<|end|>"
    assert tok.decode(ex["prompt_ids"]).endswith("<|assistant|>")
    # same data as prompt/completion message lists gives the same ids
    ds2 = tokenize_records([{"prompt": msgs[:1], "completion": msgs[1:]}], tok, TokenizeSettings("sft"))
    assert ds2.examples[0]["prompt_ids"] == ex["prompt_ids"]
    assert ds2.examples[0]["completion_ids"] == ex["completion_ids"]


def test_implicit_prompt_preferences_split_at_common_messages(tok):
    user = {"role": "user", "content": "hello"}
    row = {"chosen": [user, {"role": "assistant", "content": "world"}],
           "rejected": [user, {"role": "assistant", "content": "goodbye moon"}]}
    ex = tokenize_records([row], tok, TokenizeSettings("dpo")).examples[0]
    assert tok.decode(ex["chosen_ids"]) == "world<|end|>"
    assert tok.decode(ex["rejected_ids"]) == "goodbye moon<|end|>"


def test_boundary_mismatch_is_an_error_naming_the_example(tok):
    # " ans" + "wer" merge into " answer"
    rows = list(COMPLETIONS) + [{"prompt": "what colour is the sky? ans", "completion": "wer blue"}]
    with pytest.raises(TokenizationBoundaryError, match=r"example 4\b"):
        tokenize_records(rows, tok, TokenizeSettings("sft"))
    bad_pref = [dict(PREFERENCES[0]), {"prompt": "one tw", "chosen": "o three", "rejected": " ten"}]
    with pytest.raises(TokenizationBoundaryError, match=r"example 1\b.*chosen"):
        tokenize_records(bad_pref, tok, TokenizeSettings("dpo"))


def test_fully_truncated_completions_are_dropped_and_reported(tok, caplog):
    long_prompt = {"prompt": "one two three four five six seven eight nine ten " * 3, "completion": " four"}
    rows = [COMPLETIONS[0], long_prompt, COMPLETIONS[2]]
    limit = len(tok(COMPLETIONS[2]["prompt"] + COMPLETIONS[2]["completion"])["input_ids"]) + 2
    with caplog.at_level("WARNING"):
        ds = tokenize_records(rows, tok, TokenizeSettings("sft", max_length=limit))
    assert ds.dropped == [1]
    assert [e["index"] for e in ds.examples] == [0, 2]
    assert "dropped 1 of 3" in caplog.text and "[1]" in caplog.text
    for e in ds.examples:
        assert len(e["prompt_ids"]) + len(e["completion_ids"]) <= limit and e["completion_ids"]
    # preference: dropped when either response is empty after truncation
    prompt_length = len(tok(PREFERENCES[0]["prompt"])["input_ids"])
    pref = tokenize_records(PREFERENCES, tok, TokenizeSettings("dpo", max_length=prompt_length))
    assert 0 in pref.dropped


def test_all_examples_dropped_or_no_rows_is_an_error(tok, tmp_path):
    with pytest.raises(EmptyDatasetError, match="all 1 examples were dropped"):
        tokenize_records([COMPLETIONS[1]], tok, TokenizeSettings("sft", max_length=3))
    with pytest.raises(EmptyDatasetError):
        tokenize_records([], tok, TokenizeSettings("sft"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(EmptyDatasetError, match="empty"):
        load_records(str(empty))


def test_max_prompt_length_keeps_the_end_of_the_prompt(tok):
    ex = tokenize_records([COMPLETIONS[1]], tok, TokenizeSettings("sft", max_prompt_length=2)).examples[0]
    assert ex["prompt_ids"] == tok(COMPLETIONS[1]["prompt"])["input_ids"][-2:]


@pytest.mark.parametrize(
    "objective,rows,match",
    [
        ("dpo", COMPLETIONS, "needs columns 'chosen' and 'rejected'"),
        ("sft", [{"question": "x", "answer": "y"}], "needs 'prompt'\\+'completion', 'messages' or 'text'"),
        ("crlft", COMPLETIONS, "needs a class column 'class'"),
        ("sft", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}], "row 1 has different columns"),
    ],
)
def test_missing_columns_are_named(tok, objective, rows, match):
    settings = TokenizeSettings(objective, class_weights={"expert": 1.0})
    with pytest.raises(MissingColumnsError, match=match):
        tokenize_records(rows, tok, settings)


def test_crlft_weights_and_class_prefixes(tok):
    rows = [dict(COMPLETIONS[0], **{"class": "expert"}), dict(COMPLETIONS[1], **{"class": "suboptimal"})]
    settings = TokenizeSettings("crlft", class_weights={"expert": 1.0, "suboptimal": 0.1},
                                class_prefixes={"expert": "user: ", "suboptimal": "hello: "})
    ds = tokenize_records(rows, tok, settings)
    assert [e["weight"] for e in ds.examples] == [1.0, 0.1]
    assert ds.examples[0]["prompt_ids"] == tok("user: " + rows[0]["prompt"])["input_ids"]
    assert ds.examples[1]["prompt_ids"] == tok("hello: " + rows[1]["prompt"])["input_ids"]
    with pytest.raises(DatasetError, match="example 1: class 'other' has no weight"):
        tokenize_records([rows[0], dict(rows[1], **{"class": "other"})], tok,
                         TokenizeSettings("crlft", class_weights={"expert": 1.0, "suboptimal": 0.1}))


def test_loaders_agree_across_file_formats(tmp_path):
    jsonl = write_jsonl(str(tmp_path / "d.jsonl"), COMPLETIONS)
    (tmp_path / "d.json").write_text(json.dumps(COMPLETIONS))
    Dataset.from_list(COMPLETIONS).to_parquet(str(tmp_path / "d.parquet"))
    DatasetDict({"train": Dataset.from_list(COMPLETIONS)}).save_to_disk(str(tmp_path / "saved"))
    for path in (jsonl, tmp_path / "d.json", tmp_path / "d.parquet", tmp_path / "saved"):
        assert load_records(str(path)) == COMPLETIONS
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_records(str(tmp_path / "saved"), split="test")
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_collator_padded_and_packed_hold_the_same_tokens(tok):
    ds = tokenize_records(PREFERENCES[:3], tok, TokenizeSettings("dpo"))
    padded = Collator(tok.pad_token_id)(ds.examples)
    packed = Collator(tok.pad_token_id, padding_free=True)(ds.examples)
    assert padded["input_ids"].shape[0] == 6  # 3 chosen then 3 rejected
    lens = padded["attention_mask"].sum(-1)
    assert torch.equal(packed["seq_lengths"], lens)
    rows = torch.split(packed["input_ids"][0], lens.tolist())
    for r, row in enumerate(rows):
        assert torch.equal(row, padded["input_ids"][r, : lens[r]])
    assert torch.equal(packed["position_ids"][0], torch.cat([torch.arange(n) for n in lens.tolist()]))
    assert int(packed["completion_mask"].sum()) == int(padded["completion_mask"].sum())
    first = ds.examples[0]
    assert padded["completion_mask"][0].tolist()[: len(first["prompt_ids"]) + len(first["chosen_ids"])] == \
        counted_token_mask(first["prompt_ids"], first["chosen_ids"])


def test_shipped_examples_parse_and_tokenise(tok):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name, objective in (("run.yaml", "dpo"), ("crlft.yaml", "crlft")):
        cfg = parse_config(["--config", os.path.join(root, "examples", "llm", name), "--use_cpu", "true",
                            "--bf16", "false"])
        assert cfg.objective == objective
        rows = load_records(os.path.join(root, cfg.dataset_path))
        settings = TokenizeSettings(objective, class_weights=cfg.crlft_class_weights,
                                    class_prefixes=cfg.crlft_class_prefixes)
        assert len(tokenize_records(rows, tok, settings)) == len(rows)
    chat = load_records(os.path.join(root, "examples", "llm", "chat_preferences.jsonl"))
    assert len(tokenize_records(chat, tok, TokenizeSettings("dpo"))) == 2
    kinds = {"ddp.yaml": "MULTI_GPU", "cpu_ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
             "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED"}
    for name, kind in kinds.items():
        with open(os.path.join(root, "configs", "accelerate", name), encoding="utf-8") as fh:
            acc = yaml.safe_load(fh)
        assert acc["distributed_type"] == kind, name
        if kind == "DEEPSPEED":
            assert acc["deepspeed_config"]["zero_stage"] == int(name[-6]), name
