"""Shared vocabulary of the proofs: what an optimum *is*, and how a trained policy is checked against it.

Every objective in :mod:`mdpalign.proofs` answers one question about a tabular softmax policy
``pi(y|x) = softmax(theta_x)_y`` (one logit per context ``x`` and arm ``y``): *which policies
minimise the population loss?* Three kinds of answer occur, and each is a subclass of
:class:`Optimum`:

* :class:`UniqueOptimum` — a unique minimiser with finite logits (e.g. KL-RL, DPO with every pair
  compared under Bradley–Terry labels).
* :class:`PinnedDifferences` — minimisers exist but are not unique: only some log-probability
  differences ``log pi(i|x) - log pi(j|x)`` are pinned (e.g. DPO under partial coverage: one free
  offset per connected comparison component, uncompared arms entirely free).
* :class:`NoFiniteOptimum` — the infimum is not attained by finite logits (deterministic
  preferences, SFT with unseen arms, ORPO with one chosen and one rejected arm). The
  characterisation then says which arms' probabilities vanish along every minimising sequence,
  which differences stay pinned, what the limit policy is where it is unique, and which quantity
  diverges.

All three share the same data — a per-context mask of ``vanishing`` arms, a list of pinned
log-probability differences, optionally the (limit) ``policy`` — and the same
:meth:`Optimum.check`, which measures how far a trained policy is from satisfying the
characterisation.

Units of :attr:`CheckResult.max_violation`: log-probability differences (nats) for pinned
differences and for ``|log pi - log pi*|`` on the support of a unique policy; probability mass for
vanishing arms. For a policy within ``eps`` of the optimum in logits both are ``O(eps)``, so one
tolerance serves both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from scipy.special import logsumexp

from mdpalign.checks import as_integer, check_positive, to_numpy
from mdpalign.data import DemoData, PreferenceData
from mdpalign.errors import MdpalignError

__all__ = [
    "ProofInputError",
    "NoClosedFormError",
    "CheckResult",
    "Optimum",
    "UniqueOptimum",
    "PinnedDifferences",
    "NoFiniteOptimum",
    "as_log_policy",
    "log_normalise",
    "check_policy_table",
    "pair_table",
    "demo_table",
    "optimum_from_target",
    "optimum_kind",
    "make_optimum",
    "pinned_all_pairs",
    "pinned_array",
]


class ProofInputError(MdpalignError, ValueError):
    """The arrays handed to a closed form do not describe a valid problem; the message says where."""


def proof_array(a: Any, name: str = "input") -> np.ndarray:
    """``a`` (array-like or torch tensor) as float64; text or a ragged nested list is a :class:`ProofInputError`
    naming ``name``."""
    return to_numpy(a, name=name, error=ProofInputError)


class NoClosedFormError(MdpalignError, ValueError):
    """The problem is outside the cases this module has a proven closed form for."""


# --------------------------------------------------------------------------- small numpy helpers


def log_normalise(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log softmax`` along ``axis`` in float64: ``logits - logsumexp(logits)``."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits - logsumexp(logits, axis=axis, keepdims=True)


def check_policy_table(policy: Any, name: str = "ref_policy", *, allow_zero: bool = False) -> np.ndarray:
    """Validate an ``(X, K)`` row-stochastic table (a 1-D ``(K,)`` vector is read as ``X = 1``)."""
    p = proof_array(policy, name)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2:
        raise ProofInputError(f"{name} must have shape (X, K) or (K,), got {p.shape}")
    if p.shape[1] < 1:
        raise ProofInputError(f"{name} has no arms (shape {p.shape})")
    if not np.all(np.isfinite(p)):
        raise ProofInputError(f"{name} has non-finite entries at {np.argwhere(~np.isfinite(p))[:5].tolist()}")
    bad = (p < 0) if allow_zero else (p <= 0)
    if bad.any():
        what = "negative" if allow_zero else "non-positive"
        raise ProofInputError(f"{name} has {what} entries at (context, arm) {np.argwhere(bad)[:5].tolist()}")
    rows = p.sum(axis=1)
    off = np.abs(rows - 1.0) > 1e-9
    if off.any():
        x = int(np.argmax(off))
        raise ProofInputError(f"{name} row {x} sums to {rows[x]!r}, not 1")
    return p


def as_log_policy(probs: Any = None, *, log_probs: Any = None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``log pi`` ``(X, K)`` float64 from either probabilities or log-probabilities.

    Exactly one of ``probs`` / ``log_probs`` must be given; torch tensors are accepted. Rows must be
    normalised (to 1e-8): a check against an unnormalised table would measure the wrong thing.
    """
    if (probs is None) == (log_probs is None):
        raise ProofInputError("give exactly one of probs= or log_probs=")
    if log_probs is not None:
        lp = proof_array(log_probs, "log_probs")
        name = "log_probs"
    else:
        p = proof_array(probs, "probs")
        if (p < 0).any():
            raise ProofInputError(f"probs has negative entries at {np.argwhere(p < 0)[:5].tolist()}")
        with np.errstate(divide="ignore"):
            lp = np.log(p)
        name = "probs"
    if lp.ndim == 1:
        lp = lp[None, :]
    if lp.ndim != 2:
        raise ProofInputError(f"{name} must have shape (X, K), got {lp.shape}")
    if shape is not None and lp.shape != tuple(shape):
        raise ProofInputError(f"{name} has shape {lp.shape}, the problem has shape {tuple(shape)}")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ProofInputError(f"{name} has NaN or +inf entries")
    mass = np.exp(logsumexp(lp, axis=1))
    off = np.abs(mass - 1.0) > 1e-8
    if off.any():
        x = int(np.argmax(off))
        raise ProofInputError(f"{name} row {x} has total probability {mass[x]!r}, not 1")
    return lp


