"""PNGs of ``mdpalign bench rlhf``: per problem, the exact curves and the sampled curves (mean, 95% band over
seeds), one panel per metric (:data:`~mdpalign.bench.rlhf.problem.METRICS`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.rlhf.problem import METRICS

__all__ = ["write_figures"]


def _floor(v):
    # a log axis cannot show the exact zeros a method reaches: draw them at 1e-14
    return np.maximum(np.asarray(v, dtype=float), 1e-14)


def _exact_panel(ax, runs: dict, key: str, metric: rp.Metric, title: str, exact_steps: int) -> None:
    for i, (name, e) in enumerate(runs.items()):
        y = np.asarray(e["exact"][key], dtype=float)
        x = np.asarray(e["x"], dtype=float)
        if e["x_label"].startswith("RAFT"):
            x = x * (max(exact_steps, 1) / max(x[-1], 1))  # rounds spread on the axis
        ok = np.isfinite(y)
        ax.plot(x[ok], _floor(y[ok]) if metric.log_scale else y[ok], label=name, color=f"C{i % 10}", lw=1.5)
    if metric.log_scale:
        ax.set_yscale("log")
    ax.set_title(title + " (exact mode)", fontsize=10)
    ax.set_xlabel("step (RAFT: rounds, rescaled)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _sampled_panel(ax, runs: dict, key: str, metric: rp.Metric, title: str, exact_steps: int) -> None:
    curves = {n: _floor(e["sampled"][key]) if metric.log_scale else e["sampled"][key] for n, e in runs.items()}
    x = next(iter(runs.values()))["sampled"]["x"]
    rp.plot_curves(None, x, curves, title=title + " (sampled; mean, 95% CI over seeds)", ylabel=key,
                   logy=metric.log_scale, ax=ax)


def write_figures(tmp: Path, results: dict) -> dict[str, str]:
    plt = rp.pyplot()
    names = {}
    for where in ("bandit", "tree"):
        runs = results["runs"][where]
        sampled = {n: e for n, e in runs.items() if "sampled" in e}
        for mode, entries, panel in (("exact", runs, _exact_panel), ("sampled", sampled, _sampled_panel)):
            if not entries:
                continue
            fig, axes = plt.subplots(1, len(METRICS), figsize=(12.0, 4.2), dpi=90, squeeze=False)
            for ax, (key, metric) in zip(axes[0], METRICS.items(), strict=True):
                panel(ax, entries, key, metric, f"{where}: {metric.title}", results["config"]["exact_steps"])
            fname = f"{mode}_{where}.png"
            rp.save_figure(fig, tmp / fname)
            names[f"{mode} {where}"] = fname
    return names
