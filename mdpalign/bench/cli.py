"""``mdpalign bench frozen-lake`` and ``mdpalign bench bandits``.

Only argparse lives here; the experiments are imported when a sub-command runs, so building
the parser stays cheap.
"""
from __future__ import annotations

import argparse
import sys

from mdpalign._argtypes import positive_float, positive_int

__all__ = ["register", "main"]


def _method_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip().lower() for m in text.split(",") if m.strip())


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
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{frozen-lake,bandits}")

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
    fl.add_argument("--seed", type=int, default=d.seed, help="first seed; seeds are seed, seed+1, ...")
    fl.add_argument("--out", default=d.out, help="output directory (replaced atomically)")
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
    bd.add_argument("--seed", type=int, default=b.seed)
    bd.add_argument("--out", default=b.out)
    bd.add_argument("--quiet", action="store_true")
    bd.set_defaults(func=_run_bandits)


def _fail(exc: Exception):
    # Same shape as argparse's own errors: a message on stderr, exit status 2.
    print(f"mdpalign bench: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def _config_or_exit(cls, args, fields):
    from mdpalign.bench.config import BenchConfigError

    try:
        return cls(**{f: getattr(args, f) for f in fields})
    except BenchConfigError as exc:
        _fail(exc)


def _run_frozen_lake(args) -> int:
    from mdpalign.bench.config import FrozenLakeConfig
    from mdpalign.bench.frozen_lake import run_frozen_lake

    config = _config_or_exit(FrozenLakeConfig, args, (
        "seeds", "steps", "eval_every", "map", "slippery", "suboptimal", "methods", "gamma", "beta_star",
        "hidden", "lr", "seed", "out", "quiet", "crlft_beta",
    ))
    from mdpalign.bench.config import BenchConfigError

    try:
        result = run_frozen_lake(config)
    except BenchConfigError as exc:  # e.g. a map without a second trajectory: found before anything is written
        _fail(exc)
    if not config.quiet:
        print(result.summary)
    return 0


def _run_bandits(args) -> int:
    from mdpalign.bench.bandits import run_bandits
    from mdpalign.bench.config import BanditsConfig

    config = _config_or_exit(BanditsConfig, args, (
        "seeds", "steps", "eval_every", "arms", "contexts", "beta", "objectives", "regimes", "lr", "seed",
        "out", "quiet",
    ))
    from mdpalign.bench.config import BenchConfigError

    try:
        result = run_bandits(config)
    except BenchConfigError as exc:
        _fail(exc)
    if not config.quiet:
        print(result.summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mdpalign.bench.cli frozen-lake ...`` (same as ``mdpalign bench ...``)."""
    parser = argparse.ArgumentParser(prog="mdpalign")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench"] + (sys.argv[1:] if argv is None else list(argv)))
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
