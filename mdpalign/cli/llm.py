"""``mdpalign train --config run.yaml [--key value ...]`` (same as ``python -m mdpalign.llm_bridge ...``) and
``mdpalign eval reward --model DIR --data FILE [--ref-model DIR] [--json]``.

``register(subparsers)`` adds ``train`` to the ``mdpalign`` parser, ``register_eval(subparsers)`` adds ``eval`` (with
its ``reward`` sub-command); the ``mdpalign`` parser handles a user's mistake (one line, exit status 2);
:func:`run_command` and :func:`run_eval_reward` are their bodies. Building the ``mdpalign`` parser imports this
module for every sub-command and for ``mdpalign --help``, so transformers (behind :mod:`~mdpalign.llm_bridge.config`
and :mod:`~mdpalign.llm_bridge.training`) is imported only when ``train`` or ``eval`` runs.
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


def register_eval(subparsers) -> None:
    """``mdpalign eval reward``: RewardBench accuracy of a reward model, or of a policy's implicit DPO reward."""
    from mdpalign.cli.argtypes import positive_int  # argparse only: cheap

    parser = subparsers.add_parser("eval", help="evaluate a trained model (reward: RewardBench preference accuracy)",
                                   description="Evaluate a trained model.")
    kinds = parser.add_subparsers(dest="eval_command", required=True, metavar="{reward}")
    reward = kinds.add_parser(
        "reward", help="preference accuracy as RewardBench scores it (chosen > rejected strictly; ties lose)",
        description="Score every preference pair of --data and report the fraction with chosen > rejected "
        "(strictly: ties lose), per subset when the data has a 'subset' column, and the example-count-weighted "
        "mean. A reward model (a one-output sequence classifier, as `mdpalign train` with objective: reward saves "
        "it) is scored by its head; a causal LM (a DPO policy) by its implicit reward sum log pi - sum log pi_ref "
        "over the response tokens, against --ref-model (for a LoRA policy without one: its base model).")
    reward.add_argument("--model", required=True, metavar="DIR", help="reward model or policy directory "
                        "(a full model or a LoRA adapter); which one is read from its config")
    reward.add_argument("--data", required=True, metavar="FILE", help="preference data: JSONL / JSON / parquet / "
                        "save_to_disk dir with prompt, chosen, rejected (strings or messages) and optional subset")
    reward.add_argument("--ref-model", default=None, metavar="DIR", help="reference model of a policy's implicit "
                        "reward (an error for a reward model)")
    reward.add_argument("--split", default="train", help="split of a saved DatasetDict (default train)")
    reward.add_argument("--batch-size", type=positive_int, default=8, help="pairs per forward (default 8)")
    reward.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                        help="dtype to load the models in (default float32)")
    reward.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    reward.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    reward.set_defaults(func=run_eval_reward)


def run_eval_reward(args) -> int:
    """The body of ``mdpalign eval reward``: score, print the table (or JSON)."""
    from mdpalign.llm_bridge.evaluate import evaluate_reward  # transformers only when the command runs

    result = evaluate_reward(args.model, args.data, args.ref_model, split=args.split, batch_size=args.batch_size,
                             torch_dtype=args.dtype, device=args.device)
    print(json.dumps(result.to_dict()) if args.json else result.table())
    return 0
