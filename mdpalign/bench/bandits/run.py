"""One run of the bandit benchmark: every (regime, objective), the final statistics, and the report through the
shared runner (:func:`mdpalign.bench.report.run_report`). The other modules are looked up here by module, so a test
can replace one step."""
from __future__ import annotations

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.bandits import data, figures, optima, text, training
from mdpalign.bench.config import BanditsConfig
from mdpalign.fit import record_iterations

__all__ = ["run_bandits_bench", "LANDS_TOL"]

#: An objective "lands" on the RLHF optimum when its final regret is below this (nats times beta).
LANDS_TOL = 1e-3


def run_bandits_bench(config: BanditsConfig) -> rp.BenchResult:
    """Run every (objective, regime) and write report.md, results.json and figures into ``config.out`` atomically
    (:func:`mdpalign.bench.report.run_report`: ``ReportError`` before any work if ``config.out`` is taken)."""
    return rp.run_report(config, lambda progress: _experiment(config, progress),
                         total=len(config.regimes) * len(config.objectives))


def _experiment(config: BanditsConfig, progress) -> rp.Report:
    seeds = [config.seed + i for i in range(config.seeds)]
    curves: dict = {}
    optimum_records: dict = {}
    for regime in config.regimes:
        datas = [data.seed_data(config, regime, s) for s in seeds]
        curves[regime], optimum_records[regime] = {}, {}
        for objective in config.objectives:
            opts = [optima.own_optimum(objective, d, config) for d in datas]
            summaries = [optima.optimum_summary(o, d, objective, config.beta) for o, d in zip(opts, datas)]
            optimum_records[regime][objective] = {
                "kind": summaries[0].kind,
                "attained": [s.attained for s in summaries],
                "regret_of_optimum": [s.regret_of_optimum for s in summaries],
                "rlhf_in_set": [s.rlhf_in_set for s in summaries],
            }
            curves[regime][objective] = training.train_objective(objective, datas, config, opts)
            progress.update(1)
    final = {}
    for regime in config.regimes:
        final[regime] = {}
        for objective in config.objectives:
            entry = {k: rp.MeanCI.of(curves[regime][objective][k][:, -1]) for k in ("own_optimum", "rlhf_regret")}
            in_set = optimum_records[regime][objective]["rlhf_in_set"]
            entry["lands_on_rlhf_optimum"] = bool(np.all(np.array(entry["rlhf_regret"].per_seed) < LANDS_TOL))
            # True: the RLHF optimum is one of the objective's exact optima for every bandit
            entry["rlhf_optimum_among_optima"] = None if None in in_set else bool(all(in_set))
            final[regime][objective] = entry
    results = rp.plain({
        "experiment": "bandits",
        "config": config.record(),
        "versions": rp.environment_versions(),
        "seeds": seeds,
        "steps": record_iterations(config.steps, config.eval_every),
        "lands_tol": LANDS_TOL,
        "curves": {r: {o: {k: v.tolist() for k, v in c.items()} for o, c in cs.items()} for r, cs in curves.items()},
        "optima": optimum_records,
        "final": final,
    })
    table = text.final_table(results)
    return rp.Report(results, figures.write_figures, lambda res, names: text.report_markdown(res, table, names),
                     summary=table)
