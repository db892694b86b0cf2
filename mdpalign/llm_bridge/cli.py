"""``mdpalign train --config run.yaml [--key value ...]`` (same as ``python -m mdpalign.llm_bridge ...``).

``register(subparsers)`` adds the sub-command to the ``mdpalign`` parser, which handles a user's mistake (one line,
exit status 2); :func:`run_command` is its body. Building the ``mdpalign`` parser imports this module for every
sub-command and for ``mdpalign --help``, so transformers (behind :mod:`~mdpalign.llm_bridge.config` and
:mod:`~mdpalign.llm_bridge.training`) is imported only when ``train`` runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Hugging Face causal LM with an mdpalign objective (sft, dpo, orpo, ift, crlft; online RL: "
             "grpo, rloo, reinforce, remax)",
        description="Every TrainConfig field (TrainingArguments + mdpalign fields) is a --key value option; "
        "--config run.yaml supplies defaults. See `mdpalign train --help`.",
        add_help=False,
        # '+' so that argparse treats every '--key' (including --help) as part of the remainder handed to
        # HfArgumentParser, which owns the option list; transformers is imported only when train runs
        prefix_chars="+",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="--config run.yaml and --key value overrides")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    return run_command(list(args.rest))


def run_command(argv: list[str]) -> int:
    """The body of ``mdpalign train``: parse, check the paths, train. In a multi-process launch it ends the
    process itself after a successful run (``exit_without_finalization``); with one process it returns 0."""
    # here, not at the top: see the module docstring
    from mdpalign.llm_bridge.config import check_paths, parse_config
    from mdpalign.llm_bridge.training import close_distributed, exit_without_finalization, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(argv)
    check_paths(cfg)  # before the tokenizer, the data or the model is loaded
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not one per process
        print(json.dumps({"output_dir": result.output_dir, "global_step": result.global_step, **result.metrics}))
    if close_distributed():
        exit_without_finalization(0)
    return 0
