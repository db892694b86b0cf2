"""The Frozen Lake experiment's fixed part: the lake, its two demonstrations, the exact targets (π*, V*, the
visitation of π*), what is measured and the paper's order. Everything here is float64 numpy, shared by every seed
and method."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium.envs.toy_text.frozen_lake import MAPS

from mdpalign import metrics
from mdpalign.bench import report as rp
from mdpalign.bench.config import BenchConfigError, FrozenLakeConfig
from mdpalign.envs.frozen_lake import (
    InvalidMapError,
    TwoPathLake,
    frozen_lake,
    two_path_lake,
    two_path_lake_from_map,
)
from mdpalign.solve import policy_iteration, soft_value_iteration

__all__ = ["Problem", "build_problem", "METRICS", "PAPER_ORDER"]

#: The paper's reported order, best first (by its parameter MSE).
PAPER_ORDER = ("dpo", "ift", "orpo", "sft")


#: What is measured over training, in report order.
METRICS = {
    "param_mse": rp.Metric("parameter MSE to θ* (the paper's metric)", lower_is_better=True, log_scale=True),
    "visitation_kl": rp.Metric("visitation-weighted KL(π* ‖ π)", lower_is_better=True, log_scale=True),
    "value_gap": rp.Metric("value gap J(π_opt) − J(π)", lower_is_better=True, log_scale=False),
    "success": rp.Metric("probability of reaching G", lower_is_better=False, log_scale=False),
    "soft_value_gap": rp.Metric("soft-value gap V*_β(s0) − V^π_β(s0)", lower_is_better=True, log_scale=True),
}


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything fixed across seeds and methods: the lake, its trajectories and its targets."""

    two: TwoPathLake
    pi_star: np.ndarray  # (S, A) soft-optimal policy at beta_star
    v_hard: np.ndarray  # (S,) optimal values
    hard_policy: np.ndarray  # (S,) greedy optimal policy
    soft_j_star: float  # V*_beta(s0)
    d_star: np.ndarray  # (S,) visitation of pi*
    base_policy: np.ndarray  # (S, A) behaviour policy theta_0 is distilled from
    next_state: np.ndarray  # (S, A) deterministic successor (IFT's s_hat)
    horizon: int

    @property
    def lake(self):
        return self.two.lake

    @property
    def mdp(self):
        return self.two.lake.mdp


def _make_lake(config: FrozenLakeConfig):
    """The two-trajectory lake of ``--map``; simple paths are enumerated up to 2 (rows + cols) steps
    (an open map has exponentially many longer ones)."""
    try:
        if config.map == "two-path":
            return two_path_lake(config.suboptimal, slippery=config.slippery, gamma=config.gamma)
        rows = tuple(MAPS[config.map]) if config.map in ("4x4", "8x8") else config.map_rows
        # Refuse a map without a unique shortest path before enumerating its simple paths: on gymnasium's 8x8
        # that enumeration alone runs for minutes, only for two_path_lake_from_map to refuse the map afterwards.
        lake = frozen_lake(list(rows), slippery=False, gamma=config.gamma)
        n, best = shortest_path_count(lake)
        if n > 1:
            raise InvalidMapError(f"map {'/'.join(lake.desc)!r} has {n} shortest S→G paths of {best} steps; the "
                                  "optimal trajectory must be unique")
        max_len = 2 * (len(rows) + max(len(r) for r in rows)) if rows else None
        return two_path_lake_from_map(rows, config.suboptimal, slippery=config.slippery, gamma=config.gamma,
                                      max_len=max_len)
    except InvalidMapError as exc:
        raise BenchConfigError("{map} {got} cannot be used: {why}", ("map",), got=repr(config.map), why=exc) from None


def shortest_path_count(lake) -> tuple[int, int]:
    """(number of shortest S→G paths, their length in steps) on the deterministic lake, by breadth-first search:
    moves as in :func:`mdpalign.envs.frozen_lake.simple_trajectories` (wall bumps are not moves, a hole or the
    goal ends a path); (0, -1) when no goal is reachable."""
    dist, count, frontier = {lake.start_state: 0}, {lake.start_state: 1}, [lake.start_state]
    while frontier:
        nxt = []
        for s in frontier:
            if lake.letter(s) in "HG":
                continue
            for a in range(4):
                t = lake.deterministic_step(s, a)
                if t == s:
                    continue
                if t not in dist:
                    dist[t], count[t] = dist[s] + 1, 0
                    nxt.append(t)
                if dist[t] == dist[s] + 1:
                    count[t] += count[s]
        frontier = nxt
    reached = [g for g in lake.goal_states if g in dist]
    if not reached:
        return 0, -1
    best = min(dist[g] for g in reached)
    return sum(count[g] for g in reached if dist[g] == best), best


def build_problem(config: FrozenLakeConfig) -> Problem:
    """The lake and its exact targets (pi*, V*, visitation), all float64."""
    two = _make_lake(config)
    mdp = two.lake.mdp
    soft = soft_value_iteration(mdp, config.beta_star)
    pi_star = np.asarray(soft.policy_probs, dtype=np.float64)
    hard = policy_iteration(mdp)
    S, A = mdp.n_states, mdp.n_actions
    if config.base == "uniform":
        base = np.full((S, A), 1.0 / A)
    else:
        base = np.full((S, A), config.base_epsilon / A)
        base[np.arange(S), hard.policy] += 1.0 - config.base_epsilon
    next_state = np.array([[two.lake.deterministic_step(s, a) for a in range(A)] for s in range(S)], dtype=np.int64)
    return Problem(
        two=two,
        pi_star=pi_star,
        v_hard=np.asarray(hard.values, dtype=np.float64),
        hard_policy=np.asarray(hard.policy, dtype=np.int64),
        soft_j_star=float(mdp.initial @ np.asarray(soft.values, dtype=np.float64)),
        d_star=metrics.visitation(mdp, pi_star),
        base_policy=base,
        next_state=next_state,
        horizon=int(two.lake.max_episode_steps),
    )
