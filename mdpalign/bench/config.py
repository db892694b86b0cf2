"""Configurations of the benchmark experiments: every setting a report depends on, validated.

A config is a frozen dataclass; the report publishes ``dataclasses.asdict(config)`` in full, so
two runs with equal configs (and library versions) produce the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

from mdpalign.checks import as_integer, as_number
from mdpalign.errors import MdpalignError

__all__ = [
    "BenchConfigError",
    "FROZEN_LAKE_METHODS",
    "FrozenLakeConfig",
    "BANDIT_OBJECTIVES",
    "BANDIT_REGIMES",
    "BanditsConfig",
]


class BenchConfigError(MdpalignError, ValueError):
    """A benchmark setting is invalid; the message names the setting and the accepted values.

    Built from Python, the message names config fields (``steps``); the command line shows the same message with
    its flags (``--steps``): ``template`` writes every field it names as ``{field}`` (the ``fields``), any other
    ``{key}`` is a value given as a keyword, and :meth:`render` fills the fields in with ``name(field)``.
    """

    def __init__(self, template: str, fields: tuple[str, ...] = (), **values):
        self.template, self.fields, self.values = template, tuple(fields), {k: str(v) for k, v in values.items()}
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each field written as ``name(field)`` (default: the field's own name)."""
        if not self.fields and not self.values:
            return self.template
        return self.template.format(**{f: name(f) for f in self.fields}, **self.values)

    def __reduce__(self):  # the message is rebuilt from its parts (args holds the rendered text)
        return _rebuild_config_error, (type(self), self.template, self.fields, self.values)


def _rebuild_config_error(cls, template, fields, values):
    return cls(template, fields, **values)


#: Methods of the Frozen Lake experiment, in report order.
FROZEN_LAKE_METHODS = ("sft", "dpo", "ipo", "orpo", "ift", "crlft", "oracle")

#: Objectives and data regimes of the bandit benchmark.
BANDIT_OBJECTIVES = ("sft", "dpo", "ipo", "orpo", "crlft", "kl_rl")
BANDIT_REGIMES = ("bt_all_pairs", "partial_coverage", "deterministic", "mixed_quality")


def _reals(values) -> tuple[float, ...]:
    try:
        return tuple(as_number(x) for x in values)
    except TypeError:  # not a sequence: the length check that follows refuses it
        return ()


def _check_positive_int(name: str, value) -> int:
    number = as_integer(value)
    if number is None or number <= 0:
        raise BenchConfigError("{%s} must be a positive integer; got {got}" % name, (name,), got=repr(value))
    return number


#: Where and how a report is written, not what it contains: left out of results.json.
_NOT_RECORDED = ("out", "quiet", "force")

# torch seeds are 64-bit, numpy's non-negative: the seeds seed, ..., seed + seeds - 1 must suit both
_MAX_SEED = 2**63 - 1


def _check_seeds(seed, seeds: int) -> int:
    number = as_integer(seed)
    if number is None or number < 0 or number + seeds - 1 > _MAX_SEED:
        raise BenchConfigError("{seed} must be an integer with 0 <= {seed} and {seed} + {seeds} - 1 <= 2**63 - 1 "
                               "(the seeds are seed, seed+1, ...); got {got} with {n} seeds", ("seed", "seeds"),
                               got=repr(seed), n=seeds)
    return number


def _check_positive(name: str, value) -> float:
    number = as_number(value)
    if not (number > 0 and math.isfinite(number)):
        raise BenchConfigError("{%s} must be a positive finite number; got {got}" % name, (name,), got=repr(value))
    return number


