"""``mdpalign bench frozen-lake``, ``mdpalign bench bandits`` and ``mdpalign bench rlhf``.

Only argparse lives here; the experiments are imported when a sub-command runs, so building
the parser stays cheap. Errors in the settings or the output path (``BenchConfigError``,
``ReportError``) reach ``mdpalign.cli``, which prints them as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import sys

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
    """Add ``bench`` with its ``frozen-lake`` and ``bandits`` sub-commands."""
    from mdpalign.bench.config import (
        BANDIT_OBJECTIVES, BANDIT_REGIMES, FROZEN_LAKE_METHODS, BanditsConfig, FrozenLakeConfig,
    )

    bench = subparsers.add_parser(
        "bench",
        help="benchmark reports (Markdown + JSON + PNG)",
        description="Run a benchmark and write report.md, results.json and PNG figures into --out.",
    )
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{frozen-lake,bandits,rlhf}")

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
                    "('4x4', '8x8') or comma-separated rows such as SFFG,FHHF,FFFF,HFFH")
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
    fl.add_argument("--out", default=d.out, help=_out_help(FrozenLakeConfig.REPORT_KIND))
    fl.add_argument("--force", action="store_true", help=FORCE_HELP)
    fl.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    fl.set_defaults(func=_run_frozen_lake)

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
    bd.add_argument("--out", default=b.out, help=_out_help(BanditsConfig.REPORT_KIND))
    bd.add_argument("--force", action="store_true", help=FORCE_HELP)
    bd.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    bd.set_defaults(func=_run_bandits)

    from mdpalign.bench.rlhf.config import RLHF_METHODS, RlhfConfig
    r = RlhfConfig()
    rl = sub.add_parser("rlhf", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="online RL, RAFT, Nash-MD, DPO and the RM -> RL pipeline vs their proven fixed points")
    rl.add_argument("--methods", type=_method_list, default=r.methods,
                    help=f"comma-separated subset of {','.join(RLHF_METHODS)}")
    for flag, kind in (("beta", positive_float), ("group-size", positive_int), ("exact-steps", positive_int),
                       ("sampled-steps", positive_int), ("eval-every", positive_int), ("seeds", positive_int),
                       ("seed", non_negative_int)):
        rl.add_argument(f"--{flag}", type=kind, default=getattr(r, flag.replace("-", "_")))
    rl.add_argument("--out", default=r.out, help=_out_help(RlhfConfig.REPORT_KIND))
    rl.add_argument("--force", action="store_true", help=FORCE_HELP)
    rl.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    rl.set_defaults(func=_run_rlhf)


def _config(cls, args, fields):
    """The validated config, and its output path checked before any work (messages name the flags)."""
    from mdpalign.bench.report import check_output_dir

    config = cls(**{f: getattr(args, f) for f in fields})
    check_output_dir(config.out, kind=config.REPORT_KIND, force=config.force, cli=True)
    return config


def _run_frozen_lake(args) -> int:
    from mdpalign.bench.config import FrozenLakeConfig

    config = _config(FrozenLakeConfig, args, (
        "seeds", "steps", "eval_every", "map", "slippery", "suboptimal", "methods", "gamma", "beta_star",
        "hidden", "lr", "seed", "out", "quiet", "force", "crlft_beta",
    ))
    from mdpalign.bench.frozen_lake import run_frozen_lake  # torch: only once the settings are known to be good

    result = run_frozen_lake(config)
    if not config.quiet:
        print(result.summary)
    return 0


def _run_bandits(args) -> int:
    from mdpalign.bench.config import BanditsConfig

    config = _config(BanditsConfig, args, (
        "seeds", "steps", "eval_every", "arms", "contexts", "beta", "objectives", "regimes", "lr", "seed",
        "out", "quiet", "force",
    ))
    from mdpalign.bench.bandits import run_bandits

    result = run_bandits(config)
    if not config.quiet:
        print(result.summary)
    return 0


def _run_rlhf(args) -> int:
    from mdpalign.bench.rlhf.config import RlhfConfig

    config = _config(RlhfConfig, args, ("methods", "beta", "group_size", "exact_steps", "sampled_steps",
                                        "eval_every", "seeds", "seed", "out", "quiet", "force"))
    from mdpalign.bench.rlhf.run import run_rlhf

    result = run_rlhf(config)
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