def table_array(table: Any, name: str, expect: tuple[int, ...]) -> np.ndarray:
    """``table`` as float64 of shape ``expect``, finite and >= 0, or :class:`ProofInputError`."""
    T = proof_array(table, name)
    if T.shape != expect:
        raise ProofInputError(f"{name} must have shape {expect}, got {T.shape}")
    if not np.isfinite(T).all() or (T < 0).any():
        raise ProofInputError(f"{name} must be finite and >= 0")
    return T


def data_sizes(data: Any, name: str, n_contexts: int | None, n_arms: int | None) -> tuple[int, int]:
    """``(n_contexts, n_arms)`` of a :mod:`mdpalign.data` container, checked against the sizes a caller gave."""
    for what, given, own in (("n_contexts", n_contexts, data.n_contexts), ("n_arms", n_arms, data.n_arms)):
        if given is not None and (as_integer(given) is None or as_integer(given) < 1):
            raise ProofInputError(f"{what} must be an integer >= 1, got {given!r}")
        if given is not None and int(given) != own:
            raise ProofInputError(f"{name} has {what}={own}, the problem has {given}")
    if len(data) == 0:
        raise ProofInputError(f"{name} is empty")
    return data.n_contexts, data.n_arms


def pair_table(pairs: Any, n_contexts: int | None = None, n_arms: int | None = None) -> np.ndarray:
    """Win-weight table ``W[x, i, j]`` = total weight of rows where ``i`` was chosen over ``j`` in ``x``.

    ``pairs``: :class:`mdpalign.data.PreferenceData` (its :meth:`~mdpalign.data.PreferenceData.weight_table`)
    or an ``(X, K, K)`` table (validated; then ``n_contexts``/``n_arms`` are required). Population data
    (weights ``mu(x) w_ij P(i > j)``) give the population loss ``sum_x sum_ij W[x,i,j] * loss(i over j)``.
    """
    if isinstance(pairs, PreferenceData):
        data_sizes(pairs, "pairs", n_contexts, n_arms)
        return pairs.weight_table()
    if not isinstance(pairs, np.ndarray) and not hasattr(pairs, "detach"):
        raise ProofInputError(f"pairs must be a mdpalign.data.PreferenceData or an (X, K, K) win table; "
                              f"got {type(pairs).__name__}")
    if n_contexts is None or n_arms is None:
        W = proof_array(pairs, "win table")
        if W.ndim != 3 or W.shape[1] != W.shape[2]:
            raise ProofInputError(f"win table must have shape (X, K, K), got {W.shape}")
        n_contexts, n_arms = W.shape[:2]
    W = table_array(pairs, "win table", (n_contexts, n_arms, n_arms))
    self_won = np.argwhere(np.diagonal(W, axis1=1, axis2=2) != 0)
    if self_won.size:  # an arm preferred to itself is no comparison: a loss term with a zero margin, silently
        x, i = (int(v) for v in self_won[0])
        raise ProofInputError(f"win table compares arm {i} with itself in context {x} (nonzero W[{x}, {i}, {i}])")
    return W


