"""``mdpalign bench frozen-lake``, ``mdpalign bench bandits`` and ``mdpalign bench rlhf``.

Only argparse lives here; the experiments (torch) are imported when a sub-command runs, so building
the parser stays cheap. A benchmark is one entry of :data:`BENCHES`. Errors in the settings or the output path
(``BenchConfigError``, ``ReportError``) reach ``mdpalign.cli``, which prints them as one line with exit status 2;
the settings' errors name config fields, which :func:`_config` turns into the flags the user typed.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

from mdpalign.bench.config import (
    BANDIT_OBJECTIVES,
    BANDIT_REGIMES,
    FROZEN_LAKE_METHODS,
    BanditsConfig,
    BenchConfigError,
    FrozenLakeConfig,
)
from mdpalign.bench.report import check_output_dir
from mdpalign.bench.rlhf.config import RLHF_METHODS, RlhfConfig
from mdpalign.cli.argtypes import non_negative_int, positive_float, positive_int

__all__ = ["register", "main"]


def _method_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip().lower() for m in text.split(",") if m.strip())


def _out_help(kind: str) -> str:
    return (f"output directory: created, or replaced if it holds a previous {kind} report (its "
            "mdpalign-report.json lists every file in it); anything else there is refused before the run (see "
            "--force). The new report is written aside and moved into place only when complete")


FORCE_HELP = ("write the report even if --out holds something else: what is there (a file, a link, other files, "
              "another kind of report) is moved aside to OUT.replaced-N, never deleted, and the move is announced. "
              "Refused even so: '', '.', the current or home directory, any directory containing them, and /")


def register(subparsers) -> None:
    """Add ``bench`` with one sub-command per entry of :data:`BENCHES`."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark reports (Markdown + JSON + PNG)",
        description="Run a benchmark and write report.md, results.json and PNG figures into --out.",
    )
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for add in BENCHES.values():
        add(sub)


