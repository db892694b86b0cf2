"""One run of the Frozen Lake experiment: every seed and method, the statistics, and the report through the shared
runner (:func:`mdpalign.bench.report.run_report`). The other modules are looked up here by module, so a test can
replace one step."""
from __future__ import annotations

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.config import FrozenLakeConfig
from mdpalign.bench.frozen_lake import figures, networks, problem, statistics, text, training
from mdpalign.fit import record_iterations

__all__ = ["run_frozen_lake_bench"]

def run_frozen_lake_bench(config: FrozenLakeConfig) -> rp.BenchResult:
    """Run the experiment and write report.md, results.json and figures into ``config.out`` atomically
    (:func:`mdpalign.bench.report.run_report`: ``ReportError`` before any work if ``config.out`` is taken)."""
    return rp.run_report(config, lambda progress: _experiment(config, progress),
                         total=config.seeds * len(config.methods))


def _experiment(config: FrozenLakeConfig, progress) -> rp.Report:
    """Every seed and method, then the statistics; the report as plain data."""
    lake = problem.build_problem(config)
    batch = networks.trajectory_batch(lake)
    seeds = [config.seed + i for i in range(config.seeds)]
    per_seed = []
    for seed in seeds:
        progress.set_postfix_str(f"seed {seed}")
        per_seed.append(training.run_seed(seed, lake, batch, config, progress))
    curves = {m: {k: np.array([r["curves"][m][k] for r in per_seed]) for k in list(problem.METRICS) + ["loss"]}
              for m in config.methods}
    summary = statistics.summarise(curves, config.methods)
    results = rp.plain({
        "experiment": "frozen-lake",
        "config": config.record(),
        "versions": rp.environment_versions(),
        "problem": text.problem_record(lake, config),
        "seeds": seeds,
        "steps": record_iterations(config.steps, config.eval_every),
        "curves": {m: {k: v.tolist() for k, v in curves[m].items()} for m in config.methods},
        "distillation": {str(s): r["distillation"] for s, r in zip(seeds, per_seed)},
        "final": summary["final"],
        "rankings": summary["rankings"],
        "rankings_over_training": summary["rankings_over_training"],
        "param_mse_vs_kl": summary["param_mse_vs_kl"],
        "paper_agreement": summary["paper"],
        "gauge_demo": training.gauge_demo(lake, config),
        "crlft_class_weights": training.crlft_weights(config).tolist(),
    })
    table = text.final_table(results)
    return rp.Report(results, figures.write_figures, lambda res, names: text.report_markdown(res, lake, table, names),
                     summary=table + "\n\n" + text.agreement_text(results))
