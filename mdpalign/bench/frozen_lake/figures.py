"""The Frozen Lake report's figures: one PNG per metric and an overview, mean and 95% band over seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.frozen_lake.problem import METRICS

__all__ = ["write_figures"]

def write_figures(tmp: Path, results: dict) -> dict[str, str]:
    plt = rp.pyplot()
    steps = results["steps"]
    methods = list(results["curves"])
    names = {}
    for k, metric in METRICS.items():
        curves = {m: np.array(results["curves"][m][k]) for m in methods}
        name = f"{k}.png"
        rp.plot_curves(tmp / name, steps, curves, title=metric.title, ylabel=k,
                       logy=metric.log_scale and _positive(curves))
        names[k] = name
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), dpi=80)
    for ax, (k, metric) in zip(axes.flat, METRICS.items()):
        curves = {m: np.array(results["curves"][m][k]) for m in methods}
        rp.plot_curves(None, steps, curves, title=metric.title, ylabel=k,
                       logy=metric.log_scale and _positive(curves), ax=ax)
    axes.flat[-1].axis("off")
    cfg = results["config"]
    fig.suptitle(f"Frozen Lake ({cfg['map']}, {'slippery' if cfg['slippery'] else 'deterministic'}, "
                 f"rejected = {cfg['suboptimal']}): mean and 95% CI over {cfg['seeds']} seeds", fontsize=11)
    rp.save_figure(fig, tmp / "overview.png")
    names["overview"] = "overview.png"
    return names


def _positive(curves: dict[str, np.ndarray]) -> bool:
    return all(np.all(v > 0) for v in curves.values())
