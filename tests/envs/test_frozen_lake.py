"""Frozen Lake: the MDP must be gymnasium's own transition table, and the two-path lake must be what it says."""

import gymnasium
import networkx as nx
import numpy as np
import pytest
from gymnasium.envs.toy_text.frozen_lake import MAPS

from mdpalign.envs import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    InvalidMapError,
    frozen_lake,
    simple_trajectories,
    two_path_lake,
    two_path_lake_from_map,
)

CUSTOM = ["SFFH", "FHFF", "FFFG"]  # 3x4, not square, goal not in a corner row/col pattern of the named maps
OFF_CORNER = ["FFH", "HSF", "GFF"]  # start in the middle, goal bottom-left


def table_from_gymnasium(env):
    """Independent conversion: P[s, a, s'] and R[s, a] by summing gymnasium's listed entries."""
    P_table = env.unwrapped.P
    S, A = len(P_table), len(P_table[0])
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    for s in range(S):
        for a in range(A):
            for prob, nxt, rew, _ in P_table[s][a]:
                P[s, a, nxt] += prob
                R[s, a] += prob * rew
    return P, R


MAP_CASES = [("4x4", "4x4"), ("8x8", "8x8"), ("custom", CUSTOM), ("off_corner", OFF_CORNER)]


@pytest.mark.parametrize("slippery", [True, False])
@pytest.mark.parametrize("label,map_name", MAP_CASES)
def test_tables_equal_gymnasium(label, map_name, slippery):
    lake = frozen_lake(map_name, slippery=slippery, gamma=0.9)
    if isinstance(map_name, str):  # the registered environment, not only our adapter
        env = gymnasium.make("FrozenLake-v1" if map_name == "4x4" else "FrozenLake8x8-v1", is_slippery=slippery)
        assert env.spec.max_episode_steps == lake.max_episode_steps
    else:
        env = gymnasium.make("FrozenLake-v1", desc=list(map_name), is_slippery=slippery)
    P, R = table_from_gymnasium(env)
    np.testing.assert_allclose(lake.mdp.dense_P(), P, rtol=0, atol=1e-15)
    np.testing.assert_allclose(lake.mdp.R, R, rtol=0, atol=1e-15)
    letters = np.array(list("".join(lake.desc)))
    np.testing.assert_array_equal(lake.mdp.terminal, (letters == "H") | (letters == "G"))
    np.testing.assert_array_equal(lake.mdp.initial, (letters == "S").astype(float))
    assert lake.mdp.gamma == 0.9
    assert lake.start_state == int(np.flatnonzero(letters == "S")[0])
    assert set(lake.goal_states) == set(np.flatnonzero(letters == "G").tolist())
    assert set(lake.hole_states) == set(np.flatnonzero(letters == "H").tolist())
    # reward only on entering a goal
    enters_goal = P[:, :, list(lake.goal_states)].sum(axis=2)
    enters_goal[lake.mdp.terminal] = 0.0  # staying in the goal earns nothing
    np.testing.assert_allclose(lake.mdp.R, enters_goal, atol=1e-15)


def test_wall_bumps_are_summed_and_slip_is_one_third():
    lake = frozen_lake("4x4", slippery=True)
    P = lake.mdp.dense_P()
    # corner (0, 0), LEFT: slips UP (wall), LEFT (wall) or DOWN: gymnasium lists state 0 twice
    assert P[0, LEFT, 0] == pytest.approx(2 / 3, abs=1e-15)
    assert P[0, LEFT, 4] == pytest.approx(1 / 3, abs=1e-15)
    # interior cell (1, 2) = 6, DOWN: intended (2, 2) and the perpendicular (1, 1) H and (1, 3) H
    np.testing.assert_allclose(P[6, DOWN, [10, 5, 7]], [1 / 3] * 3, atol=1e-15)
    assert np.count_nonzero(P[6, DOWN]) == 3
    det = frozen_lake("4x4", slippery=False)
    assert det.mdp.dense_P()[0, UP, 0] == 1.0 and det.mdp.dense_P()[0, RIGHT, 1] == 1.0


def test_success_rate_is_passed_to_gymnasium():
    lake = frozen_lake("4x4", slippery=True, success_rate=0.8)
    P = lake.mdp.dense_P()
    assert P[6, DOWN, 10] == pytest.approx(0.8) and P[6, DOWN, 5] == pytest.approx(0.1)
    env = lake.to_gymnasium()
    np.testing.assert_allclose(P, table_from_gymnasium(env)[0], atol=1e-15)


def test_random_maps_are_reproducible_and_match_gymnasium():
    a = frozen_lake(None, size=6, p_frozen=0.7, seed=11)
    b = frozen_lake(None, size=6, p_frozen=0.7, seed=11)
    assert a.desc == b.desc and a.nrow == a.ncol == 6
    assert len({frozen_lake(None, size=6, p_frozen=0.7, seed=s).desc for s in range(6)}) > 1
    env = gymnasium.make("FrozenLake-v1", desc=list(a.desc), is_slippery=True)
    P, R = table_from_gymnasium(env)
    np.testing.assert_allclose(a.mdp.dense_P(), P, atol=1e-15)
    np.testing.assert_allclose(a.mdp.R, R, atol=1e-15)
    assert a.max_episode_steps == 200
    assert frozen_lake(["SF", "FG"]).max_episode_steps == 100
    assert frozen_lake("8x8", max_episode_steps=50).max_episode_steps == 50


