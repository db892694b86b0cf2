"""One run of ``mdpalign bench rlhf``: every (method, problem), the final values, and the report through the shared
runner (:func:`mdpalign.bench.report.run_report`)."""
from __future__ import annotations

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.rlhf import figures, text
from mdpalign.bench.rlhf.config import ONLINE_METHODS, TREE_METHODS, RlhfConfig
from mdpalign.bench.rlhf.methods import run_method
from mdpalign.bench.rlhf.problem import make_problems

__all__ = ["run_rlhf"]


def _jobs(config: RlhfConfig) -> list[tuple[str, str]]:
    jobs = [(m, "bandit") for m in config.methods]
    return jobs + [(m, "tree") for m in config.methods if m in TREE_METHODS]


def run_rlhf(config: RlhfConfig) -> rp.BenchResult:
    """Run every (method, problem) and write report.md, results.json and the PNGs into ``config.out`` atomically
    (:func:`mdpalign.bench.report.run_report`: ``ReportError`` before any work if ``config.out`` is taken)."""
    return rp.run_report(config, lambda progress: _experiment(config, progress), total=len(_jobs(config)))


def _final(entry: dict) -> dict:
    """The last recorded values; over seeds (mean, 95% CI) for the sampled curves."""
    out = {"exact_regret": entry["exact"]["regret"][-1], "exact_own": entry["exact"]["own"][-1]}
    if "sampled" in entry:
        for k in ("regret", "own"):
            out[f"sampled_{k}"] = rp.MeanCI.of(np.array(entry["sampled"][k])[:, -1])
    return out


def _experiment(config: RlhfConfig, progress) -> rp.Report:
    problems = make_problems(config)
    runs: dict = {"bandit": {}, "tree": {}}
    for name, where in _jobs(config):
        progress.set_postfix_str(f"{name} ({where})")
        entry = run_method(name, where, problems, config)
        entry["final"] = _final(entry)
        runs[where][name] = entry
        progress.update(1)
    results = rp.plain({
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
    })
    table = text.final_table(results)
    return rp.Report(results, figures.write_figures, lambda res, names: text.report_markdown(res, table, names),
                     summary=table)
