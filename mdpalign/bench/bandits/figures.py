"""The bandits report's figures: RLHF regret and distance to the own optimum per regime, mean and 95% band."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.bandits.data import REGIME_TITLES

__all__ = ["write_figures"]

def write_figures(tmp: Path, results: dict) -> dict[str, str]:
    plt = rp.pyplot()
    steps = results["steps"]
    regimes = list(results["curves"])
    names = {}
    for key, title, fname in (("rlhf_regret", "RLHF regret J(π*) − J(π)", "rlhf_regret.png"),
                              ("own_optimum", "distance to the objective's own exact optimum", "own_optimum.png")):
        n = len(regimes)
        cols = min(n, 2)
        rws = math.ceil(n / cols)
        fig, axes = plt.subplots(rws, cols, figsize=(6.2 * cols, 3.8 * rws), dpi=90, squeeze=False)
        for ax, regime in zip(axes.flat, regimes):
            cs = {o: np.array(c[key], dtype=float) for o, c in results["curves"][regime].items()}
            cs = {o: np.maximum(v, 1e-12) for o, v in cs.items() if np.all(np.isfinite(v))}
            if cs:
                rp.plot_curves(None, steps, cs, title=REGIME_TITLES[regime], ylabel=key, logy=True, ax=ax)
            if key == "rlhf_regret":
                ax.axhline(results["lands_tol"], color="k", lw=0.8, ls=":")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{title}: mean and 95% CI over {len(results['seeds'])} bandits", fontsize=11)
        rp.save_figure(fig, tmp / fname)
        names[key] = fname
    return names