def test_large_random_map_is_sparse_and_equals_dense():
    sparse = frozen_lake(None, size=12, seed=3, sparse=True)
    dense = frozen_lake(None, size=12, seed=3, sparse=False)
    assert sparse.mdp.is_sparse and not dense.mdp.is_sparse
    np.testing.assert_array_equal(sparse.mdp.dense_P(), dense.mdp.dense_P())


def test_gamma_one_is_a_valid_ssp():
    lake = frozen_lake("8x8", slippery=True, gamma=1.0)
    assert lake.mdp.gamma == 1.0 and lake.mdp.states_that_cannot_terminate().size == 0


@pytest.mark.parametrize(
    "rows,match",
    [
        (["SFF", "FG"], "unequal lengths"),
        (["SFX", "FFG"], "'X'"),
        (["FFF", "FFG"], "0 start cells"),
        (["SFS", "FFG"], "2 start cells"),
        (["SFF", "FFF"], "no goal"),
        (["SHF", "HFG"], "no path"),
        (["SFFF", "HHHH", "FFFG"], "no path"),
        ([], "empty"),
        ("16x16", "unknown map name"),
    ],
)
def test_bad_maps_raise(rows, match):
    with pytest.raises(InvalidMapError, match=match):
        frozen_lake(rows)


def test_bad_arguments_raise():
    with pytest.raises(InvalidMapError, match="size"):
        frozen_lake(None, size=1)
    with pytest.raises(InvalidMapError, match="p_frozen"):
        frozen_lake(None, p_frozen=0.0)
    with pytest.raises(ValueError, match="max_episode_steps"):
        frozen_lake("4x4", max_episode_steps=0)
    with pytest.raises(ValueError, match="gamma"):
        frozen_lake("4x4", gamma=1.5)


def test_no_path_error_is_a_value_error_naming_the_map():
    with pytest.raises(ValueError, match="SHF/HFG"):
        frozen_lake(["SHF", "HFG"])


def test_cells_states_and_render():
    lake = frozen_lake("4x4")
    assert lake.state(2, 3) == 11 and lake.cell(11) == (2, 3)
    with pytest.raises(IndexError):
        lake.state(4, 0)
    with pytest.raises(IndexError):
        lake.cell(16)
    policy = np.array([RIGHT, DOWN, LEFT, UP] * 4)
    drawn = lake.render_policy(policy)
    assert drawn == "→↓←↑\n→H←H\n→↓←H\nH↓←G"
    probs = np.eye(4)[policy] * 0.7 + 0.075  # argmax is still `policy`
    assert lake.render_policy(probs) == drawn
    with pytest.raises(ValueError, match="shape"):
        lake.render_policy(np.zeros(15, dtype=int))
    with pytest.raises(ValueError, match="integer"):
        lake.render_policy(np.zeros(16))
    with pytest.raises(ValueError, match="outside"):
        lake.render_policy(np.full(16, 4))
    g = lake.to_networkx()
    assert set(g.nodes) == set(range(16)) - set(lake.hole_states)
    assert nx.has_path(g, lake.start_state, lake.goal_states[0])


def test_to_gymnasium_is_the_same_environment_with_time_limit():
    lake = frozen_lake(CUSTOM, slippery=False)
    env = lake.to_gymnasium()
    assert isinstance(env, gymnasium.wrappers.TimeLimit)
    assert env.spec is None or env.spec.max_episode_steps in (None, lake.max_episode_steps)
    assert env._max_episode_steps == lake.max_episode_steps
    s, _ = env.reset(seed=0)
    assert s == lake.start_state
    # deterministic lake: our dynamics and gymnasium's agree step by step on a path to G
    path = [RIGHT, RIGHT, DOWN, RIGHT, DOWN]  # (0,0)→(0,1)→(0,2)→(1,2)→(1,3)→(2,3)=G
    reward = 0.0
    for a in path:
        expected = lake.deterministic_step(s, a)
        s, r, term, trunc, _ = env.step(a)
        assert s == expected
        reward += r
    assert term and not trunc and reward == 1.0 and s in lake.goal_states
    # time limit: bumping into the wall forever truncates after max_episode_steps
    short = lake.to_gymnasium(max_episode_steps=7)
    short.reset(seed=0)
    for _t in range(7):
        _, _, term, trunc, _ = short.step(UP)
    assert trunc and not term


