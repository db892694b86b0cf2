"""PNGs of ``mdpalign bench rlhf``: exact curves per problem, sampled curves with 95% bands."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mdpalign.bench import report as rp

__all__ = ["write_figures"]


def _floor(v):
    return np.maximum(np.asarray(v, dtype=float), 1e-14)


def write_figures(tmp: Path, results: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {}
    for where in ("bandit", "tree"):
        runs = results["runs"][where]
        if not runs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.2), dpi=90)
        for ax, key, label in ((axes[0], "regret", "exact regret β·KL(π‖π*)"),
                               (axes[1], "own", "distance to own fixed point")):
            for i, (name, e) in enumerate(runs.items()):
                y = np.asarray(e["exact"][key], dtype=float)
                x = np.asarray(e["x"], dtype=float)
                if e["x_label"].startswith("RAFT"):
                    x = x * (max(results["config"]["exact_steps"], 1) / max(x[-1], 1))  # rounds spread on the axis
                ok = np.isfinite(y)
                ax.plot(x[ok], _floor(y[ok]), label=name, color=f"C{i % 10}", lw=1.5)
            ax.set_yscale("log")
            ax.set_title(f"{where}: {label} (exact mode)", fontsize=10)
            ax.set_xlabel("step (RAFT: rounds, rescaled)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fname = f"exact_{where}.png"
        fig.savefig(tmp / fname, metadata={"Software": None})
        plt.close(fig)
        names[f"exact {where}"] = fname
        sampled = {n: e for n, e in runs.items() if "sampled" in e}
        if sampled:
            fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.2), dpi=90)
            for ax, key, label in ((axes[0], "regret", "sampled regret"), (axes[1], "own", "sampled distance")):
                curves = {n: _floor(e["sampled"][key]) for n, e in sampled.items()}
                x = next(iter(sampled.values()))["sampled"]["x"]
                rp.plot_curves(None, x, curves, title=f"{where}: {label} (mean, 95% CI over seeds)", ylabel=key,
                               logy=True, ax=ax)
            fig.tight_layout()
            fname = f"sampled_{where}.png"
            fig.savefig(tmp / fname, metadata={"Software": None})
            plt.close(fig)
            names[f"sampled {where}"] = fname
    return names
