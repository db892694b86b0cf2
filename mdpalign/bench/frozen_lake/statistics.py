"""Statistics over seeds of the Frozen Lake curves: final means with 95% t-intervals, rankings (at the end and
over training), where the parameter MSE bottoms out, and the comparison with the paper's order."""
from __future__ import annotations

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.bench.frozen_lake.problem import METRICS, PAPER_ORDER

__all__ = ["summarise", "checkpoint_indices", "rankings_over_training", "param_mse_vs_kl", "paper_agreement"]

def summarise(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Final means, CIs, rankings per metric and the comparison with the paper's order."""
    final: dict = {}
    for m in methods:
        final[m] = {}
        for k in METRICS:
            final[m][k] = rp.MeanCI.of(curves[m][k][:, -1])
    rankings = {k: rp.rank({m: final[m][k].mean for m in methods}, higher_is_better=not metric.lower_is_better)
                for k, metric in METRICS.items()}
    return {"final": final, "rankings": rankings, "paper": paper_agreement(curves, methods),
            "rankings_over_training": rankings_over_training(curves, methods),
            "param_mse_vs_kl": param_mse_vs_kl(curves, methods)}


def checkpoint_indices(n_points: int) -> list[int]:
    """Evaluation indices at about 10%, 25%, 50% and 100% of training (step 0 excluded), distinct."""
    last = n_points - 1
    idx = sorted({max(1, round(f * last)) for f in (0.1, 0.25, 0.5, 1.0)})
    return [i for i in idx if 1 <= i <= last]


def rankings_over_training(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Ranking of the methods by each metric's seed-mean at a few checkpoints: {metric: {index: order}}."""
    n_points = curves[methods[0]]["param_mse"].shape[1]
    out = {}
    for k, metric in METRICS.items():
        out[k] = {str(j): rp.rank({m: float(curves[m][k][:, j].mean()) for m in methods},
                                  higher_is_better=not metric.lower_is_better)
                  for j in checkpoint_indices(n_points)}
    return out


def param_mse_vs_kl(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Where each method's mean parameter MSE is smallest, and how it and the KL move from there to the end."""
    out = {}
    for m in methods:
        mse = curves[m]["param_mse"].mean(axis=0)
        kl = curves[m]["visitation_kl"].mean(axis=0)
        j = int(np.argmin(mse))
        out[m] = {"min_index": j, "param_mse_min": float(mse[j]), "param_mse_final": float(mse[-1]),
                  "kl_at_min": float(kl[j]), "kl_final": float(kl[-1])}
    return out


def paper_agreement(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Compare each metric's final order of the paper's four methods with DPO < IFT < ORPO < SFT.

    For every pair (a, b) that the paper puts a before b we record whether our mean agrees and
    whether the paired difference over seeds is separated from 0 at 95% (t-interval of the
    per-seed differences: all methods of one seed share theta_0).
    """
    present = [m for m in PAPER_ORDER if m in methods]
    out = {}
    for k, metric in METRICS.items():
        lower = metric.lower_is_better
        sign = 1.0 if lower else -1.0
        finals = {m: curves[m][k][:, -1] for m in present}
        pairs = []
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                diff = sign * (finals[a] - finals[b])  # < 0: a better, as the paper says
                mean, half = rp.mean_ci(diff)
                pairs.append({
                    "better": a, "worse": b,
                    "agrees": bool(mean < 0),
                    "separated": bool(np.isfinite(half) and abs(mean) > half),
                })
        order = rp.rank({m: float(finals[m].mean()) for m in present}, higher_is_better=not lower)
        # Share of evaluation steps at which the full paper order holds (rankings change with training).
        # Step 0 is theta_0 for every method (all tied), so it is left out.
        n_points = curves[present[0]][k].shape[1] - 1 if present else 0
        holds = 0
        for j in range(1, n_points + 1):
            at = {m: float(curves[m][k][:, j].mean()) for m in present}
            holds += rp.rank(at, higher_is_better=not lower) == present
        out[k] = {
            "order": order,
            "paper_order": present,
            "pairs": pairs,
            "agreeing_pairs": sum(p["agrees"] for p in pairs),
            "n_pairs": len(pairs),
            "exact": order == present,
            "fraction_of_steps_with_paper_order": (holds / n_points) if n_points else float("nan"),
        }
    return out