def _frozen_lake(sub) -> None:
    d = FrozenLakeConfig()
    fl = sub.add_parser(
        "frozen-lake",
        help="the IFT paper's Frozen Lake alignment experiment (arXiv 2405.11870, sec. 5.3), made precise",
        description=(
            "Train a two-layer policy on a Frozen Lake with one optimal and one sub-optimal trajectory with "
            "SFT, DPO, IPO, ORPO, IFT, C-RLFT and an oracle; measure the paper's parameter MSE and exact "
            "policy-level distances to the soft-optimal policy over training; write a report."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fl.add_argument("--seeds", type=positive_int, default=d.seeds, help="number of network initialisations")
    fl.add_argument("--steps", type=positive_int, default=d.steps, help="Adam steps per method (full batch)")
    fl.add_argument("--eval-every", type=positive_int, default=d.eval_every, help="evaluate every K steps")
    fl.add_argument("--map", default=d.map, help="'two-path' (the default lake), a gymnasium map name "
                    "('4x4', '8x8': both refused at once, neither has a unique shortest path) or comma-separated rows "
                    "such as SFFG,FHHF,FFFF,HFFH")
    fl.add_argument("--slippery", action=argparse.BooleanOptionalAction, default=d.slippery,
                    help="gymnasium's slippery dynamics (the demonstrations stay the deterministic paths)")
    fl.add_argument("--suboptimal", choices=("longer", "hole"), default=d.suboptimal,
                    help="the rejected trajectory: a longer path to G, or a path into a hole")
    fl.add_argument("--methods", type=_method_list, default=d.methods,
                    help=f"comma-separated subset of {','.join(FROZEN_LAKE_METHODS)}")
    fl.add_argument("--gamma", type=float, default=d.gamma, help="discount of the lake")
    fl.add_argument("--beta-star", type=positive_float, default=d.beta_star,
                    help="temperature of the soft-optimal target policy pi*")
    fl.add_argument("--hidden", type=positive_int, default=d.hidden, help="hidden width of the two-layer MLP")
    fl.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate")
    fl.add_argument("--crlft-beta", type=positive_float, default=d.crlft_beta,
                    help="C-RLFT weights exp(r_c/beta) for class rewards (1, 0.1); default: OpenChat's constant "
                         "weights 1 and 0.1")
    fl.add_argument("--seed", type=non_negative_int, default=d.seed, help="first seed; seeds are seed, seed+1, ...")
    _output_arguments(fl, FrozenLakeConfig)
    # torch is imported only once the settings are known to be good
    fl.set_defaults(func=_run, _parser=fl, _config=FrozenLakeConfig,
                    _bench="mdpalign.bench.frozen_lake:run_frozen_lake_bench")


def _bandits(sub) -> None:
    b = BanditsConfig()
    bd = sub.add_parser(
        "bandits",
        help="each objective vs its exact optimum and vs the KL-regularised RL optimum, on bandits",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bd.add_argument("--seeds", type=positive_int, default=b.seeds)
    bd.add_argument("--steps", type=positive_int, default=b.steps)
    bd.add_argument("--eval-every", type=positive_int, default=b.eval_every)
    bd.add_argument("--arms", type=positive_int, default=b.arms, help="arms per context")
    bd.add_argument("--contexts", type=positive_int, default=b.contexts)
    bd.add_argument("--beta", type=positive_float, default=b.beta, help="KL strength / DPO beta")
    bd.add_argument("--objectives", type=_method_list, default=b.objectives,
                    help=f"comma-separated subset of {','.join(BANDIT_OBJECTIVES)}")
    bd.add_argument("--regimes", type=_method_list, default=b.regimes,
                    help=f"comma-separated subset of {','.join(BANDIT_REGIMES)}")
    bd.add_argument("--lr", type=positive_float, default=b.lr)
    bd.add_argument("--seed", type=non_negative_int, default=b.seed, help="first seed; seeds are seed, seed+1, ...")
    _output_arguments(bd, BanditsConfig)
    bd.set_defaults(func=_run, _parser=bd, _config=BanditsConfig, _bench="mdpalign.bench.bandits:run_bandits_bench")



def _rlhf(sub) -> None:
    r = RlhfConfig()
    rl = sub.add_parser("rlhf", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="online RL, RAFT, Nash-MD, DPO and the RM -> RL pipeline vs their proven fixed points")
    rl.add_argument("--methods", type=_method_list, default=r.methods,
                    help=f"comma-separated subset of {','.join(RLHF_METHODS)}")
    for flag, kind in (("beta", positive_float), ("group-size", positive_int), ("exact-steps", positive_int),
                       ("sampled-steps", positive_int), ("eval-every", positive_int), ("seeds", positive_int),
                       ("seed", non_negative_int), ("nash-eta", positive_float)):
        rl.add_argument(f"--{flag}", type=kind, default=getattr(r, flag.replace("-", "_")))
    _output_arguments(rl, RlhfConfig)
    rl.set_defaults(func=_run, _parser=rl, _config=RlhfConfig, _bench="mdpalign.bench.rlhf.run:run_rlhf")


#: sub-command -> the function that adds it (its parser's defaults: func=_run, _parser, _config = the config class,
#: _bench = "module:function" that runs the config). A new benchmark is one function and one entry here.
BENCHES = {"frozen-lake": _frozen_lake, "bandits": _bandits, "rlhf": _rlhf}


def _output_arguments(parser, config_cls) -> None:
    """--out, --force, --quiet: the same for every benchmark."""
    parser.add_argument("--out", default=config_cls().out, help=_out_help(config_cls.REPORT_KIND))
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")


def _flags(parser) -> dict[str, str]:
    """config field -> the flag that sets it (``eval_every`` -> ``--eval-every``)."""
    flags = {}
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long:
            flags[action.dest] = long[0]  # --slippery, not --no-slippery
    return flags


def _config(args, flags: dict[str, str]):
    """The validated config, and its output path checked before any work."""
    fields = [f.name for f in dataclasses.fields(args._config) if f.name in flags]
    config = args._config(**{f: getattr(args, f) for f in fields})
    check_output_dir(config.out, kind=config.REPORT_KIND, force=config.force, cli=True)
    return config


def _run(args) -> int:
    flags = _flags(args._parser)
    try:
        config = _config(args, flags)
        module, function = args._bench.split(":")
        result = getattr(importlib.import_module(module), function)(config)
    except BenchConfigError as exc:  # the library names config fields; the user typed flags
        raise BenchConfigError(exc.render(lambda field: flags.get(field, field))) from None
    if not config.quiet:
        print(result.summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mdpalign.cli.bench frozen-lake ...``: exactly ``mdpalign bench frozen-lake ...`` (same
    parser, same one-line errors)."""
    from mdpalign.cli import main as mdpalign_main

    return mdpalign_main(["bench"] + (sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
