"""Finite Markov decision processes as plain, validated data.

A :class:`TabularMDP` holds

* ``P`` — transition probabilities, either a dense ``(S, A, S)`` array or a
  ``scipy.sparse`` matrix of shape ``(S * A, S)`` whose row ``s * A + a`` is
  ``P(. | s, a)``;
* ``R`` — expected immediate reward ``(S, A)`` for taking ``a`` in ``s``;
* ``gamma`` — discount in ``[0, 1]``;
* ``initial`` — start-state distribution ``(S,)``;
* ``terminal`` — boolean mask ``(S,)`` of absorbing states whose value is 0.

Everything is float64. Construction validates the data and raises
:class:`InvalidMDPError` naming the problem and where it is; an instance is
therefore always a well-posed problem: at ``gamma == 1`` (a stochastic
shortest-path problem) a *proper* policy — one that reaches a terminal state
with probability 1 from every state — is guaranteed to exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

from mdpalign.checks import check_number
from mdpalign.errors import MdpalignError

__all__ = ["TabularMDP", "InvalidMDPError", "ROW_SUM_TOL", "reachable_mask"]

#: Largest tolerated deviation of a transition row (or the initial distribution) from summing to 1.
ROW_SUM_TOL = 1e-9

ArrayOrSparse = Union[np.ndarray, sp.spmatrix, sp.sparray]


def reachable_mask(adjacency, sources) -> np.ndarray:
    """Boolean ``(n,)``: nodes reachable from any of ``sources`` along the non-zero entries of ``adjacency``.

    One breadth-first search from a virtual super-source linked to every source: linear in the edges,
    where a search per source (or networkx's pure-Python graphs) is far too slow at 10^5+ states.
    Pass the transpose of a transition support to ask "which states can reach ``sources``".
    """
    adjacency = sp.csr_matrix(adjacency, copy=True)
    adjacency.eliminate_zeros()  # a stored zero is no edge
    n = adjacency.shape[0]
    sources = np.asarray(sources, dtype=np.int64).ravel()
    link = sp.csr_matrix((np.ones(sources.size, dtype=np.int8), (np.zeros(sources.size, dtype=np.int64), sources)),
                         shape=(1, n))
    graph = sp.bmat([[None, link], [sp.csr_matrix((n, 1), dtype=np.int8), adjacency]], format="csr")
    order = breadth_first_order(graph, 0, directed=True, return_predecessors=False)
    reached = np.zeros(n, dtype=bool)
    reached[order[order > 0] - 1] = True
    return reached


class InvalidMDPError(MdpalignError, ValueError):
    """The arrays given do not describe a valid MDP; the message says what and where."""


def _ragged_where(value, name: str) -> str | None:
    """Where a nested sequence stops being rectangular ("P[1] has 1 entries where P[0] has 2"), or None.

    Walks the nesting one depth at a time (breadth first), so the first difference reported is the shallowest."""
    level = [(name, value)]
    while level:
        nested = [(path, v) for path, v in level if isinstance(v, (list, tuple, np.ndarray))]
        if not nested:
            return None
        first_path, first = nested[0]
        if len(nested) != len(level):
            scalar_path = next(path for path, v in level if not isinstance(v, (list, tuple, np.ndarray)))
            return f"{scalar_path} is a number where {first_path} is a sequence"
        for path, v in nested[1:]:
            if len(v) != len(first):
                return f"{path} has {len(v)} entries where {first_path} has {len(first)}"
        level = [(f"{path}[{i}]", item) for path, v in nested for i, item in enumerate(v)]
    return None


def _float_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; a ragged nested list or a non-number raises :class:`InvalidMDPError` naming
    ``name`` and the place (numpy's own error names neither)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        ragged = _ragged_where(value, name)
        if ragged is not None:
            raise InvalidMDPError(f"{name} is ragged: {ragged}; it must be a rectangular array") from None
        raise InvalidMDPError(f"{name} must hold numbers: {exc}") from None


def _where(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.argwhere(mask)
    shown = ", ".join(str(tuple(int(i) for i in row)) for row in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return shown + more


def _flat_transitions(P, S: int, A: int, r_shape: tuple) -> ArrayOrSparse:
    """``P`` validated (finite, non-negative, row-stochastic) as a float64 ``(S*A, S)`` array or CSR matrix."""
    if sp.issparse(P):
        flat = sp.csr_matrix(P, dtype=np.float64, copy=True)
        if flat.shape != (S * A, S):
            raise InvalidMDPError(
                f"sparse P must have shape (S*A, S) = ({S * A}, {S}) to match R of shape {r_shape}; "
                f"got {flat.shape}"
            )
        flat.sum_duplicates()
        flat.eliminate_zeros()
        data = flat.data
        for bad, what in ((~np.isfinite(data), "non-finite"), (data < 0, "negative")):
            if np.any(bad):
                rows = np.repeat(np.arange(S * A), np.diff(flat.indptr))[bad]
                raise InvalidMDPError(
                    f"P has {what} probabilities at (state, action) "
                    + ", ".join(str(divmod(int(r), A)) for r in rows[:5])
                )
        row_sums = np.asarray(flat.sum(axis=1)).ravel().reshape(S, A)
    else:
        dense = _float_array(P, "P")
        if dense.shape != (S, A, S):
            raise InvalidMDPError(
                f"P must have shape (S, A, S) = ({S}, {A}, {S}) to match R of shape {r_shape}; got {dense.shape}"
            )
        if not np.all(np.isfinite(dense)):
            raise InvalidMDPError(
                f"P has non-finite probabilities at (state, action, next state) {_where(~np.isfinite(dense))}"
            )
        if np.any(dense < 0):
            raise InvalidMDPError(f"P has negative probabilities at (state, action, next state) {_where(dense < 0)}")
        row_sums = dense.sum(axis=2)
        flat = np.array(dense.reshape(S * A, S), dtype=np.float64, order="C", copy=True)
    off = row_sums - 1.0
    bad = np.abs(off) > ROW_SUM_TOL
    if np.any(bad):
        s, a = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidMDPError(
            f"P is not row-stochastic: row (state {s}, action {a}) sums to {row_sums[s, a]:.12g} "
            f"(off by {off[s, a]:+.3g}); {int(bad.sum())} of {S * A} rows are off by more than {ROW_SUM_TOL:g}"
        )
    return flat


def _terminal_mask(terminal, flat: ArrayOrSparse, R: np.ndarray) -> np.ndarray:
    """``(S,)`` bool; every terminal state must be absorbing (each action stays with probability 1) with reward 0."""
    S, A = R.shape
    if terminal is None:
        return np.zeros(S, dtype=bool)
    terminal = _float_array(terminal, "terminal")
    if terminal.shape != (S,):
        raise InvalidMDPError(f"terminal must have shape ({S},); got {terminal.shape}")
    terminal = terminal.astype(bool)
    # Rows are already stochastic and non-negative, so P(s|s,a) = 1 means nothing leaves s.
    term_states = np.repeat(np.flatnonzero(terminal), A)
    term_actions = np.tile(np.arange(A), int(terminal.sum()))
    stay = np.ones(0)
    if term_states.size:  # (an empty fancy index on a sparse matrix returns a sparse matrix)
        stay = np.asarray(flat[term_states * A + term_actions, term_states]).ravel()
    leaking = np.abs(stay - 1.0) > ROW_SUM_TOL
    if np.any(leaking):
        i = int(np.argmax(leaking))
        raise InvalidMDPError(
            f"terminal state {term_states[i]} has transitions leaving it: action {term_actions[i]} stays with "
            f"probability {float(stay[i]):.6g}, not 1"
        )
    if np.any(R[terminal] != 0.0):
        s, a = (int(i) for i in np.argwhere(terminal[:, None] & (R != 0.0))[0])
        raise InvalidMDPError(
            f"terminal state {s} has a non-zero reward {R[s, a]:g} for action {a}; "
            "terminal states are absorbing with value 0 (put the reward on the transition into them)"
        )
    return terminal


def _initial_distribution(initial, terminal: np.ndarray) -> np.ndarray:
    """``(S,)`` float64 start distribution; default uniform over the non-terminal states."""
    S = terminal.shape[0]
    if initial is None:
        if terminal.all():
            raise InvalidMDPError("every state is terminal; there is nothing to decide")
        initial = (~terminal).astype(np.float64)
        initial /= initial.sum()
        return initial
    initial = _float_array(initial, "initial")
    if initial.shape != (S,):
        raise InvalidMDPError(f"initial must have shape ({S},); got {initial.shape}")
    if not np.all(np.isfinite(initial)) or np.any(initial < 0):
        raise InvalidMDPError(f"initial has negative or non-finite entries at {_where(~(initial >= 0))}")
    total = initial.sum()
    if abs(total - 1.0) > ROW_SUM_TOL:
        raise InvalidMDPError(f"initial distribution sums to {total:.12g} (off by {total - 1.0:+.3g}), not 1")
    return initial


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP; see the module docstring for the meaning of each field.

    Parameters
    ----------
    P:
        ``(S, A, S)`` dense array or ``(S * A, S)`` sparse matrix.
    R:
        ``(S, A)`` expected rewards.
    gamma:
        Discount factor in ``[0, 1]``. ``gamma == 1`` requires that every state can reach a
        terminal state (checked on the transition graph).
    initial:
        Start distribution; defaults to uniform over non-terminal states.
    terminal:
        Absorbing states with value 0: every action must loop back with probability 1 and
        reward 0. Defaults to no terminal state.
    state_labels, action_labels:
        Optional names used in error messages, drawings and reports.
    """

    P: ArrayOrSparse
    R: np.ndarray
    gamma: float
    initial: np.ndarray | None = None
    terminal: np.ndarray | None = None
    state_labels: tuple | None = None
    action_labels: tuple | None = None
    _flat: ArrayOrSparse = field(init=False, repr=False)

    def __post_init__(self) -> None:
        R = _float_array(self.R, "R")
        if R.ndim != 2:
            raise InvalidMDPError(f"R must have shape (S, A); got an array of shape {R.shape}")
        S, A = R.shape
        if S == 0 or A == 0:
            raise InvalidMDPError(f"an MDP needs at least one state and one action; R has shape {R.shape}")
        flat = _flat_transitions(self.P, S, A, R.shape)
        if not np.all(np.isfinite(R)):
            raise InvalidMDPError(f"R has non-finite rewards at (state, action) {_where(~np.isfinite(R))}")
        gamma = check_number(self.gamma, "gamma", error=InvalidMDPError)
        if not (0.0 <= gamma <= 1.0) or not np.isfinite(gamma):
            raise InvalidMDPError(f"gamma must lie in [0, 1]; got {self.gamma!r}")
        terminal = _terminal_mask(self.terminal, flat, R)
        initial = _initial_distribution(self.initial, terminal)
        for name, labels, n in (("state_labels", self.state_labels, S), ("action_labels", self.action_labels, A)):
            if labels is not None and not hasattr(labels, "__len__"):
                raise InvalidMDPError(f"{name} must be a sequence of {n} names; got {labels!r}")
            if labels is not None and len(labels) != n:
                raise InvalidMDPError(f"{name} has {len(labels)} entries for {n} {name.split('_')[0]}s")

        R = R.copy()
        R.setflags(write=False)
        initial.setflags(write=False)
        terminal = terminal.copy()
        terminal.setflags(write=False)
        if not sp.issparse(flat):
            flat.setflags(write=False)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "terminal", terminal)
        object.__setattr__(self, "_flat", flat)
        object.__setattr__(self, "P", flat if sp.issparse(flat) else flat.reshape(S, A, S))

        if gamma == 1.0:
            stuck = self.states_that_cannot_terminate()
            if stuck.size:
                raise InvalidMDPError(
                    "gamma = 1 but no proper policy exists: no action sequence reaches a terminal state from "
                    f"state(s) {', '.join(str(int(s)) for s in stuck[:10])}"
                    + (f" and {stuck.size - 10} more" if stuck.size > 10 else "")
                    + "; values would diverge. Use gamma < 1 or add a terminal state they can reach."
                )

    # ------------------------------------------------------------------ shapes
    @property
    def n_states(self) -> int:
        return self.R.shape[0]

    @property
    def n_actions(self) -> int:
        return self.R.shape[1]

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self._flat)

    @property
    def transition_matrix(self) -> ArrayOrSparse:
        """``P`` as a 2-D ``(S * A, S)`` matrix (dense array or CSR); row ``s * A + a``."""
        return self._flat

    def dense_P(self) -> np.ndarray:
        """``P`` as a dense ``(S, A, S)`` array (materialises a sparse one)."""
        flat = self._flat.toarray() if self.is_sparse else self._flat
        return np.asarray(flat).reshape(self.n_states, self.n_actions, self.n_states)

    # --------------------------------------------------------------- backups
    def expected_next(self, values: np.ndarray) -> np.ndarray:
        """``sum_s' P(s'|s,a) values[s']`` as an ``(S, A)`` array (``values`` may be ``(S,)`` or ``(S, k)``)."""
        out = self._flat @ values
        return np.asarray(out).reshape((self.n_states, self.n_actions) + np.shape(values)[1:])

    def q_from_values(self, values: np.ndarray) -> np.ndarray:
        """One Bellman backup: ``Q = R + gamma * P V`` with terminal rows pinned to 0."""
        q = self.R + self.gamma * self.expected_next(values)
        q[self.terminal] = 0.0
        return q

    def policy_transitions(self, policy: np.ndarray) -> tuple[ArrayOrSparse, np.ndarray]:
        """``(P_pi, r_pi)`` for a deterministic ``(S,)`` int policy or a stochastic ``(S, A)`` one."""
        S, A = self.n_states, self.n_actions
        pi = self.policy_as_matrix(policy)
        weights = sp.csr_matrix(
            (pi.ravel(), (np.repeat(np.arange(S), A), np.arange(S * A))), shape=(S, S * A)
        )
        P_pi = weights @ self._flat
        if not self.is_sparse:
            P_pi = np.asarray(P_pi)
        r_pi = (pi * self.R).sum(axis=1)
        return P_pi, r_pi

    def policy_as_matrix(self, policy: np.ndarray) -> np.ndarray:
        """Validate a policy and return it as an ``(S, A)`` row-stochastic float64 matrix."""
        S, A = self.n_states, self.n_actions
        policy = np.asarray(policy)
        if policy.shape == (S,):
            if not np.issubdtype(policy.dtype, np.integer):
                raise InvalidMDPError(f"a deterministic policy must hold integer actions; got dtype {policy.dtype}")
            if policy.min() < 0 or policy.max() >= A:
                raise InvalidMDPError(f"deterministic policy has actions outside [0, {A}) at states "
                                      f"{np.flatnonzero((policy < 0) | (policy >= A))[:5].tolist()}")
            pi = np.zeros((S, A))
            pi[np.arange(S), policy] = 1.0
            return pi
        if policy.shape != (S, A):
            raise InvalidMDPError(f"policy must have shape ({S},) or ({S}, {A}); got {policy.shape}")
        pi = policy.astype(np.float64)
        if not np.all(np.isfinite(pi)) or np.any(pi < 0):
            raise InvalidMDPError("stochastic policy has negative or non-finite probabilities")
        off = np.abs(pi.sum(axis=1) - 1.0)
        if np.any(off > 1e-8):
            s = int(np.argmax(off))
            raise InvalidMDPError(f"policy row for state {s} sums to {pi[s].sum():.12g}, not 1")
        return pi

    # ----------------------------------------------------------------- graphs
    def to_networkx(self) -> nx.MultiDiGraph:
        """The transition graph: one edge ``s -> s'`` per action with ``P(s'|s,a) > 0``.

        Edge attributes: ``action``, ``prob``, ``reward`` (the expected reward ``R[s, a]``).
        Node attributes: ``terminal``, ``initial`` (probability), ``label`` where labels were given.
        """
        g = nx.MultiDiGraph()
        S, A = self.n_states, self.n_actions
        for s in range(S):
            attrs = {"terminal": bool(self.terminal[s]), "initial": float(self.initial[s])}
            if self.state_labels is not None:
                attrs["label"] = self.state_labels[s]
            g.add_node(s, **attrs)
        coo = sp.coo_matrix(self._flat)
        for row, nxt, p in zip(coo.row, coo.col, coo.data):
            if p > 0:
                s, a = divmod(int(row), A)
                g.add_edge(s, int(nxt), key=a, action=a, prob=float(p), reward=float(self.R[s, a]))
        return g

    def _support_matrix(self) -> sp.csr_matrix:
        """Boolean ``(S, S)`` adjacency: ``s -> s'`` whenever some action moves there with positive probability."""
        coo = sp.coo_matrix(self._flat)
        keep = coo.data > 0
        S = self.n_states
        return sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.int8), (coo.row[keep] // self.n_actions, coo.col[keep])), shape=(S, S)
        )

    def states_that_cannot_terminate(self) -> np.ndarray:
        """Non-terminal states from which no action sequence reaches a terminal state.

        Choosing, in every state, an action that moves closer (in the transition graph) to the
        terminal set gives a proper policy whenever this list is empty, so an empty result is
        exactly "a proper policy exists".
        """
        targets = np.flatnonzero(self.terminal)
        if targets.size == 0:
            return np.arange(self.n_states, dtype=np.int64)
        reached = reachable_mask(self._support_matrix().T, targets)
        return np.flatnonzero(~reached).astype(np.int64)

    def reachable_states(self, sources=None) -> np.ndarray:
        """States reachable (under some policy) from ``sources`` (default: the support of ``initial``)."""
        if sources is None:
            sources = np.flatnonzero(self.initial > 0)
        return np.flatnonzero(reachable_mask(self._support_matrix(), np.asarray(sources))).astype(np.int64)

    def with_gamma(self, gamma: float) -> "TabularMDP":
        """The same MDP with another discount (re-validated)."""
        return TabularMDP(self._flat if self.is_sparse else self.P, self.R, gamma, self.initial,
                          self.terminal, self.state_labels, self.action_labels)

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        return (f"TabularMDP(S={self.n_states}, A={self.n_actions}, gamma={self.gamma}, {kind}, "
                f"terminal={int(self.terminal.sum())})")
