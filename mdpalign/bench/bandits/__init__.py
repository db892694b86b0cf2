"""`mdpalign bench bandits`: which objectives land on the RLHF optimum, and which cannot.

For every objective (SFT, DPO, IPO, ORPO, C-RLFT, and the KL-regularised RL objective itself) and
every data regime, a tabular softmax policy starting at pi_ref is trained by Adam on the exact
population loss (built by :mod:`mdpalign.harness.offline` from the library's objective functions)
and measured over training against

* its **own exact optimum** (:mod:`mdpalign.proofs`): ``Optimum.check(pi).max_violation`` — the
  largest deviation in log-probability differences (nats) on what the optimum pins down, or the
  probability mass left on arms that must vanish; ``nan`` where no closed form is known;
* the **KL-regularised RL optimum** pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x): the regret
  J(pi*) - J(pi) = beta E_mu KL(pi || pi*) (``mdpalign.proofs.kl_rl_gap``).

Data regimes (population data from :mod:`mdpalign.envs.bandits`, exact weights):

* ``bt_all_pairs``: every pair of arms compared, Bradley-Terry labels P(i > j) = sigma(r_i - r_j);
* ``partial_coverage``: ``partial_fraction`` of the pairs, split into two comparison components
  (``connected=False``), BT labels;
* ``deterministic``: every pair, the higher-reward arm always wins;
* ``mixed_quality``: class-labelled demonstrations, expert = pi* (the RLHF optimum), sub-optimal
  = pi_ref, ``expert_fraction`` expert.

How each objective reads a regime: SFT imitates the chosen arms (mixed: every demonstration);
DPO/IPO/ORPO use the pairs (mixed: expert arm over sub-optimal arm, drawn independently, ties
dropped); C-RLFT conditions on the class (chosen = expert, rejected = sub-optimal for pair data)
with OpenChat's weights and is evaluated under the expert class; KL-RL ignores the data.

Seeds draw independent bandits. All seeds train at once as one tabular policy over the stacked
contexts: the losses are sums over contexts and Adam is elementwise, so this is exactly the same
as training each seed alone.

The package, by job: :mod:`~.data` (bandits and data tables), :mod:`~.optima` (exact optima, regret),
:mod:`~.training` (Adam through ``fit``), :mod:`~.text` and :mod:`~.figures` (the report), :mod:`~.run` (one run,
through :func:`mdpalign.bench.report.run_report`).
"""
from mdpalign.bench.bandits.data import seed_data
from mdpalign.bench.bandits.optima import optimum_summary, own_optimum
from mdpalign.bench.bandits.run import LANDS_TOL, run_bandits_bench
from mdpalign.bench.bandits.training import train_objective

__all__ = ["run_bandits_bench", "LANDS_TOL", "seed_data", "own_optimum", "optimum_summary", "train_objective"]