def _check_subset(name: str, values, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = tuple(v.strip() for v in values.split(",") if v.strip())
    if not isinstance(values, (tuple, list)):
        raise BenchConfigError("{%s} must be comma-separated names or a sequence of them; got {got}" % name, (name,),
                               got=repr(values))
    values = tuple(str(v).lower() for v in values)
    if not values:
        raise BenchConfigError("{%s} is empty; choose from {allowed}" % name, (name,), allowed=", ".join(allowed))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise BenchConfigError("unknown %s {unknown} in {%s}; choose from {allowed}" % (name, name), (name,),
                               unknown=", ".join(map(repr, unknown)), allowed=", ".join(allowed))
    if len(set(values)) != len(values):
        raise BenchConfigError("{%s} lists {twice} twice" % name, (name,),
                               twice=sorted({v for v in values if values.count(v) > 1}))
    # Report order, whatever order they were given in.
    return tuple(v for v in allowed if v in values)


class RecordedConfig:
    """Base of the benchmark configs: :meth:`record` for results.json."""

    def record(self) -> dict:
        """The full configuration as plain data, for results.json (``out``/``quiet``/``force`` excluded:
        they do not change a number)."""
        d = asdict(self)
        for name in _NOT_RECORDED:
            d.pop(name)
        return d


@dataclass(frozen=True)
class FrozenLakeConfig(RecordedConfig):
    """Every choice of the Frozen Lake experiment (IFT paper, arXiv 2405.11870, sec. 5.3, app. B.2).

    The paper gives none of these numbers; ours are published in each report.

    * ``map``: ``"two-path"`` (mdpalign.envs.frozen_lake.TWO_PATH_MAP), ``"4x4"``/``"8x8"`` or
      comma-separated rows; the optimal trajectory is the unique shortest S→G path, the
      sub-optimal one is chosen by ``two_path_lake_from_map(rows, suboptimal)``.
    * ``beta_star``: temperature of pi* = soft value iteration with a uniform reference.
    * ``base``: behaviour policy that theta_0 (initialisation and reference) is distilled from:
      ``"uniform"`` or ``"eps-greedy"`` (epsilon ``base_epsilon`` around the hard optimum).
    * ``dpo_beta``, ``ipo_tau``: DPO's beta and IPO's tau (``dpo_loss(beta=tau, loss_type="ipo")``,
      summed log-probs as in the paper, no length normalisation).
    * ``orpo_lambda``: ORPO's lambda (NLL over the chosen trajectory's tokens).
    * ``ift_lambda``, ``ift_decay``: IFT's fusion weight and the decay of its propagation weights.
    * ``crlft_weights``: class weights (expert, sub-optimal); OpenChat's constants by default.
      With ``crlft_beta`` set they are read as class rewards r_c and the weights are
      exp(r_c / crlft_beta) (``mdpalign.objectives.crlft_class_weights``, OpenChat's Eq. 6).
    """

    #: the ``kind`` in the report's manifest (mdpalign.bench.report): only a frozen-lake report is replaced
    REPORT_KIND: ClassVar[str] = "frozen-lake"

    seeds: int = 5
    steps: int = 200
    eval_every: int = 10
    map: str = "two-path"
    slippery: bool = False
    suboptimal: str = "longer"
    methods: tuple[str, ...] = FROZEN_LAKE_METHODS
    gamma: float = 0.95
    beta_star: float = 0.05
    hidden: int = 32
    lr: float = 0.01
    seed: int = 0
    base: str = "uniform"
    base_epsilon: float = 0.2
    distill_max_iter: int = 150
    dpo_beta: float = 0.1
    ipo_tau: float = 0.1
    orpo_lambda: float = 0.1
    ift_lambda: float = 0.2
    ift_decay: float = 0.95
    crlft_weights: tuple[float, float] = (1.0, 0.1)
    crlft_beta: float | None = None
    out: str = "reports/frozen-lake"
    quiet: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "eval_every", "hidden", "distill_max_iter"):
            object.__setattr__(self, name, _check_positive_int(name, getattr(self, name)))
        for name in ("beta_star", "lr", "dpo_beta", "ipo_tau", "orpo_lambda"):
            object.__setattr__(self, name, _check_positive(name, getattr(self, name)))
        if self.eval_every > self.steps:
            raise BenchConfigError("{eval_every} ({k}) is larger than {steps} ({n})", ("eval_every", "steps"),
                                   k=self.eval_every, n=self.steps)
        if self.suboptimal not in ("longer", "hole"):
            raise BenchConfigError("{suboptimal} must be 'longer' or 'hole'; got {got}", ("suboptimal",),
                                   got=repr(self.suboptimal))
        gamma = as_number(self.gamma)
        if not 0.0 < gamma < 1.0:
            raise BenchConfigError("{gamma} must lie in (0, 1) (paths are ranked by discounting); got {got}",
                                   ("gamma",),
                                   got=repr(self.gamma))
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "methods", _check_subset("methods", self.methods, FROZEN_LAKE_METHODS))
        if not isinstance(self.map, str) or not self.map.strip():
            raise BenchConfigError("{map} must be 'two-path', a gymnasium map name or comma-separated rows; got {got}",
                                   ("map",), got=repr(self.map))
        if self.base not in ("uniform", "eps-greedy"):
            raise BenchConfigError("{base} must be 'uniform' or 'eps-greedy'; got {got}", ("base",),
                                   got=repr(self.base))
        if not 0.0 < as_number(self.base_epsilon) <= 1.0:
            raise BenchConfigError("{base_epsilon} must lie in (0, 1]; got {got}", ("base_epsilon",),
                                   got=repr(self.base_epsilon))
        if not 0.0 <= as_number(self.ift_lambda) < 1.0:
            raise BenchConfigError("{ift_lambda} must lie in [0, 1); got {got}", ("ift_lambda",),
                                   got=repr(self.ift_lambda))
        if not 0.0 <= as_number(self.ift_decay) <= 1.0:
            raise BenchConfigError("{ift_decay} must lie in [0, 1]; got {got}", ("ift_decay",),
                                   got=repr(self.ift_decay))
        w = _reals(self.crlft_weights)
        if self.crlft_beta is not None:
            object.__setattr__(self, "crlft_beta", _check_positive("crlft_beta", self.crlft_beta))
            if len(w) != 2 or not all(math.isfinite(x) for x in w):
                raise BenchConfigError("{crlft_weights} (class rewards with {crlft_beta}) must be two finite numbers; "
                                       "got {got}", ("crlft_weights", "crlft_beta"), got=repr(self.crlft_weights))
        elif len(w) != 2 or not all(x > 0 and math.isfinite(x) for x in w):
            raise BenchConfigError("{crlft_weights} must be two positive numbers (expert, sub-optimal); got {got}",
                                   ("crlft_weights",), got=repr(self.crlft_weights))
        object.__setattr__(self, "crlft_weights", w)
        object.__setattr__(self, "slippery", bool(self.slippery))
        object.__setattr__(self, "seed", _check_seeds(self.seed, self.seeds))
        object.__setattr__(self, "force", bool(self.force))

    @property
    def map_rows(self) -> tuple[str, ...] | None:
        """The rows of ``--map ROWS`` (comma-separated); None for 'two-path' and gymnasium's names."""
        if self.map in ("two-path", "4x4", "8x8"):
            return None
        return tuple(r.strip() for r in self.map.split(",") if r.strip())



