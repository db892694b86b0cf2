"""Run ``mdpalign bench rlhf`` and write report.md, results.json and the PNGs atomically."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.rlhf.config import ONLINE_METHODS, TREE_METHODS, RlhfConfig
from mdpalign.bench.rlhf.figures import write_figures
from mdpalign.bench.rlhf.methods import run_method
from mdpalign.bench.rlhf.problem import make_problems
from mdpalign.bench.rlhf.text import final_table, report_markdown

__all__ = ["RlhfResult", "run_rlhf"]


@dataclass
class RlhfResult:
    out: Path
    results: dict
    summary: str


def _jobs(config: RlhfConfig):
    jobs = [(m, "bandit") for m in config.methods]
    return jobs + [(m, "tree") for m in config.methods if m in TREE_METHODS]


def run_rlhf(config: RlhfConfig) -> RlhfResult:
    """Run every (method, problem) and write the report into ``config.out`` (refused before any work when ``out``
    holds something other than a previous rlhf report, unless ``force``; :func:`mdpalign.bench.report.
    check_output_dir`). Single-threaded torch (tiny tensors), the caller's thread count restored."""
    rp.check_output_dir(config.out, kind=config.REPORT_KIND, force=config.force)
    with rp.single_torch_thread():
        return _run(config)


def _final(entry: dict) -> dict:
    out = {"exact_regret": entry["exact"]["regret"][-1], "exact_own": entry["exact"]["own"][-1]}
    if "sampled" in entry:
        for k in ("regret", "own"):
            values = np.array(entry["sampled"][k])[:, -1]
            mean, half = rp.mean_ci(values)
            out[f"sampled_{k}"] = {"mean": float(mean), "ci95": float(half), "per_seed": values.tolist()}
    return out


def _run(config: RlhfConfig) -> RlhfResult:
    from tqdm.auto import tqdm

    t0, cpu0 = time.perf_counter(), time.process_time()
    problems = make_problems(config)
    jobs = _jobs(config)
    show = not config.quiet and rp._isatty(sys.stderr)
    progress = tqdm(total=len(jobs), desc="rlhf", unit="run", disable=not show, file=sys.stderr)
    runs: dict = {"bandit": {}, "tree": {}}
    try:
        for name, where in jobs:
            progress.set_postfix_str(f"{name} ({where})")
            entry = run_method(name, where, problems, config)
            entry["final"] = _final(entry)
            runs[where][name] = entry
            progress.update(1)
    finally:
        progress.close()
    results = {
        "experiment": "rlhf",
        "config": config.record(),
        "versions": rp.environment_versions(),
        "seeds": [config.seed + k for k in range(config.seeds)],
        "online_methods": [m for m in config.methods if m in ONLINE_METHODS],
        "problems": {"bandit": {"rewards": problems.rewards, "ref_policy": problems.ref,
                                "optimum": np.exp(problems.bandit_star)},
                     "tree": {"n_prefixes": problems.tree.n_prefixes, "n_leaves": problems.tree.n_leaves,
                              "leaf_rewards": np.array(problems.tree.leaf_rewards)}},
        "runs": runs,
    }
    table = final_table(results)
    with rp.atomic_output_dir(config.out, kind=config.REPORT_KIND, force=config.force) as tmp:
        figures = write_figures(tmp, results)
        results["timing"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
        rp.write_json(tmp / "results.json", results)
        (tmp / "report.md").write_text(report_markdown(results, table, figures), encoding="utf-8")
    t = results["timing"]
    text = table + f"\n\nreport: {Path(config.out) / 'report.md'} ({t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU)"
    return RlhfResult(Path(config.out), results, text)
