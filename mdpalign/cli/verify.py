"""``mdpalign verify module:function --kind preference --beta 0.1 [--expect kl_rl] [--regime ...] [--json]``.

Imports the function (the current directory is on the import path, as for ``python -m``), runs
:func:`mdpalign.testing.check_loss` in every requested regime, prints the report table (or ``--json``), and exits
0 when every expectation holds, 1 when one fails (a regime *missed* its claim or the loss errored during the fit),
and 2 for a usage error (an unknown module, function, kind, regime or optimum; a function whose signature, shape,
reduction or gradient the check cannot use) — one line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from mdpalign.cli.argtypes import non_negative_int, positive_float
from mdpalign.errors import MdpalignError

#: the CLI spelling of each kind (hyphens), mapped to the library's
_KINDS = {"preference": "preference", "demonstration": "demonstration", "class-weighted": "class_weighted",
          "reward-model": "reward_model", "online-policy": "online_policy"}


#: the names ``--expect`` accepts, per kind, for --help; kept equal to mdpalign.testing.expectations.NAMED_OPTIMA by
#: tests/testing/test_verify_cli.py (importing that here would make every ``mdpalign`` command pay ~1 s for scipy)
EXPECT_HELP = ("preference: kl_rl, bt_mle, dpo, ipo; demonstration: sft, sft_mean; class-weighted: crlft; "
               "reward-model: bt_mle; online-policy: kl_rl, k3_loss, tree_local_kl, tree_local_k3")


class VerifyError(MdpalignError, ValueError):
    """``mdpalign verify`` cannot find or use what it was pointed at."""


def _kind(text: str) -> str:
    key = text.strip().replace("_", "-")
    if key not in _KINDS:
        raise argparse.ArgumentTypeError(f"--kind must be one of {', '.join(_KINDS)}; got {text!r}")
    return _KINDS[key]


def load_function(target: str):
    """``"package.module:function"`` (dotted attribute paths allowed after the colon) -> the callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise VerifyError(f"expected module:function (e.g. mypackage.losses:my_dpo), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise VerifyError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the user's module failed while importing: their bug, one line
        raise VerifyError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise VerifyError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise VerifyError(f"{target} is a {type(obj).__name__}, not a function")
    return obj


def run(args: argparse.Namespace) -> int:
    from mdpalign.testing.checks import check_loss

    fn = load_function(args.target)
    options = {"kl_in_reward": True} if args.kl_in_reward else {}
    if args.kl_in_reward and args.kind != "online_policy":
        raise VerifyError("--kl-in-reward applies to --kind online-policy only")
    report = check_loss(args.kind, fn, expect=args.expect, beta=args.beta, regimes=args.regime, seed=args.seed,
                        **options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=True))
    else:
        print(report)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check a loss function against the optimum its paper claims",
        description="Fit a tabular policy to the exact population loss built from your function in each data regime "
                    "and certify where it lands. Exit 0: every expectation holds; 1: one fails; 2: usage error.")
    p.add_argument("target", help="module:function, e.g. mypackage.losses:my_dpo")
    p.add_argument("--kind", type=_kind, required=True, help=f"kind of loss: {', '.join(_KINDS)}")
    p.add_argument("--beta", type=positive_float, default=0.1, help="beta (tau for IPO) of the claim (default 0.1)")
    p.add_argument("--expect", default=None, help=f"named optimum ({EXPECT_HELP}). Without it: where the loss lands")
    p.add_argument("--regime", nargs="+", default=None, help="regimes to run (default: all of the kind's)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the regimes' problems (default 0)")
    p.add_argument("--kl-in-reward", action="store_true", help="online-policy: advantages carry the k1 penalty")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