def demo_table(demos: Any, n_contexts: int | None = None, n_arms: int | None = None) -> np.ndarray:
    """Demonstration weight table ``D[x, y]`` ``(X, K)``.

    ``demos``: :class:`mdpalign.data.DemoData` (its :meth:`~mdpalign.data.DemoData.weight_table`) or an
    ``(X, K)`` (or ``(K,)``) non-negative table, returned validated so callers may pass a distribution.
    """
    if isinstance(demos, DemoData):
        data_sizes(demos, "demonstrations", n_contexts, n_arms)
        return demos.weight_table()
    if not isinstance(demos, np.ndarray) and not hasattr(demos, "detach"):
        raise ProofInputError(f"demonstrations must be a mdpalign.data.DemoData or an (X, K) table; "
                              f"got {type(demos).__name__}")
    D = proof_array(demos, "demonstration table")
    if D.ndim == 1:
        D = D[None, :]
    if D.ndim != 2:
        raise ProofInputError(f"demonstration table must be (X, K), got shape {D.shape}")
    expect = D.shape if n_contexts is None or n_arms is None else (n_contexts, n_arms)
    return table_array(D, "demonstration table", expect)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :meth:`Optimum.check`: ``ok`` iff ``max_violation <= tol``; ``detail`` names the worst entry."""

    ok: bool
    max_violation: float
    detail: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, eq=False)
class Optimum:
    """Exact characterisation of the minimisers of a population loss over tabular softmax policies.

    Attributes
    ----------
    objective:
        Name of the objective (``"dpo"``, ``"sft"``, ...).
    shape:
        ``(X, K)``: contexts (states) by arms (actions).
    policy:
        The optimal policy ``(X, K)`` where it is unique — for a :class:`NoFiniteOptimum` the limit
        policy of every minimising sequence — else ``None``. Rows of contexts the objective says
        nothing about are ``nan``.
    pinned:
        ``(M, 4)`` float array of rows ``(x, i, j, value)``: every optimum (or every limit point)
        has ``log pi(i|x) - log pi(j|x) = value``.
    vanishing:
        ``(X, K)`` bool: arms whose probability is 0 at the optimum (tends to 0 along every
        minimising sequence).
    constrained:
        ``(X,)`` bool: contexts the loss depends on at all.
    attained:
        Whether a minimiser with finite logits exists.
    diverging:
        Where ``attained`` is false: the quantity that grows without bound along minimising
        sequences, in words.
    infimum:
        The infimum of the population loss where it is known in closed form, else ``None``.
    derivation:
        One paragraph: why this is the optimum (the module docstring has the full derivation).
    extras:
        Objective-specific closed-form by-products (soft values, scores, ...).
    """

    objective: str
    shape: tuple[int, int]
    policy: np.ndarray | None
    pinned: np.ndarray
    vanishing: np.ndarray
    constrained: np.ndarray
    attained: bool
    diverging: str | None = None
    infimum: float | None = None
    derivation: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def unique(self) -> bool:
        """The optimum (or the limit) is one policy on every constrained context.

        Contexts outside ``constrained`` are either free (then the optimum is a
        :class:`PinnedDifferences`) or irrelevant (complete prefixes of a token tree, where no
        decision is taken)."""
        if self.policy is None:
            return False
        return bool(np.isfinite(self.policy[self.constrained]).all())

    def null_dimension(self) -> int:
        """Dimension of the logit directions the optimum leaves free: per constrained context
        ``K - rank(pinned differences)``, per unconstrained context ``K``. For an attained optimum of a
        loss that depends on the logits only through the pinned differences, this is the dimension
        of the Hessian's null space (used by the tolerance certificate of the harness)."""
        X, K = self.shape
        total = 0
        for x in range(X):
            if not self.constrained[x]:
                total += K
                continue
            rows = self.pinned[self.pinned[:, 0] == x]
            if len(rows) == 0:
                total += K
                continue
            A = np.zeros((len(rows), K))
            A[np.arange(len(rows)), rows[:, 1].astype(int)] += 1.0
            A[np.arange(len(rows)), rows[:, 2].astype(int)] -= 1.0
            total += K - int(np.linalg.matrix_rank(A))
        return total

    def log_policy(self) -> np.ndarray:
        if self.policy is None:
            raise NoClosedFormError(f"{self.objective}: the optimum is not unique; use pinned differences")
        with np.errstate(divide="ignore"):
            return np.log(self.policy)

    def check(self, probs: Any = None, *, log_probs: Any = None, tol: float = 1e-6) -> CheckResult:
        """Does a policy satisfy this characterisation, and by how much does it miss?

        ``max_violation`` is the largest of

        * ``|log pi(y|x) - log pi*(y|x)|`` over the support of a unique (limit) policy,
        * ``|log pi(i|x) - log pi(j|x) - value|`` over the pinned differences,
        * ``pi(y|x)`` over vanishing arms,

        restricted to constrained contexts. ``ok`` is ``max_violation <= tol``.
        """
        tol = check_positive(tol, "tol", allow_zero=True, error=ProofInputError)
        lp = as_log_policy(probs, log_probs=log_probs, shape=self.shape)
        worst, where = 0.0, "no constraint"
        if self.policy is not None:
            with np.errstate(divide="ignore"):
                lstar = np.log(self.policy)
            sup = (self.policy > 0) & self.constrained[:, None] & np.isfinite(lstar)
            if sup.any():
                dev = np.where(sup, np.abs(lp - np.where(sup, lstar, 0.0)), 0.0)
                x, y = np.unravel_index(int(np.argmax(dev)), dev.shape)
                if dev[x, y] >= worst:
                    worst, where = float(dev[x, y]), f"|log pi - log pi*| at context {x}, arm {y}"
        if len(self.pinned):
            x, i, j = (self.pinned[:, k].astype(int) for k in range(3))
            dev = np.abs(lp[x, i] - lp[x, j] - self.pinned[:, 3])
            r = int(np.argmax(dev))
            if dev[r] >= worst:
                worst = float(dev[r])
                where = (
                    f"pinned difference at context {x[r]}: log pi({i[r]}) - log pi({j[r]}) = {self.pinned[r, 3]:.6g}"
                )
        van = self.vanishing & self.constrained[:, None]
        if van.any():
            mass = np.where(van, np.exp(lp), 0.0)
            x, y = np.unravel_index(int(np.argmax(mass)), mass.shape)
            if mass[x, y] >= worst:
                worst, where = float(mass[x, y]), f"mass on vanishing arm {y} of context {x}"
        ok = worst <= tol
        return CheckResult(
            ok, worst, f"{self.kind}({self.objective}): max violation {worst:.3e} ({where}); tol {tol:.1e}"
        )

    def representative(self, fill: np.ndarray | None = None) -> np.ndarray:
        """One member of the optimal set (one limit point for :class:`NoFiniteOptimum`).

        Where the characterisation leaves mass free, it is split in proportion to ``fill`` (``(X, K)``
        positive, default uniform); pinned differences are then imposed component by component.
        """
        X, K = self.shape
        if self.unique and self.constrained.all():
            return self.policy.copy()
        base = np.full((X, K), 1.0 / K) if fill is None else check_policy_table(fill, "fill")
        logit = np.log(base)
        # impose pinned differences by a spanning forest walk: each pinned pair fixes j relative to i
        for x in range(X):
            rows = self.pinned[self.pinned[:, 0] == x]
            g = nx.Graph()
            for _, i, j, v in rows:
                g.add_edge(int(i), int(j), value=float(v), src=int(i))
            for comp in nx.connected_components(g):
                root = min(comp)
                offset = logit[x, root]
                for a, b in nx.bfs_edges(g, root):
                    e = g.edges[a, b]
                    # value = log pi(src) - log pi(other)
                    if e["src"] == a:
                        logit[x, b] = logit[x, a] - e["value"]
                    else:
                        logit[x, b] = logit[x, a] + e["value"]
                logit[x, root] = offset
        out = np.exp(log_normalise(logit))
        out[self.vanishing] = 0.0
        out /= out.sum(axis=1, keepdims=True)
        if self.policy is not None:
            rows = self.constrained & np.all(np.isfinite(self.policy), axis=1)
            out[rows] = self.policy[rows]
        return out


