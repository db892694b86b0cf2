"""Gymnasium's Frozen Lake as an exactly solvable :class:`~mdpalign.mdp.TabularMDP`.

The transition table is *read from gymnasium itself*: we instantiate
``gymnasium.envs.toy_text.frozen_lake.FrozenLakeEnv(desc=..., is_slippery=...)`` and convert
``env.P[s][a] = [(prob, next_state, reward, terminated), ...]`` into arrays:

    P[s, a, s'] = sum of prob over the entries of env.P[s][a] that lead to s'
    R[s, a]     = sum of prob * reward over the entries of env.P[s][a]

Gymnasium lists a bump into the wall as a separate entry that leads back to ``s``, so a state
can appear several times in one list; summing them is what ``env.step`` samples from. Slippery
probabilities are whatever gymnasium computes (``success_rate`` for the intended move, the rest
split over the two perpendicular moves; 1/3 each by default) — never hard-coded here.

Conventions (those of gymnasium): state ``s = row * ncol + col``; actions LEFT 0, DOWN 1,
RIGHT 2, UP 3; reward 1 on *entering* a goal cell and 0 otherwise; hole and goal cells are
absorbing (every action loops with reward 0), which is exactly ``TabularMDP``'s ``terminal``;
the initial distribution is the ``S`` cell. Gymnasium stops an episode after
``max_episode_steps`` (100 for ``"4x4"``, 200 for ``"8x8"``); for other maps we use 100 when
the larger side is at most 4 and 200 otherwise. A time-limited success probability is a
finite-horizon quantity, not a discounted one.

The IFT paper's alignment experiment (Hua et al., *Intuitive Fine-Tuning*, arXiv 2405.11870,
section 5.3 and appendix B.2) uses "a Frozen Lake with one optimal and one sub-optimal
trajectory" without giving the map; :func:`two_path_lake` makes that precise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import networkx as nx
import numpy as np
import scipy.sparse as sp
from gymnasium.envs.toy_text.frozen_lake import MAPS, FrozenLakeEnv, generate_random_map
from gymnasium.wrappers import TimeLimit

from mdpalign.checks import check_number
from mdpalign.errors import MdpalignError
from mdpalign.mdp import TabularMDP

__all__ = [
    "LEFT", "DOWN", "RIGHT", "UP", "ACTION_NAMES", "ARROWS", "NAMED_MAPS", "TWO_PATH_MAP",
    "InvalidMapError", "FrozenLake", "Trajectory", "TwoPathLake",
    "frozen_lake", "two_path_lake", "two_path_lake_from_map", "simple_trajectories",
]

LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3
ACTION_NAMES = ("LEFT", "DOWN", "RIGHT", "UP")
ARROWS = ("←", "↓", "→", "↑")
#: (row, col) displacement of each action on the deterministic lake.
_MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))
_LETTERS = frozenset("SFHG")
#: Above this many states the transition table is built as a scipy.sparse (S*A, S) matrix.
_DENSE_LIMIT = 1024


class InvalidMapError(MdpalignError, ValueError):
    """A Frozen Lake map that is malformed or on which the goal cannot be reached, or a lake option
    (``max_episode_steps``, the two-path lake's ``suboptimal`` and ``gamma``), action or policy that cannot apply
    to it."""


def _named_maps() -> dict[str, tuple[str, ...]]:
    return {name: tuple(rows) for name, rows in MAPS.items()}


#: Gymnasium's registered maps and their ``max_episode_steps``.
NAMED_MAPS = ("4x4", "8x8")
_NAMED_STEPS = {"4x4": 100, "8x8": 200}


# --------------------------------------------------------------------------- validation
def _validate_map(rows: Sequence[str]) -> tuple[str, ...]:
    """Check the characters and shape of a map and that G is reachable from S."""
    if isinstance(rows, str):
        raise InvalidMapError(
            f"a map is a list of row strings, got the single string {rows!r}; "
            "pass e.g. ['SFFF', 'FHFH', 'FFFH', 'HFFG'] or a named map '4x4' / '8x8'"
        )
    try:
        desc = tuple(r.decode() if isinstance(r, bytes) else str(r) for r in rows)
    except TypeError as exc:
        raise InvalidMapError(f"a map must be a sequence of row strings; got {rows!r}") from exc
    shown = "/".join(desc)
    if not desc or not desc[0]:
        raise InvalidMapError(f"the map {list(desc)!r} is empty")
    widths = {len(r) for r in desc}
    if len(widths) != 1:
        raise InvalidMapError(
            f"map {shown!r}: rows have unequal lengths {[len(r) for r in desc]}; every row must be as wide"
        )
    for i, r in enumerate(desc):
        bad = sorted(set(r) - _LETTERS)
        if bad:
            raise InvalidMapError(
                f"map {shown!r}: row {i} ({r!r}) holds {bad}; only S (start), F (frozen), H (hole), G (goal) are "
                "allowed"
            )
    n_start = sum(r.count("S") for r in desc)
    if n_start != 1:
        raise InvalidMapError(f"map {shown!r} has {n_start} start cells 'S'; exactly one is needed")
    if not any("G" in r for r in desc):
        raise InvalidMapError(f"map {shown!r} has no goal cell 'G'")
    graph = _walkable_graph(desc)
    ncol = len(desc[0])
    start = next(i * ncol + r.index("S") for i, r in enumerate(desc) if "S" in r)
    goals = [i * ncol + j for i, r in enumerate(desc) for j, c in enumerate(r) if c == "G"]
    reach = nx.node_connected_component(graph, start)
    if not reach.intersection(goals):
        raise InvalidMapError(
            f"map {shown!r}: no path of frozen cells leads from S to G (holes cut it off); "
            "the goal can never be reached"
        )
    return desc


def _walkable_graph(desc: Sequence[str]) -> nx.Graph:
    """4-neighbour grid graph over the non-hole cells (node = state index)."""
    nrow, ncol = len(desc), len(desc[0])
    g = nx.Graph()
    for i in range(nrow):
        for j in range(ncol):
            if desc[i][j] == "H":
                continue
            s = i * ncol + j
            g.add_node(s, row=i, col=j, letter=desc[i][j])
            for di, dj in ((1, 0), (0, 1)):
                ni, nj = i + di, j + dj
                if ni < nrow and nj < ncol and desc[ni][nj] != "H":
                    g.add_edge(s, ni * ncol + nj)
    return g


def _gymnasium_env(desc: Sequence[str], slippery: bool, success_rate: float | None):
    kw = {} if success_rate is None else {"success_rate": success_rate}
    # rows as lists of letters: gymnasium's np.asarray(desc, "c") turns one-letter row strings into a 1-D array
    return FrozenLakeEnv(desc=[list(r) for r in desc], is_slippery=slippery, **kw)


def _mdp_from_gymnasium_table(env, desc: tuple[str, ...], gamma: float, sparse: bool | None) -> TabularMDP:
    table = env.P
    S, A = len(table), len(table[0])
    rows, cols, probs = [], [], []
    R = np.zeros((S, A))
    for s in range(S):
        for a in range(A):
            for prob, nxt, reward, _terminated in table[s][a]:
                rows.append(s * A + a)
                cols.append(int(nxt))
                probs.append(float(prob))
                R[s, a] += float(prob) * float(reward)
    # coo -> csr sums the duplicate (wall-bump) entries
    flat = sp.coo_matrix((probs, (rows, cols)), shape=(S * A, S)).tocsr()
    flat.sum_duplicates()
    if sparse is None:
        sparse = S > _DENSE_LIMIT
    P = flat if sparse else flat.toarray().reshape(S, A, S)
    letters = "".join(desc)
    terminal = np.array([c in "HG" for c in letters])
    initial = np.array([c == "S" for c in letters], dtype=np.float64)
    return TabularMDP(
        P, R, gamma, initial=initial, terminal=terminal,
        state_labels=tuple(f"{c}({s // len(desc[0])},{s % len(desc[0])})" for s, c in enumerate(letters)),
        action_labels=ACTION_NAMES,
    )


# --------------------------------------------------------------------------- the lake
@dataclass(frozen=True, eq=False)
class FrozenLake:
    """A Frozen Lake map together with its exact :class:`TabularMDP`.

    Build it with :func:`frozen_lake`. ``mdp`` is read from gymnasium's own transition table;
    ``to_gymnasium()`` returns the real environment with the same map, slipperiness and time
    limit, so exact values can be checked against roll-outs.
    """

    mdp: TabularMDP
    desc: tuple[str, ...]
    slippery: bool
    max_episode_steps: int
    success_rate: float | None = None
    nrow: int = field(init=False)
    ncol: int = field(init=False)
    start_state: int = field(init=False)
    goal_states: tuple[int, ...] = field(init=False)
    hole_states: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        letters = "".join(self.desc)
        object.__setattr__(self, "nrow", len(self.desc))
        object.__setattr__(self, "ncol", len(self.desc[0]))
        object.__setattr__(self, "start_state", letters.index("S"))
        object.__setattr__(self, "goal_states", tuple(i for i, c in enumerate(letters) if c == "G"))
        object.__setattr__(self, "hole_states", tuple(i for i, c in enumerate(letters) if c == "H"))

    @property
    def n_states(self) -> int:
        return self.nrow * self.ncol

    def state(self, row: int, col: int) -> int:
        """State index of the cell (row, col)."""
        if not (0 <= row < self.nrow and 0 <= col < self.ncol):
            raise IndexError(f"cell ({row}, {col}) lies outside the {self.nrow}x{self.ncol} map")
        return row * self.ncol + col

    def cell(self, state: int) -> tuple[int, int]:
        """(row, col) of a state index."""
        if not (0 <= state < self.n_states):
            raise IndexError(f"state {state} outside [0, {self.n_states})")
        return divmod(int(state), self.ncol)

    def letter(self, state: int) -> str:
        row, col = self.cell(state)
        return self.desc[row][col]

    def deterministic_step(self, state: int, action: int) -> int:
        """Where ``action`` leads from ``state`` on the non-slippery lake (walls: stay put)."""
        if not 0 <= action < 4:
            raise InvalidMapError(f"action {action} is not one of LEFT 0, DOWN 1, RIGHT 2, UP 3")
        row, col = self.cell(state)
        if self.desc[row][col] in "HG":
            return int(state)
        dr, dc = _MOVES[action]
        return self.state(min(max(row + dr, 0), self.nrow - 1), min(max(col + dc, 0), self.ncol - 1))

    def rollout_actions(self, actions: Sequence[int], start: int | None = None) -> "Trajectory":
        """The trajectory that ``actions`` produce on the deterministic lake.

        Raises ``ValueError`` if an action is taken after a hole or goal was entered.
        """
        s = self.start_state if start is None else int(start)
        states = []
        for t, a in enumerate(actions):
            if self.letter(s) in "HG":
                raise InvalidMapError(f"action {t} ({a}) is taken after the episode ended in {self.letter(s)} "
                                      f"at state {s}")
            states.append(s)
            s = self.deterministic_step(s, int(a))
        return Trajectory(tuple(states), tuple(int(a) for a in actions), s, s in self.goal_states)

    def to_gymnasium(self, **kwargs):
        """The real gymnasium environment for this map, wrapped in ``TimeLimit(max_episode_steps)``.

        ``kwargs`` go to ``FrozenLakeEnv`` (e.g. ``render_mode="ansi"``); ``max_episode_steps``
        may be overridden.
        """
        steps = kwargs.pop("max_episode_steps", self.max_episode_steps)
        if self.success_rate is not None:
            kwargs.setdefault("success_rate", self.success_rate)
        env = FrozenLakeEnv(desc=list(self.desc), is_slippery=self.slippery, **kwargs)
        return TimeLimit(env, max_episode_steps=steps)

    def render_policy(self, policy: np.ndarray) -> str:
        """Draw the map with the policy's action as an arrow ←↓→↑ on each S/F cell.

        ``policy`` is an ``(S,)`` int array of actions or an ``(S, A)`` array of probabilities
        (or Q-values), drawn by its argmax. Holes and goals are shown as ``H`` and ``G``.
        """
        policy = np.asarray(policy)
        S = self.n_states
        if policy.shape == (S, 4):
            actions = policy.argmax(axis=1)
        elif policy.shape == (S,):
            if not np.issubdtype(policy.dtype, np.integer):
                raise InvalidMapError(f"an (S,) policy must hold integer actions; got dtype {policy.dtype}")
            actions = policy
        else:
            raise InvalidMapError(f"policy must have shape ({S},) or ({S}, 4) for this {self.nrow}x{self.ncol} map; "
                             f"got {policy.shape}")
        if actions.min() < 0 or actions.max() > 3:
            raise InvalidMapError("policy holds actions outside LEFT 0, DOWN 1, RIGHT 2, UP 3")
        lines = []
        for i, row in enumerate(self.desc):
            lines.append("".join(c if c in "HG" else ARROWS[int(actions[i * self.ncol + j])]
                                 for j, c in enumerate(row)))
        return "\n".join(lines)

    def to_networkx(self) -> nx.Graph:
        """Undirected 4-neighbour grid graph of the non-hole cells (node attrs: row, col, letter)."""
        return _walkable_graph(self.desc)

    def __repr__(self) -> str:
        kind = "slippery" if self.slippery else "deterministic"
        return f"FrozenLake({self.nrow}x{self.ncol}, {kind}, gamma={self.mdp.gamma}, map={'/'.join(self.desc)})"


def frozen_lake(
    map_name: str | Sequence[str] | None = "4x4",
    slippery: bool = True,
    gamma: float = 0.99,
    *,
    size: int = 8,
    p_frozen: float = 0.8,
    seed: int | None = None,
    success_rate: float | None = None,
    max_episode_steps: int | None = None,
    sparse: bool | None = None,
) -> FrozenLake:
    """Frozen Lake as an exact MDP, built from gymnasium's transition table.

    Parameters
    ----------
    map_name:
        ``"4x4"`` or ``"8x8"`` (gymnasium's maps), a list/tuple of row strings over ``SFHG``, or
        ``None`` for gymnasium's ``generate_random_map(size, p_frozen, seed)`` (always valid;
        the same ``seed`` gives the same map).
    slippery:
        gymnasium's ``is_slippery``.
    gamma:
        Discount of the returned MDP (gymnasium itself does not discount).
    success_rate:
        Passed to gymnasium when given (probability of the intended move on the slippery lake);
        ``None`` keeps gymnasium's default.
    max_episode_steps:
        gymnasium's time limit; default 100 for ``"4x4"``, 200 for ``"8x8"``, and for other maps
        100 if the larger side is at most 4, else 200.
    sparse:
        Store P as a sparse ``(S*A, S)`` matrix; default: only above 1024 states.

    Raises
    ------
    InvalidMapError
        Unknown name, malformed map, or no path from S to G.
    """
    if isinstance(map_name, str):
        maps = _named_maps()
        if map_name not in maps:
            raise InvalidMapError(f"unknown map name {map_name!r}; gymnasium knows {sorted(maps)}, "
                                  "or pass a list of row strings, or None for a random map")
        desc = maps[map_name]
        default_steps = _NAMED_STEPS.get(map_name, 100 if max(len(desc), len(desc[0])) <= 4 else 200)
    else:
        if map_name is None:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
                raise InvalidMapError(f"a random map needs an integer size >= 2; got {size!r}")
            if not 0.0 < check_number(p_frozen, "p_frozen", error=InvalidMapError) <= 1.0:
                raise InvalidMapError(f"p_frozen must lie in (0, 1]; got {p_frozen}")
            desc = tuple(generate_random_map(size=int(size), p=float(p_frozen), seed=seed))
        else:
            desc = map_name
        desc = _validate_map(desc)
        default_steps = 100 if max(len(desc), len(desc[0])) <= 4 else 200
    steps = default_steps if max_episode_steps is None else int(max_episode_steps)
    if steps < 1:
        raise InvalidMapError(f"max_episode_steps must be positive; got {max_episode_steps}")
    env = _gymnasium_env(desc, bool(slippery), success_rate)
    mdp = _mdp_from_gymnasium_table(env, desc, gamma, sparse)
    return FrozenLake(mdp=mdp, desc=desc, slippery=bool(slippery), max_episode_steps=steps,
                      success_rate=success_rate)


# --------------------------------------------------------------------------- trajectories
@dataclass(frozen=True)
class Trajectory:
    """A path on the lake: ``states[t]`` is s_t and ``actions[t]`` the action taken there
    (t = 0..T-1); ``final_state`` is s_T, where the path ends (a goal, a hole, or wherever it
    was cut off)."""

    states: tuple[int, ...]
    actions: tuple[int, ...]
    final_state: int
    reaches_goal: bool

    def __post_init__(self) -> None:
        if len(self.states) != len(self.actions):
            raise InvalidMapError(f"a trajectory needs one action per state; got {len(self.states)} states "
                             f"and {len(self.actions)} actions")

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def all_states(self) -> tuple[int, ...]:
        """s_0, ..., s_T including the final state."""
        return self.states + (self.final_state,)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(states, actions)`` as int64 arrays of length T."""
        return np.asarray(self.states, dtype=np.int64), np.asarray(self.actions, dtype=np.int64)

    def discounted_return(self, gamma: float) -> float:
        """Return of the path with Frozen Lake's reward (1 on entering G): gamma^(T-1) or 0."""
        return float(gamma) ** (len(self) - 1) if self.reaches_goal else 0.0


def _path_to_trajectory(lake: FrozenLake, cells: Sequence[int]) -> Trajectory:
    actions = []
    for s, nxt in zip(cells[:-1], cells[1:]):
        (r0, c0), (r1, c1) = lake.cell(s), lake.cell(nxt)
        actions.append(_MOVES.index((r1 - r0, c1 - c0)))
    return Trajectory(tuple(int(s) for s in cells[:-1]), tuple(actions), int(cells[-1]),
                      int(cells[-1]) in lake.goal_states)


def simple_trajectories(lake: FrozenLake, max_len: int | None = None) -> list[Trajectory]:
    """All simple paths from S that end on entering a goal or a hole, on the *deterministic* lake.

    Moves follow :meth:`FrozenLake.deterministic_step` whatever ``lake.slippery`` is (the
    trajectories are demonstrations, not samples). Wall bumps revisit a state and therefore
    never occur in a simple path. ``max_len`` bounds the number of actions; without it the
    count can grow exponentially with the map. Sorted by (length, actions).
    """
    g = nx.DiGraph()
    for s in range(lake.n_states):
        if lake.letter(s) in "HG":
            continue
        for a in range(4):
            nxt = lake.deterministic_step(s, a)
            if nxt != s:
                g.add_edge(s, nxt)
    targets = [s for s in lake.goal_states + lake.hole_states if s in g]
    paths = nx.all_simple_paths(g, lake.start_state, targets, cutoff=max_len)
    out = [_path_to_trajectory(lake, p) for p in paths]
    out.sort(key=lambda tr: (len(tr), tr.actions))
    return out


# --------------------------------------------------------------------------- two-path lake
#: The two-trajectory lake (4x4)::
#:
#:     S F F G      optimal (3 steps):  S → → → G            actions RIGHT, RIGHT, RIGHT
#:     F H H F      "longer" (7 steps): S ↓ ↓ → → → ↑ ↑ G    DOWN, DOWN, RIGHT, RIGHT, RIGHT, UP, UP
#:     F F F F      "hole"   (2 steps): S ↓ → H(1,1)         DOWN, RIGHT
#:     H F F H
TWO_PATH_MAP = ("SFFG", "FHHF", "FFFF", "HFFH")


@dataclass(frozen=True, eq=False)
class TwoPathLake:
    """A lake with one optimal and one sub-optimal demonstration (IFT paper, section 5.3)."""

    lake: FrozenLake
    optimal: Trajectory
    suboptimal: Trajectory
    suboptimal_kind: str

    @property
    def divergence_step(self) -> int:
        """First t at which the two trajectories take different actions."""
        for t, (a, b) in enumerate(zip(self.optimal.actions, self.suboptimal.actions)):
            if a != b:
                return t
        return min(len(self.optimal), len(self.suboptimal))


def two_path_lake_from_map(
    rows: Sequence[str],
    suboptimal: Literal["longer", "hole"] = "longer",
    slippery: bool = False,
    gamma: float = 0.95,
    *,
    max_len: int | None = None,
) -> TwoPathLake:
    """Pick an optimal and a sub-optimal trajectory on any map (deterministic moves).

    * optimal: the shortest S→G path, which must be unique (it is then the unique optimal
      path for every gamma < 1, its return gamma^(T-1) being the largest);
    * ``"longer"``: among the other S→G simple paths, the one that leaves the optimal path
      earliest, then the shortest, then the smallest action sequence;
    * ``"hole"``: among simple paths that end in a hole, the same order.

    Raises :class:`InvalidMapError` when the shortest path is not unique or no such second
    trajectory exists. ``max_len`` bounds the enumeration (see :func:`simple_trajectories`).
    """
    if suboptimal not in ("longer", "hole"):
        raise InvalidMapError(f"suboptimal must be 'longer' or 'hole'; got {suboptimal!r}")
    if not 0.0 <= gamma < 1.0:
        raise InvalidMapError(f"the two-path lake ranks paths by discounting: gamma must lie in [0, 1); got {gamma}")
    lake = frozen_lake(list(rows), slippery=slippery, gamma=gamma)
    trajectories = simple_trajectories(lake, max_len=max_len)
    to_goal = [t for t in trajectories if t.reaches_goal]
    shown = "/".join(lake.desc)
    if not to_goal:
        raise InvalidMapError(f"map {shown!r}: no S→G path within max_len={max_len}")
    best = len(to_goal[0])
    shortest = [t for t in to_goal if len(t) == best]
    if len(shortest) > 1:
        raise InvalidMapError(
            f"map {shown!r} has {len(shortest)} shortest S→G paths of {best} steps (e.g. actions "
            f"{shortest[0].actions} and {shortest[1].actions}); the optimal trajectory must be unique"
        )
    optimal = shortest[0]
    candidates = to_goal[1:] if suboptimal == "longer" else [t for t in trajectories if not t.reaches_goal]
    if not candidates:
        what = "a second S→G path" if suboptimal == "longer" else "a path ending in a hole"
        raise InvalidMapError(f"map {shown!r} has only one trajectory of the kind needed: it has no {what}")

    def shared_prefix(t: Trajectory) -> int:
        n = 0
        for a, b in zip(optimal.actions, t.actions):
            if a != b:
                break
            n += 1
        return n

    second = min(candidates, key=lambda t: (shared_prefix(t), len(t), t.actions))
    return TwoPathLake(lake=lake, optimal=optimal, suboptimal=second, suboptimal_kind=suboptimal)


def two_path_lake(
    suboptimal: Literal["longer", "hole"] = "longer",
    slippery: bool = False,
    gamma: float = 0.95,
) -> TwoPathLake:
    """The IFT experiment's lake: :data:`TWO_PATH_MAP` with its two trajectories::

        S F F G      optimal (3 steps):  RIGHT, RIGHT, RIGHT                       return gamma^2
        F H H F      "longer" (7 steps): DOWN, DOWN, RIGHT, RIGHT, RIGHT, UP, UP   return gamma^6
        F F F F      "hole"   (2 steps): DOWN, RIGHT (into the hole at (1, 1))     return 0
        H F F H

    The 3-step path along the top row is the only shortest S→G path, so for every gamma < 1 it
    is the unique optimum from S on the deterministic lake. Both sub-optimal trajectories leave it
    at the first step (DOWN instead of RIGHT). ``slippery=True`` keeps the same demonstrations
    on gymnasium's slippery dynamics.
    """
    return two_path_lake_from_map(TWO_PATH_MAP, suboptimal=suboptimal, slippery=slippery, gamma=gamma)