@dataclass(frozen=True)
class BanditsConfig(RecordedConfig):
    """Settings of the bandit benchmark (each objective vs its own optimum and vs the RLHF optimum)."""

    REPORT_KIND: ClassVar[str] = "bandits"

    seeds: int = 5
    steps: int = 500
    eval_every: int = 20
    arms: int = 5
    contexts: int = 3
    beta: float = 0.5
    objectives: tuple[str, ...] = BANDIT_OBJECTIVES
    regimes: tuple[str, ...] = BANDIT_REGIMES
    lr: float = 0.2
    seed: int = 0
    reward_scale: float = 2.0
    partial_fraction: float = 0.5
    expert_fraction: float = 0.5
    orpo_lambda: float = 0.1
    crlft_weights: tuple[float, float] = (1.0, 0.1)
    out: str = "reports/bandits"
    quiet: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "eval_every", "contexts"):
            object.__setattr__(self, name, _check_positive_int(name, getattr(self, name)))
        if _check_positive_int("arms", self.arms) < 2:
            raise BenchConfigError("{arms} must be at least 2 (a preference needs two arms); got {got}", ("arms",),
                                   got=self.arms)
        for name in ("beta", "lr", "reward_scale", "orpo_lambda"):
            object.__setattr__(self, name, _check_positive(name, getattr(self, name)))
        if self.eval_every > self.steps:
            raise BenchConfigError("{eval_every} ({k}) is larger than {steps} ({n})", ("eval_every", "steps"),
                                   k=self.eval_every, n=self.steps)
        object.__setattr__(self, "objectives", _check_subset("objectives", self.objectives, BANDIT_OBJECTIVES))
        object.__setattr__(self, "regimes", _check_subset("regimes", self.regimes, BANDIT_REGIMES))
        for name in ("partial_fraction", "expert_fraction"):
            v = as_number(getattr(self, name))
            if not 0.0 < v < 1.0:
                raise BenchConfigError("{%s} must lie in (0, 1); got {got}" % name, (name,), got=repr(v))
        w = _reals(self.crlft_weights)
        if len(w) != 2 or not all(x > 0 and math.isfinite(x) for x in w):
            raise BenchConfigError("{crlft_weights} must be two positive numbers; got {got}", ("crlft_weights",),
                                   got=repr(self.crlft_weights))
        object.__setattr__(self, "crlft_weights", w)
        object.__setattr__(self, "seed", _check_seeds(self.seed, self.seeds))
        object.__setattr__(self, "force", bool(self.force))