class UniqueOptimum(Optimum):
    """A unique minimiser with finite logits (up to the per-context logit shift)."""


class PinnedDifferences(Optimum):
    """Minimisers exist but form a set: only ``pinned`` log-probability differences are determined."""


class NoFiniteOptimum(Optimum):
    """The infimum is approached only as some logits diverge; ``policy`` is the limit where unique."""



def pinned_all_pairs(x: int, arms: np.ndarray, log_target: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Rows ``(x, i, j, log_target[i] - log_target[j])`` for every ordered pair ``i < j`` of ``arms``."""
    arms = [int(a) for a in arms]
    return [(x, i, j, float(log_target[i] - log_target[j])) for k, i in enumerate(arms) for j in arms[k + 1 :]]


def pinned_array(rows: list) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def optimum_kind(vanishing: np.ndarray, free: np.ndarray) -> type[Optimum]:
    """Which kind of optimum: not attained if any arm vanishes, else a set if any context is free, else unique."""
    if vanishing.any():
        return NoFiniteOptimum
    return PinnedDifferences if free.any() else UniqueOptimum


def make_optimum(
    objective: str,
    policy: np.ndarray | None,
    pinned: np.ndarray,
    vanishing: np.ndarray,
    constrained: np.ndarray,
    free: np.ndarray,
    *,
    diverging: str,
    derivation: str = "",
    infimum: float | None = None,
    extras: dict | None = None,
) -> Optimum:
    """The :class:`Optimum` of :func:`optimum_kind` (``diverging`` is kept only when the optimum is not attained)."""
    kind = optimum_kind(vanishing, free)
    return kind(
        objective=objective,
        shape=vanishing.shape,
        policy=policy,
        pinned=pinned,
        vanishing=vanishing,
        constrained=constrained,
        attained=kind is not NoFiniteOptimum,
        diverging=diverging if kind is NoFiniteOptimum else None,
        infimum=infimum,
        derivation=derivation,
        extras=extras or {},
    )


def optimum_from_target(
    objective: str,
    target: np.ndarray,
    *,
    constrained: np.ndarray | None = None,
    derivation: str = "",
    diverging_if_zero: str = "",
    infimum: float | None = None,
    extras: dict | None = None,
    free: np.ndarray | None = None,
    log_target: np.ndarray | None = None,
) -> Optimum:
    """Wrap a closed-form target policy ``(X, K)`` (rows of unconstrained contexts ignored).

    Pass ``log_target`` (and any ``target``, e.g. ``None``) where the target is known in log space:
    probabilities that underflow to 0 in float64 (``r/beta`` differences beyond ~745) are then still
    positive, and the pinned log-ratios keep their exact values.

    Zeros in a constrained row mean the optimum is not attained: those logits must go to -inf
    relative to the others, so the result is a :class:`NoFiniteOptimum` whose limit is ``target``.
    Free contexts (default: every unconstrained one) make the minimiser set non-unique
    (:class:`PinnedDifferences`, with the constrained rows' log-ratios pinned); pass ``free`` to mark
    unconstrained rows that are merely irrelevant (e.g. complete prefixes of a token tree).
    """
    if log_target is not None:
        log_target = np.asarray(log_target, dtype=np.float64)
        target = np.exp(log_target)
        positive = log_target > -np.inf
    else:
        target = np.asarray(target, dtype=np.float64)
        positive = target > 0
        with np.errstate(divide="ignore"):
            log_target = np.where(positive, np.log(np.where(positive, target, 1.0)), -np.inf)
    X, K = target.shape
    constrained = np.ones(X, bool) if constrained is None else np.asarray(constrained, bool)
    policy = np.where(constrained[:, None], target, np.nan)
    vanishing = constrained[:, None] & ~positive
    rows: list = []
    for x in np.flatnonzero(constrained):
        sup = np.flatnonzero(positive[x])
        rows += pinned_all_pairs(int(x), sup, np.where(positive[x], log_target[x], 0.0))
    free = ~constrained if free is None else np.asarray(free, bool)
    return make_optimum(objective, policy, pinned_array(rows), vanishing, constrained, free, infimum=infimum,
                        derivation=derivation, extras=extras,
                        diverging=diverging_if_zero or "logits of zero-target arms -> -inf")