def brute_force_simple_paths(lake, max_len):
    """Every action sequence (no networkx): keep those visiting no cell twice and ending in H or G."""
    found = set()

    def walk(s, seen, actions):
        if lake.letter(s) in "HG":
            found.add(tuple(actions))
            return
        if len(actions) == max_len:
            return
        for a in range(4):
            nxt = lake.deterministic_step(s, a)
            if nxt not in seen:
                walk(nxt, seen | {nxt}, actions + [a])

    walk(lake.start_state, {lake.start_state}, [])
    return found


@pytest.mark.parametrize("rows", [MAPS["4x4"], CUSTOM, OFF_CORNER])
def test_simple_trajectories_match_brute_force(rows):
    lake = frozen_lake(list(rows), slippery=False)
    trajs = simple_trajectories(lake)
    assert {t.actions for t in trajs} == brute_force_simple_paths(lake, max_len=lake.n_states)
    for t in trajs:
        assert lake.rollout_actions(t.actions) == t
        assert len(set(t.all_states)) == len(t) + 1
        assert t.reaches_goal == (t.final_state in lake.goal_states)
    lengths = [len(t) for t in trajs]
    assert lengths == sorted(lengths)
    capped = simple_trajectories(lake, max_len=4)
    assert {t.actions for t in capped} == {t.actions for t in trajs if len(t) <= 4}


@pytest.mark.parametrize("kind", ["longer", "hole"])
def test_two_path_lake(kind):
    tp = two_path_lake(kind, gamma=0.9)
    lake = tp.lake
    assert not lake.slippery and lake.mdp.gamma == 0.9
    assert tp.optimal.actions == (RIGHT, RIGHT, RIGHT) and tp.optimal.reaches_goal
    assert lake.rollout_actions(tp.optimal.actions) == tp.optimal
    assert lake.rollout_actions(tp.suboptimal.actions) == tp.suboptimal
    assert tp.suboptimal != tp.optimal and tp.divergence_step == 0
    # the optimal path is the unique shortest S→G path, hence the unique discounted optimum from S
    goal_paths = [t for t in simple_trajectories(lake) if t.reaches_goal]
    best = min(len(t) for t in goal_paths)
    assert [t for t in goal_paths if len(t) == best] == [tp.optimal]
    if kind == "longer":
        assert tp.suboptimal.reaches_goal and len(tp.suboptimal) > len(tp.optimal)
        assert tp.suboptimal.actions == (DOWN, DOWN, RIGHT, RIGHT, RIGHT, UP, UP)
        assert 0 < tp.suboptimal.discounted_return(0.9) < tp.optimal.discounted_return(0.9)
        # reward 1 on the last of n steps: gamma^(n-1)
        assert tp.suboptimal.discounted_return(0.9) == pytest.approx(0.9**6, rel=1e-15)
        assert tp.optimal.discounted_return(0.9) == pytest.approx(0.9**2, rel=1e-15)
    else:
        assert not tp.suboptimal.reaches_goal and tp.suboptimal.final_state in lake.hole_states
        assert tp.suboptimal.discounted_return(0.9) == 0.0
    # the discounted value of S on the deterministic lake is the optimal path's return (value iteration, 200 sweeps)
    mdp = lake.mdp
    V = np.zeros(mdp.n_states)
    for _ in range(200):
        V = mdp.q_from_values(V).max(axis=1)
    assert V[lake.start_state] == pytest.approx(tp.optimal.discounted_return(0.9), abs=1e-12)
    q = mdp.q_from_values(V)
    for s, a in zip(tp.optimal.states, tp.optimal.actions):
        assert np.flatnonzero(np.isclose(q[s], q[s].max(), rtol=0, atol=1e-12)).tolist() == [a]


def test_two_path_lake_slippery_keeps_demonstrations():
    tp = two_path_lake("longer", slippery=True)
    assert tp.lake.slippery and tp.optimal == two_path_lake("longer").optimal


def test_two_path_lake_from_map_errors():
    with pytest.raises(InvalidMapError, match="shortest"):
        two_path_lake_from_map(["SF", "FG"])  # RIGHT,DOWN and DOWN,RIGHT tie
    with pytest.raises(InvalidMapError, match="second S→G path"):
        two_path_lake_from_map(["SFG"])
    with pytest.raises(InvalidMapError, match="hole"):
        two_path_lake_from_map(["SFG"], suboptimal="hole")
    with pytest.raises(ValueError, match="suboptimal"):
        two_path_lake_from_map(["SFG"], suboptimal="worse")
    with pytest.raises(ValueError, match="gamma"):
        two_path_lake_from_map(["SFG", "FFF"], gamma=1.0)
    tp = two_path_lake_from_map(["SFG", "FHF"], suboptimal="hole")
    assert tp.optimal.actions == (RIGHT, RIGHT) and tp.suboptimal.actions == (DOWN, RIGHT)


def test_rollout_actions_rejects_moves_after_the_end():
    lake = frozen_lake("4x4", slippery=False)
    with pytest.raises(ValueError, match="after the episode ended"):
        lake.rollout_actions([DOWN, RIGHT, RIGHT])  # (1, 1) is a hole
    with pytest.raises(ValueError, match="LEFT 0"):
        lake.deterministic_step(0, 4)
