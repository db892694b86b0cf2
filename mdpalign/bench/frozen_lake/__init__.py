"""The IFT paper's Frozen Lake alignment experiment (arXiv 2405.11870, sec. 5.3, app. B.2), made precise.

The paper states: a lake with one optimal and one sub-optimal trajectory; a two-layer fully
connected policy; an "optimal parameterised policy" trained on the optimal state-action
probabilities; SFT and IFT trained on the optimal trajectory, DPO and ORPO on (optimal,
sub-optimal) as (chosen, rejected); metric = MSE between trained and optimal parameters;
reported order DPO best, then IFT, then ORPO, then SFT. Everything else is our choice, made
explicit here and published in every report:

* pi*: the soft-optimal policy of soft value iteration at temperature ``beta_star`` with a
  uniform reference (every action has positive probability, so finite logits represent it).
* theta_0 (per seed): the MLP from its seeded initialisation, distilled (L-BFGS, to
  convergence) onto the base behaviour policy (uniform by default) at every state. It is the
  common initialisation of every method and the reference pi_ref of DPO/IPO.
* theta* (per seed): theta_0 distilled onto pi* at every state — the paper's "optimal
  parameterised policy". Distillation is SFT with soft targets: sum_s sum_a pi*(a|s) (-log pi(a|s)).
* Methods (Adam, full batch, the same lr and number of steps for all):
  SFT on the optimal trajectory; IFT on it (two passes, fused input (1-lam) onehot(s_t) +
  lam onehot(s_hat_t), s_hat_t where the greedy action at s_{t-1} leads on the deterministic
  lake); DPO, IPO (summed trajectory log-probs) and ORPO on (optimal, sub-optimal); C-RLFT on
  both trajectories with a class-conditioned network (expert / sub-optimal), evaluated under
  the expert class; the oracle: the distillation loss itself, optimised with the same Adam.
* Metrics over training: parameter MSE to theta*; visitation-weighted KL(pi* || pi); value gap
  J(pi_hard*) - J(pi) to the hard optimum; success probability within gymnasium's time limit;
  soft-value gap V*_beta(s0) - V^pi_beta(s0). All exact (linear solves), float64.

The package, by job: :mod:`~.problem` (the lake, the targets, what is measured), :mod:`~.networks` (tensors,
the MLP, the distillations), :mod:`~.training` (the methods' losses, Adam through ``fit``, one seed),
:mod:`~.statistics` (means, intervals, rankings, the paper's order), :mod:`~.text` and :mod:`~.figures` (the
report), :mod:`~.run` (one run, through :func:`mdpalign.bench.report.run_report`).
"""
from mdpalign.bench.frozen_lake.problem import METRICS, PAPER_ORDER, build_problem
from mdpalign.bench.frozen_lake.run import run_frozen_lake_bench

__all__ = ["run_frozen_lake_bench", "METRICS", "PAPER_ORDER", "build_problem"]
