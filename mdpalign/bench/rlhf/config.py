"""Settings of ``mdpalign bench rlhf``: every number the report depends on (published in results.json)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mdpalign.bench.config import (
    BenchConfigError,
    RecordedConfig,
    _check_positive,
    _check_positive_int,
    _check_seeds,
    _check_subset,
)

__all__ = ["RLHF_METHODS", "TREE_METHODS", "RlhfConfig"]

#: Methods in report order (bandit). ``ppo_clip``: PPO-clip with an exact value baseline on the bandit, with a
#: learned GAE critic on the tree; ``grpo_trl``: TRL's GRPOConfig defaults with β > 0 (k3·ρ, dapo, group std).
RLHF_METHODS = ("reinforce", "rloo", "remax", "ppo_clip", "grpo_trl", "grpo_bias_corrected", "dr_grpo",
                "best_of_n_raft", "nash_md", "dpo", "rm_pipeline")
#: The methods that also run on the token tree (token-level online RL; the others are bandit methods here).
TREE_METHODS = ("reinforce", "rloo", "remax", "ppo_clip", "grpo_trl", "grpo_bias_corrected", "dr_grpo")
#: Methods trained through the online harness (also run in sampled mode).
ONLINE_METHODS = TREE_METHODS


def _check_problem_seed(name: str, value) -> int:
    """A single seed that is not ``seed``: the shared check, its message naming this field."""
    try:
        return _check_seeds(value, 1)
    except BenchConfigError:
        raise BenchConfigError("{%s} must be an integer in [0, 2**63 - 1]; got {got}" % name, (name,),
                               got=repr(value)) from None


@dataclass(frozen=True)
class RlhfConfig(RecordedConfig):
    """Settings of the RLHF benchmark (module docstring of :mod:`mdpalign.bench.rlhf`)."""

    REPORT_KIND: ClassVar[str] = "rlhf"

    methods: tuple[str, ...] = RLHF_METHODS
    beta: float = 0.5
    contexts: int = 2
    arms: int = 4
    bandit_seed: int = 0
    tree_vocab: int = 2
    tree_length: int = 2
    tree_seed: int = 0
    group_size: int = 2
    exact_steps: int = 400
    exact_lr: float = 1.0
    eval_every: int = 20
    raft_n: int = 2
    raft_rounds: int = 6
    nash_eta: float = 1.0
    dpo_lr: float = 0.5
    seeds: int = 3
    seed: int = 0
    sampled_steps: int = 200
    sampled_lr: float = 0.2
    n_prompts: int = 8
    out: str = "reports/rlhf"
    quiet: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("contexts", "seeds", "exact_steps", "eval_every", "raft_rounds", "sampled_steps",
                     "n_prompts", "tree_length"):
            object.__setattr__(self, name, _check_positive_int(name, getattr(self, name)))
        for name, low in (("arms", 2), ("tree_vocab", 2), ("group_size", 2), ("raft_n", 2)):
            if _check_positive_int(name, getattr(self, name)) < low:
                raise BenchConfigError("{%s} must be at least {low}; got {got}" % name, (name,), low=low,
                                       got=repr(getattr(self, name)))
        for name in ("beta", "exact_lr", "nash_eta", "dpo_lr", "sampled_lr"):
            object.__setattr__(self, name, _check_positive(name, getattr(self, name)))
        if self.nash_eta * self.beta > 1:
            raise BenchConfigError("{nash_eta} × {beta} must be <= 1 (Nash-MD's geometric mixture weights; the proof "
                                   "covers 0 < η·τ <= 1); got {eta} × {tau}", ("nash_eta", "beta"),
                                   eta=self.nash_eta, tau=self.beta)
        if self.eval_every > min(self.exact_steps, self.sampled_steps):
            raise BenchConfigError("{eval_every} ({k}) is larger than {exact_steps} ({n}) or {sampled_steps} ({m})",
                                   ("eval_every", "exact_steps", "sampled_steps"), k=self.eval_every,
                                   n=self.exact_steps, m=self.sampled_steps)
        if self.arms ** self.group_size * self.contexts > 4096 or self.tree_vocab ** self.tree_length > 64:
            raise BenchConfigError("problem too large for exact mode: keep {arms}^{group_size}·{contexts} <= 4096 and "
                                   "{tree_vocab}^{tree_length} <= 64; got {a}^{g}·{x} and {v}^{n}",
                                   ("arms", "group_size", "contexts", "tree_vocab", "tree_length"), a=self.arms,
                                   g=self.group_size, x=self.contexts, v=self.tree_vocab, n=self.tree_length)
        object.__setattr__(self, "methods", _check_subset("methods", self.methods, RLHF_METHODS))
        for name in ("bandit_seed", "tree_seed"):
            object.__setattr__(self, name, _check_problem_seed(name, getattr(self, name)))
        object.__setattr__(self, "seed", _check_seeds(self.seed, self.seeds))
        object.__setattr__(self, "force", bool(self.force))

