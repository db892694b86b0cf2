r"""Tabular Bradley–Terry reward models: the population maximum-likelihood scores, with a margin and
with TRL's centring penalty.

Per context, one score ``s_i`` per response; win weights ``W[i, j]`` (total weight of "``i`` chosen over
``j``", :func:`mdpalign.proofs.base.pair_table`); optional margins ``m_ij`` (TRL ``RewardTrainer``'s
per-example ``margin`` column) and centring coefficient ``c`` (TRL ``center_rewards_coefficient``).
TRL's batch loss is ``mean(-log sigma(r_c - r_r - m)) + c mean((r_c + r_r)^2)`` — both means over the
same pairs — so the population loss is, up to the factor ``1/sum W``,

    L(s) = sum_ij W_ij [ -log sigma(s_i - s_j - m_ij) + c (s_i + s_j)^2 ].

Stationarity (``d_ij = s_i - s_j``)::

    sum_j W_ij sigma(m_ij - d_ij) - sum_j W_ji sigma(m_ji - d_ji) = 2 c sum_j N_ij (s_i + s_j),   N = W + W^T.

* ``m = 0, c = 0``: ``sum_j W_ij = sum_j N_ij sigma(d_ij)`` — expected wins equal observed wins. The loss
  is convex, strictly convex on each comparison component modulo its constant (Hessian: the
  Laplacian with weights ``W_ij sigma'(d_ij - m_ij) + W_ji sigma'(d_ji - m_ji) > 0``); a finite minimiser
  exists iff every weakly connected component of the win graph is strongly connected (Zermelo 1929,
  Ford 1957; :func:`mdpalign.proofs.dpo.ford_condition`) — a margin changes none of this (it shifts
  the losses, not their recession directions). The scores are unique up to one constant per
  component (:func:`mdpalign.proofs.dpo.bradley_terry_scores` is the ``m = 0`` solver).
* Margin, two arms, ``n_w`` wins and ``n_l`` losses of ``a`` against ``b``: ``n_w sigma(m - Delta) = n_l sigma(Delta +
  m)``
  (:func:`bradley_terry_two_arm_margin`); 3:1 with ``m = 1`` gives ``Delta = 1.7820`` (not ``log 3 = 1.0986``):
  the margin inflates the score gaps of contested pairs.
* Centring, ``c > 0``: ``c sum W_ij (s_i + s_j)^2 = c s^T Q s`` with ``Q = D + N`` the *signless* Laplacian of
  ``N`` (``D = diag(N 1)``). ``Q`` is positive definite on a connected component iff that component is
  not bipartite; on a bipartite one (sides ``A``, ``B``) its null vector is ``v = 1_A - 1_B``. So the
  Hessian ``BT Laplacian (null: constants) + 2cQ (null: v)`` is positive definite: the free constant is
  gone and the minimiser is unique. It exists iff no bipartite component has every win going from
  one side to the other (the only remaining recession directions are ``+-v``, along which the BT
  loss decreases only then) — so a non-bipartite component gets finite scores even without
  Ford's condition (e.g. a deterministic triangle). Along the family, ``s(c)^T Q s(c)`` is
  non-increasing in ``c`` (a penalised problem's penalty never grows with its weight) — the ridge
  shrinks the scores and, on non-bipartite graphs, their differences.
  ``c -> 0+`` selects, within the ``c = 0`` solution set, the constant minimising ``sum W (s_i + s_j + 2a)^2``:
  ``sum_i deg_i s_i = 0`` with ``deg = N 1`` (``gauge="degree"``).

Triangle example (unit weight per pair, ``P(a > b) = .8``, ``P(b > c) = .7``, ``P(a > c) = .5``):
``s_a - s_b = 0.5509`` at ``c = 0``, ``0.5352`` at ``c = .01``, ``0.4277`` at ``c = .1`` (THEORY.md's 0.551 ->
0.535 -> 0.428 confirmed with these data).

Gauge at ``c = 0`` (``gauge``): ``"mean"`` — zero mean on each component, what plain gradient descent
from zero scores keeps (the gradient sums to 0 over every component; Adam's per-coordinate scaling
does not preserve it) — or ``"degree"``, the ``c -> 0+`` limit above. Uncompared responses get no
score (``nan``).

Certificate. On the ball ``||s' - s||_2 <= rho`` every ``|d_ij - m_ij|`` grows by at most ``2 rho``, and
``sigma'`` is even and decreasing in ``|z|``, so the Hessian dominates ``Lap(w(rho)) + 2cQ`` with
``w_ij(rho) = W_ij sigma'(|d_ij - m_ij| + 2 rho) + W_ji sigma'(|d_ji - m_ji| + 2 rho)``; with ``mu(rho)`` its
smallest eigenvalue on the relevant subspace (``1^perp`` per component at ``c = 0``), the minimiser lies
within ``||grad||_2 / mu(rho)`` of ``s`` as soon as that is ``<= rho`` (strong convexity on the ball).
``extras["error_bound"]`` is that radius (sup-norm bound on the gauge-fixed scores: ``2 rho`` for
``"degree"``), the gradient's rounding included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, log_expit

from mdpalign.checks import check_positive
from mdpalign.proofs._certify import gamma
from mdpalign.proofs.base import CheckResult, ProofInputError, proof_array
from mdpalign.proofs.dpo import bradley_terry_scores, ford_condition

__all__ = [
    "RewardModelOptimum",
    "REWARD_GAUGES",
    "bradley_terry_reward_optimum",
    "reward_model_loss",
    "bradley_terry_two_arm_margin",
]

REWARD_GAUGES = ("mean", "degree")


@dataclass(frozen=True, eq=False)
class RewardModelOptimum:
    """The minimisers of the population reward-model loss, over score tables ``(X, K)``.

    ``scores``: the minimiser in the chosen gauge (``nan`` for uncompared responses and for
    components without a finite minimiser); ``components``: per context, the comparison components
    (lists of arms, those in at least one pair); ``pinned``: rows ``(x, i, j, s_i - s_j)`` that every
    minimiser (every limit point, when not attained) satisfies; ``absolute``: ``(X, K)`` arms whose
    score itself is pinned (``c > 0``); ``attained``: a finite minimiser exists; ``diverging``: what
    diverges otherwise. ``extras``: ``error_bound`` per context, ``gradient`` (sup-norm at the
    returned scores), ``sccs`` where Ford's condition fails.
    """

    scores: np.ndarray
    components: list
    pinned: np.ndarray
    absolute: np.ndarray
    attained: bool
    margin: Any
    center_coefficient: float
    gauge: str
    diverging: str | None = None
    derivation: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape

    def check(self, scores: Any, tol: float = 1e-6) -> CheckResult:
        """``max |(s_i - s_j) - pinned|`` over pinned pairs and ``|s - s*|`` over absolute arms; ok iff ``<= tol``."""
        tol = check_positive(tol, "tol", allow_zero=True, error=ProofInputError)
        s = proof_array(scores, "scores")
        if s.ndim == 1:
            s = s[None]
        if s.shape != self.scores.shape:
            raise ProofInputError(f"scores has shape {s.shape}, the reward model has shape {self.scores.shape}")
        worst, where = 0.0, "no constraint"
        if len(self.pinned):
            x, i, j = (self.pinned[:, k].astype(int) for k in range(3))
            dev = np.abs(s[x, i] - s[x, j] - self.pinned[:, 3])
            if not np.isfinite(dev).all():
                raise ProofInputError("scores has non-finite entries on compared responses")
            r = int(np.argmax(dev))
            worst, where = float(dev[r]), f"s({i[r]}) - s({j[r]}) at context {x[r]} (pinned {self.pinned[r, 3]:.6g})"
        if self.absolute.any():
            dev = np.where(self.absolute, np.abs(s - np.where(self.absolute, self.scores, 0.0)), 0.0)
            x, y = np.unravel_index(int(np.argmax(dev)), dev.shape)
            if dev[x, y] >= worst:
                worst, where = float(dev[x, y]), f"|s - s*| at context {x}, arm {y}"
        return CheckResult(worst <= tol, worst, f"RewardModelOptimum: max violation {worst:.3e} ({where}); tol "
                                                f"{tol:.1e}")


def _margins(margin: Any, X: int, K: int) -> np.ndarray:
    if margin is None:
        return np.zeros((X, K, K))
    m = proof_array(margin, "margin")
    if m.ndim == 0:
        m = np.full((X, K, K), float(m))
    if m.shape != (X, K, K) or not np.isfinite(m).all():
        raise ProofInputError(f"margin must be a finite scalar or (X, K, K) = {(X, K, K)} array, got shape "
                              f"{np.shape(margin)}")
    return m


def _win_table(W: Any) -> np.ndarray:
    W = proof_array(W, "W")
    if W.ndim == 2:
        W = W[None]
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ProofInputError(f"W must be a win table (X, K, K) or (K, K), got shape {W.shape}")
    if not np.isfinite(W).all() or (W < 0).any():
        raise ProofInputError("W must be finite and >= 0")
    if (np.diagonal(W, axis1=1, axis2=2) != 0).any():
        raise ProofInputError("W has a response compared with itself (nonzero diagonal)")
    return W


def reward_model_loss(W: Any, scores: Any, margin: Any = None, center_coefficient: float = 0.0) -> float:
    """Population loss ``sum_ij W_ij [-log sigma(s_i - s_j - m_ij) + c (s_i + s_j)^2]`` (numpy float64)."""
    W = _win_table(W)
    X, K, _ = W.shape
    s = proof_array(scores, "scores")
    if s.size != X * K:
        raise ProofInputError(f"scores must have one entry per response of W, shape ({X}, {K}); got shape {s.shape}")
    s = s.reshape(X, K)
    m = _margins(margin, X, K)
    c = check_positive(center_coefficient, "center_coefficient", allow_zero=True, error=ProofInputError)
    d = s[:, :, None] - s[:, None, :]
    ssum = s[:, :, None] + s[:, None, :]
    with np.errstate(invalid="ignore"):
        terms = np.where(W > 0, W * (-log_expit(d - m) + c * ssum**2), 0.0)
    return float(terms.sum())


def bradley_terry_two_arm_margin(n_wins: float, n_losses: float, margin: float) -> float:
    """``Delta = s_a - s_b`` solving ``n_w sigma(m - Delta) = n_l sigma(Delta + m)`` (both counts > 0)."""
    nw = check_positive(n_wins, "n_wins", error=ProofInputError)
    nl = check_positive(n_losses, "n_losses", error=ProofInputError)
    m = float(margin)
    if not np.isfinite(m):
        raise ProofInputError(f"margin must be finite, got {margin!r}")
    def f(d):
        return nw * expit(m - d) - nl * expit(d + m)  # decreasing in d
    lo, hi = -abs(m) - abs(np.log(nw / nl)) - 1.0, abs(m) + abs(np.log(nw / nl)) + 1.0
    while f(lo) < 0:
        lo *= 2
    while f(hi) > 0:
        hi *= 2
    return float(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))


def _grad_hess(W, M, s, c):
    d = s[:, None] - s[None, :]
    z = d - M
    a = np.where(W > 0, W * expit(-z), 0.0)  # -dloss/dd_ij of each "i over j" term
    grad = -a.sum(axis=1) + a.sum(axis=0)
    sp = np.where(W > 0, W * expit(z) * expit(-z), 0.0)
    e = sp + sp.T
    H = np.diag(e.sum(axis=1)) - e
    absg = np.abs(a).sum(axis=1) + np.abs(a).sum(axis=0)
    if c > 0:
        N = W + W.T
        grad = grad + 2 * c * (N @ s + N.sum(axis=1) * s)
        H = H + 2 * c * (np.diag(N.sum(axis=1)) + N)
        absg = absg + 2 * c * (N @ np.abs(s) + N.sum(axis=1) * np.abs(s))
    return grad, H, absg


def _loss(W, M, s, c):
    d = s[:, None] - s[None, :]
    t = np.where(W > 0, -W * log_expit(d - M), 0.0).sum()
    if c > 0:
        t += c * (W * (s[:, None] + s[None, :]) ** 2).sum()
    return float(t)


def _newton_component(W, M, c, *, tol=1e-14, max_iter=500):
    """Damped Newton on one component (``c = 0``: gauge ``s_0 = 0``, grounded Hessian)."""
    n = W.shape[0]
    s = np.zeros(n)
    free = slice(1, None) if c == 0 else slice(None)
    f = _loss(W, M, s, c)
    scale = W.sum() * (1 + np.abs(M).max(initial=0.0))
    for _ in range(max_iter):
        g, H, absg = _grad_hess(W, M, s, c)
        if np.abs(g).max() <= max(tol * scale, 8 * gamma(n + 8) * absg.max()):
            break
        step = np.zeros(n)
        step[free] = np.linalg.solve(H[free, free], g[free])
        t = 1.0
        while True:
            sn = s - t * step
            fn = _loss(W, M, sn, c)
            if fn <= f - 1e-4 * t * float(g @ step) + 4 * np.finfo(float).eps * abs(f) or t < 1e-12:
                break
            t *= 0.5
        if t < 1e-12:
            sn = s - step
            fn = _loss(W, M, sn, c)
        s, f = sn, fn
    return s


def _certify_component(W, M, c, s):
    """Radius ``rho`` (2-norm, modulo constants at ``c = 0``) containing the minimiser; see the module docstring."""
    n = W.shape[0]
    g, _, absg = _grad_hess(W, M, s, c)
    if c == 0:
        g = g - g.mean()  # the exact gradient is orthogonal to constants; drop the rounding along 1
    gn = np.linalg.norm(g) + np.sqrt(n) * gamma(n + 8) * absg.max()
    d = s[:, None] - s[None, :]
    N = W + W.T
    Q = np.diag(N.sum(axis=1)) + N
    if c == 0:
        basis = np.linalg.qr(np.vstack([np.ones(n), np.eye(n)[: n - 1]]).T)[0][:, 1:]
    else:
        basis = np.eye(n)

    def mu(rho):
        z = np.abs(d - M) + 2 * rho
        sp = np.where(W > 0, W * expit(z) * expit(-z), 0.0)
        e = sp + sp.T
        H = np.diag(e.sum(axis=1)) - e + 2 * c * Q
        lam = np.linalg.eigvalsh(basis.T @ H @ basis).min() if basis.shape[1] else np.inf
        return lam * (1 - gamma(4 * n))  # eigvalsh's backward error is O(n u ||H||); generous

    m0 = mu(0.0)
    if not (m0 > 0):
        return np.inf
    for factor in (1.01, 1.5, 2.0, 4.0, 16.0):
        rho = max(gn / m0 * factor, 1e-300)
        if gn <= mu(rho) * rho:
            return float(rho)
    return np.inf


def _is_bipartite_one_way(Wc: np.ndarray) -> bool:
    g = nx.Graph()
    g.add_nodes_from(range(Wc.shape[0]))
    g.add_edges_from(zip(*np.nonzero(Wc + Wc.T > 0)))
    if not nx.is_bipartite(g):
        return False
    A, _ = nx.bipartite.sets(g)
    side = np.array([i in A for i in range(Wc.shape[0])])
    wins_ab = Wc[np.ix_(side, ~side)].sum()
    wins_ba = Wc[np.ix_(~side, side)].sum()
    return wins_ab == 0 or wins_ba == 0


def bradley_terry_reward_optimum(W: Any, margin: Any = None, center_coefficient: float = 0.0, *,
                                 gauge: str = "mean") -> RewardModelOptimum:
    """Tabular Bradley–Terry reward-model MLE per context (module docstring).

    ``W`` ``(X, K, K)`` or ``(K, K)`` win weights (:func:`mdpalign.proofs.base.pair_table`), ``margin``
    ``None``, a scalar or ``(X, K, K)`` (margin of "``i`` over ``j``"), ``center_coefficient`` ``c >= 0``,
    ``gauge`` ``"mean"`` | ``"degree"`` (only used when ``c = 0``).
    """
    W = _win_table(W)
    X, K, _ = W.shape
    M = _margins(margin, X, K)
    c = check_positive(center_coefficient, "center_coefficient", allow_zero=True, error=ProofInputError)
    if gauge not in REWARD_GAUGES:
        raise ProofInputError(f"gauge must be one of {REWARD_GAUGES}, got {gauge!r}")
    scores = np.full((X, K), np.nan)
    absolute = np.zeros((X, K), bool)
    rows: list = []
    comps_all, sccs_all = [], []
    bound = np.zeros(X)
    grad = np.zeros(X)
    problems: list[str] = []
    for x in range(X):
        N = W[x] + W[x].T
        g = nx.Graph()
        g.add_edges_from(zip(*np.nonzero(N > 0)))
        comps = [sorted(int(a) for a in comp) for comp in nx.connected_components(g)]
        comps_all.append(comps)
        sccs_x = []
        for comp in comps:
            Wc = W[x][np.ix_(comp, comp)]
            if c == 0:
                if ford_condition(Wc):
                    parts = [comp]
                else:
                    dg = nx.DiGraph()
                    dg.add_edges_from(zip(*np.nonzero(Wc > 0)))
                    parts = [sorted(comp[i] for i in scc) for scc in nx.strongly_connected_components(dg)]
                    sccs_x.append(parts)
                    problems.append(f"x={x}: component {comp} fails Ford's condition")
            else:
                if _is_bipartite_one_way(Wc):
                    problems.append(f"x={x}: bipartite component {comp} has every win from one side")
                    continue
                parts = [comp]
            for part in parts:
                if len(part) < 2:
                    continue  # an SCC of one arm: nothing pinned inside it
                Wp, Mp = W[x][np.ix_(part, part)], M[x][np.ix_(part, part)]
                if c == 0 and not np.any(Mp):
                    s = bradley_terry_scores(Wp)
                else:
                    s = _newton_component(Wp, Mp, c)
                rho = _certify_component(Wp, Mp, c, s)
                gg, _, _ = _grad_hess(Wp, Mp, s, c)
                grad[x] = max(grad[x], float(np.abs(gg).max()))
                if c == 0:
                    if gauge == "mean":
                        s = s - s.mean()
                        err = rho
                    else:
                        deg = (Wp + Wp.T).sum(axis=1)
                        s = s - (deg @ s) / deg.sum()
                        err = 2 * rho
                    rows += [(x, part[i], part[j], float(s[i] - s[j]))
                             for i in range(len(part)) for j in range(i + 1, len(part))]
                else:
                    absolute[x, part] = True
                    err = rho
                    rows += [(x, part[i], part[j], float(s[i] - s[j]))
                             for i in range(len(part)) for j in range(i + 1, len(part))]
                scores[x, part] = s
                bound[x] = max(bound[x], err)
        sccs_all.append(sccs_x)
    attained = not problems
    return RewardModelOptimum(
        scores=scores,
        components=comps_all,
        pinned=np.asarray(rows, dtype=np.float64).reshape(-1, 4),
        absolute=absolute,
        attained=attained,
        margin=margin,
        center_coefficient=c,
        gauge=gauge if c == 0 else "centred",
        diverging=None
        if attained
        else "score gaps diverge: " + "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else ""),
        derivation=(
            "convex BT loss, strictly convex modulo one constant per component (Ford's condition for finiteness)"
            if c == 0
            else "BT loss + signless-Laplacian ridge: strictly convex, unique scores"
        ),
        extras={"error_bound": bound, "gradient": grad, "sccs": sccs_all, "win_table": W},
    )
