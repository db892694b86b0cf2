"""``mdpalign solve frozen-lake ...``: solve a Frozen Lake exactly and draw the policy."""
from __future__ import annotations

import json
import os

import numpy as np

from mdpalign.cli.argtypes import lake_map_parser, non_negative_int, positive_float, unit_interval
from mdpalign.envs.frozen_lake import InvalidMapError, frozen_lake
from mdpalign.solve import SolverError, finite_horizon, solve

_METHOD_NAMES = {
    "pi": "policy_iteration",
    "vi": "value_iteration",
    "lp": "linear_program",
    "soft": "soft_value_iteration",
}


def _available_memory() -> int | None:
    """Bytes of memory this machine can still hand out (Linux: MemAvailable), else its physical memory, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _horizon_bytes(horizon: int, n_states: int, n_actions: int) -> int:
    """Peak memory of ``finite_horizon``: values (H+1, S) and Q-values (H, S, A) in float64, and the policy
    (H, S) int64 twice (argmax, then its ``astype`` copy)."""
    H, S, A = horizon, n_states, n_actions
    return 8 * ((H + 1) * S + H * S * A + 2 * H * S)


def _check_horizon_memory(parser, horizon: int, n_states: int, n_actions: int) -> None:
    # finite_horizon keeps every time step: checked here, before numpy tries to allocate it all
    need = _horizon_bytes(horizon, n_states, n_actions)
    available = _available_memory()
    if available is None or need <= available:
        return
    per_step = _horizon_bytes(1, n_states, n_actions) - _horizon_bytes(0, n_states, n_actions)
    fits = max(0, (available - _horizon_bytes(0, n_states, n_actions)) // per_step)
    parser.error(f"--horizon {horizon} needs about {_bytes(need)} (values, Q-values and policy at every step for "
                 f"{n_states} states x {n_actions} actions) and this machine has {_bytes(available)} available; "
                 f"use --horizon {fits} or less, or drop --horizon for the stationary (discounted) solution")


def register(subparsers) -> None:
    parser = subparsers.add_parser("solve", help="solve an MDP exactly (certified error bound)",
                                   description="Solve an MDP exactly and print a certified error bound.")
    problems = parser.add_subparsers(dest="problem", required=True, metavar="{frozen-lake}")
    fl = problems.add_parser(
        "frozen-lake", help="gymnasium's Frozen Lake",
        description="Solve Frozen Lake exactly: start-state value, certified error bound, policy as arrows.")
    fl.add_argument("--map", type=lake_map_parser(), default="4x4",
                    help="'4x4' (default), '8x8', or comma-separated rows, e.g. SFFF,FHFH,FFFH,HFFG")
    fl.add_argument("--no-slippery", dest="slippery", action="store_false", help="deterministic moves")
    fl.add_argument("--gamma", type=unit_interval, default=0.99, help="discount in [0, 1] (default 0.99)")
    fl.add_argument("--horizon", type=non_negative_int, default=None,
                    help="solve the time-limited problem with this many steps (backward induction)")
    fl.add_argument("--method", choices=sorted(_METHOD_NAMES), default="pi",
                    help="pi (policy iteration, default), vi (value iteration), lp (linear program), "
                         "soft (KL-regularised, needs --beta)")
    fl.add_argument("--beta", type=positive_float, default=None, help="KL temperature for --method soft")
    fl.add_argument("--tol", type=positive_float, default=1e-10, help="certified error target (default 1e-10)")
    fl.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    fl.set_defaults(func=run_frozen_lake, _parser=fl)


def run_frozen_lake(args) -> int:
    parser = args._parser
    if args.method == "soft" and args.beta is None:
        parser.error("--method soft needs --beta")
    if args.method != "soft" and args.beta is not None:
        parser.error("--beta only applies to --method soft")
    if args.horizon is not None and args.method == "soft":
        parser.error("--horizon is solved by backward induction; it does not combine with --method soft")
    try:
        lake = frozen_lake(args.map, slippery=args.slippery, gamma=args.gamma)
    except InvalidMapError as exc:
        parser.error(str(exc))
    mdp = lake.mdp
    try:
        if args.horizon is not None:
            _check_horizon_memory(parser, args.horizon, mdp.n_states, mdp.n_actions)
            sol = finite_horizon(mdp, args.horizon)
            values = sol.values[0]
            policy = sol.policy[0] if args.horizon > 0 else np.zeros(mdp.n_states, dtype=np.int64)
        else:
            kw = {"tol": args.tol}
            if args.method == "soft":
                kw["beta"] = args.beta
            sol = solve(mdp, args.method, **kw)
            values, policy = sol.values, sol.policy
    except SolverError as exc:
        parser.error(str(exc))
    start_value = float(mdp.initial @ values)
    if args.json:
        out = {
            "map": list(lake.desc), "slippery": lake.slippery, "gamma": mdp.gamma, "horizon": args.horizon,
            "method": sol.method, "beta": args.beta, "start_state": lake.start_state,
            "start_value": start_value, "error_bound": sol.error_bound, "iterations": sol.iterations,
            "elapsed": sol.elapsed, "values": values.tolist(), "policy": policy.tolist(),
        }
        print(json.dumps(out))
        return 0
    kind = "slippery" if lake.slippery else "deterministic"
    where = f"horizon={args.horizon}" if args.horizon is not None else f"method={sol.method}"
    print(f"Frozen Lake {lake.nrow}x{lake.ncol} ({kind}), gamma={mdp.gamma:g}, {where}"
          + (f", beta={args.beta:g}" if args.beta is not None else ""))
    print(f"start value   {start_value:.12f}")
    print(f"error bound   {sol.error_bound:.3g} (certified)")
    print(f"iterations    {sol.iterations}")
    print(f"time          {sol.elapsed:.4f} s")
    print("policy" + (" (t=0)" if args.horizon is not None else "") + ":")
    print(lake.render_policy(policy))
    return 0
