"""Certificate scan: every solver's ``error_bound`` against exact answers on 1,100 tiny random MDPs.

    OMP_NUM_THREADS=1 python benchmarks/certificate_scan.py [--quick] [--out FILE]

Per gamma in (0.9, 0.99, 0.999, 0.9999): 250 MDPs (S in 2..5, A in 2..3, rewards U(0, 10) or U(0, 1e3), dense or
sparse P, a terminal state in a quarter of them, seeds fixed), plus 100 all-proper MDPs at gamma = 1. Solvers:
value_iteration, policy_iteration, linear_program, soft_value_iteration (beta cycling through 0.01, 1, 100) and
finite_horizon (H = 25), each at its default tol (value iterations capped at 20,000 sweeps). Answers: V* in exact
rational arithmetic (policy iteration in
Fractions from the solver's policy, stopped when no action is strictly better, which proves optimality; the first
20 MDPs per gamma are cross-checked against enumerating every deterministic policy), finite horizon by exact
backward induction, the soft optimum in 50-digit decimal arithmetic (tests/support/exact_oracles.py).

A *violation* is ``max|values - V*| > error_bound``. The table gives, per gamma and solver: violations, the
median and maximum of bound / true error, the median bound, how many bounds exceed 1e-10 (the default tol),
and exceptions. It only uses names that exist in older versions of mdpalign.solve, so the same script measures
the code before the certificate fix (``PYTHONPATH=<old checkout>``).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from exact_oracles import (
    exact_finite_horizon,
    exact_optimum,
    exact_optimum_by_improvement,
    max_error,
    random_small_mdp,
    soft_optimum,
)

from mdpalign.solve import (
    finite_horizon,
    linear_program,
    policy_iteration,
    soft_value_iteration,
    value_iteration,
)

GAMMAS = (0.9, 0.99, 0.999, 0.9999)
PER_GAMMA = 250
AT_ONE = 100
BETAS = (0.01, 1.0, 100.0)
HORIZON = 25
#: value iteration's sweeps: at gamma = 0.9999 with terminal states (bounds clipped at 0) the certified span
#: shrinks only at rate gamma, so reaching 1e-10 needs ~2.5e5 sweeps: those end in ConvergenceError (counted)
MAX_SWEEPS = 20_000
SOLVERS = ("value_iteration", "policy_iteration", "linear_program", "soft_value_iteration", "finite_horizon")


def cases(per_gamma: int, at_one: int):
    for gi, gamma in enumerate(GAMMAS + (1.0,)):
        count = at_one if gamma == 1.0 else per_gamma
        for i in range(count):
            rng = np.random.default_rng([gi, i])
            S, A = int(rng.integers(2, 6)), int(rng.integers(2, 4))
            scale = (10.0, 1e3)[i % 2]
            mdp = random_small_mdp(rng, S, A, gamma, scale, sparse=bool(i % 3 == 1), terminal=(i % 4 == 3),
                                   density=(1.0, 0.6)[(i // 2) % 2])
            yield gamma, i, mdp, BETAS[i % 3]


def scan(per_gamma: int = PER_GAMMA, at_one: int = AT_ONE):
    rows = defaultdict(lambda: {"n": 0, "viol": 0, "ratios": [], "bounds": [], "over_tol": 0, "errors": 0,
                                "worst": None})
    warnings.simplefilter("ignore")
    for gamma, i, mdp, beta in cases(per_gamma, at_one):
        results = {}
        calls = (("value_iteration", value_iteration, {"max_iter": MAX_SWEEPS}),
                 ("policy_iteration", policy_iteration, {}),
                 ("linear_program", linear_program, {}),
                 ("soft_value_iteration", soft_value_iteration, {"beta": beta, "max_iter": MAX_SWEEPS}),
                 ("finite_horizon", finite_horizon, {"horizon": HORIZON}))
        for name, solver, kwargs in calls:
            try:
                results[name] = solver(mdp, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported in the table
                results[name] = exc
        pi = results["policy_iteration"]
        start = pi.policy if not isinstance(pi, Exception) else np.zeros(mdp.n_states, dtype=np.int64)
        v_star = exact_optimum_by_improvement(mdp, start)
        if i < 20:
            assert exact_optimum(mdp) == v_star, "exact policy iteration disagrees with enumeration"
        answers = {"value_iteration": v_star, "policy_iteration": v_star, "linear_program": v_star}
        answers["soft_value_iteration"], soft_radius = soft_optimum(mdp, beta)
        horizon = exact_finite_horizon(mdp, HORIZON)
        for name in SOLVERS:
            row = rows[(gamma, name)]
            row["n"] += 1
            sol = results[name]
            if isinstance(sol, Exception):
                row["errors"] += 1
                continue
            if name == "finite_horizon":
                err = max(max_error(sol.values[t], horizon[t]) for t in range(HORIZON + 1))
            else:
                err = max_error(sol.values, answers[name])
                if name == "soft_value_iteration":
                    err = err + soft_radius  # the oracle's own error, < 1e-30
            bound = sol.error_bound
            row["bounds"].append(bound)
            row["over_tol"] += bound > 1e-10
            # a NaN or negative bound is a violation; an infinite one is honest (and useless)
            violated = not bound >= 0 or (np.isfinite(bound) and err > type(err)(bound))
            if violated:
                row["viol"] += 1
                if row["worst"] is None or float(err) - bound > row["worst"][0]:
                    row["worst"] = (float(err) - bound, float(err), bound, i)
            row["ratios"].append(bound / float(err) if err > 0 else np.inf)
    return rows


def table(rows) -> str:
    lines = [("| gamma | solver | MDPs | violations | median bound/error | max bound/error | median bound | "
              "bounds > 1e-10 | exceptions | worst violation (error vs bound) |"),
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for gamma in GAMMAS + (1.0,):
        for name in SOLVERS:
            r = rows.get((gamma, name))
            if r is None:
                continue
            ratios = np.array([x for x in r["ratios"] if np.isfinite(x)])
            bounds = np.array(r["bounds"])
            med_r = f"{np.median(ratios):.3g}" if ratios.size else "-"
            max_r = f"{np.max(ratios):.3g}" if ratios.size else "-"
            med_b = f"{np.median(bounds):.2g}" if bounds.size else "-"
            worst = "-" if r["worst"] is None else f"{r['worst'][1]:.2g} vs {r['worst'][2]:.2g} (case {r['worst'][3]})"
            lines.append(f"| {gamma:g} | {name} | {r['n']} | {r['viol']} | {med_r} | {max_r} | {med_b} | "
                         f"{r['over_tol']} | {r['errors']} | {worst} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="25 MDPs per gamma instead of 250 (smoke run)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = scan(25, 10) if args.quick else scan()
    text = table(rows)
    total = sum(r["viol"] for r in rows.values())
    text += f"\n\nTotal violations: {total}; wall time {time.perf_counter() - start:.0f} s.\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
