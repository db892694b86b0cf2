"""``mdpalign train --config run.yaml [--key value ...]`` (same as ``python -m mdpalign.llm_bridge.train``)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Hugging Face causal LM with an mdpalign objective (sft, dpo, orpo, ift, crlft)",
        description="Every TrainConfig field (TrainingArguments + mdpalign fields) is a --key value option; "
        "--config run.yaml supplies defaults. See `python -m mdpalign.llm_bridge.train --help`.",
        add_help=False,
        # '+' so that argparse treats every '--key' (including --help) as part of the remainder handed to
        # HfArgumentParser, which owns the option list; transformers is imported only when train runs
        prefix_chars="+",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="--config run.yaml and --key value overrides")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from mdpalign.llm_bridge.train import run_command

    return run_command(list(args.rest))
