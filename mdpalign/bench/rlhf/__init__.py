"""``mdpalign bench rlhf``: online RL methods, best-of-n / RAFT, Nash-MD, DPO and the reward-model → RL pipeline
on a contextual bandit and a small token tree, each measured against the KL-regularised optimum (exact regret
``β·KL(π‖π*)``) and against its own proven fixed point, exactly and by sampling.

Files by job: :mod:`.config` (every setting), :mod:`.problem` (the bandit, the tree, the preference data),
:mod:`.methods` (one runner per method), :mod:`.run` (the experiment, written by the shared runner
:func:`mdpalign.bench.report.run_report`), :mod:`.text` (report.md), :mod:`.figures` (PNGs).
"""
from mdpalign.bench.rlhf.config import RLHF_METHODS, RlhfConfig

__all__ = ["RLHF_METHODS", "RlhfConfig"]
