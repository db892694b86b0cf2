"""TabularMDP validation: every bad input names its problem and where it is."""
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from mdpalign.mdp import InvalidMDPError, TabularMDP


def chain(n=4, gamma=0.9):
    """A chain 0 -> 1 -> ... -> n-1 (terminal); action 0 moves right, action 1 stays."""
    P = np.zeros((n, 2, n))
    for s in range(n - 1):
        P[s, 0, s + 1] = 1.0
        P[s, 1, s] = 1.0
    P[n - 1, :, n - 1] = 1.0
    R = np.zeros((n, 2))
    R[n - 2, 0] = 1.0
    terminal = np.zeros(n, dtype=bool)
    terminal[-1] = True
    return P, R, gamma, terminal


def test_valid_chain_dense_and_sparse_agree():
    P, R, gamma, terminal = chain()
    dense = TabularMDP(P, R, gamma, terminal=terminal)
    sparse = TabularMDP(sp.csr_matrix(P.reshape(-1, P.shape[0])), R, gamma, terminal=terminal)
    v = np.arange(4.0)
    np.testing.assert_array_equal(dense.expected_next(v), sparse.expected_next(v))
    np.testing.assert_array_equal(dense.dense_P(), sparse.dense_P())
    # default start: uniform over the non-terminal states
    np.testing.assert_allclose(dense.initial, [1 / 3, 1 / 3, 1 / 3, 0])
    assert dense.is_sparse is False and sparse.is_sparse is True


def test_row_not_summing_to_one_names_row_and_amount():
    P, R, gamma, terminal = chain()
    P[1, 0, 2] = 0.75
    with pytest.raises(InvalidMDPError, match=r"row \(state 1, action 0\) sums to 0\.75 \(off by -0\.25\)"):
        TabularMDP(P, R, gamma, terminal=terminal)


def test_sparse_row_not_summing_to_one():
    P, R, gamma, terminal = chain()
    flat = sp.lil_matrix(P.reshape(8, 4))
    flat[5, 3] = 0.5  # state 2, action 1: already stays with prob 1, now 1.5
    with pytest.raises(InvalidMDPError, match=r"state 2, action 1\) sums to 1\.5"):
        TabularMDP(flat.tocsr(), R, gamma, terminal=terminal)


@pytest.mark.parametrize("value, word", [(-0.1, "negative"), (np.nan, "non-finite"), (np.inf, "non-finite")])
def test_bad_probabilities(value, word):
    P, R, gamma, terminal = chain()
    P[0, 1, 2] = value
    with pytest.raises(InvalidMDPError, match=rf"{word} probabilities at .*\(0, 1, 2\)"):
        TabularMDP(P, R, gamma, terminal=terminal)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rewards(value):
    P, R, gamma, terminal = chain()
    R[2, 1] = value
    with pytest.raises(InvalidMDPError, match=r"non-finite rewards at .*\(2, 1\)"):
        TabularMDP(P, R, gamma, terminal=terminal)


def test_shape_mismatches():
    P, R, gamma, terminal = chain()
    with pytest.raises(InvalidMDPError, match=r"P must have shape \(S, A, S\) = \(4, 3, 4\)"):
        TabularMDP(P, np.zeros((4, 3)), gamma)
    with pytest.raises(InvalidMDPError, match=r"R must have shape \(S, A\)"):
        TabularMDP(P, np.zeros(4), gamma)
    with pytest.raises(InvalidMDPError, match=r"sparse P must have shape \(S\*A, S\) = \(8, 4\)"):
        TabularMDP(sp.csr_matrix(P.reshape(4, 8)), R, gamma)
    with pytest.raises(InvalidMDPError, match=r"terminal must have shape \(4,\)"):
        TabularMDP(P, R, gamma, terminal=[True])
    with pytest.raises(InvalidMDPError, match=r"initial must have shape \(4,\)"):
        TabularMDP(P, R, gamma, terminal=terminal, initial=[1.0])


@pytest.mark.parametrize(
    "P, R, match",
    [
        # a ragged P: state 1 has one action where state 0 has two
        ([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0]]], [[0.0, 0.0], [0.0, 0.0]],
         r"P is ragged: P\[1\] has 1 entries where P\[0\] has 2"),
        # ragged one level deeper: a next-state distribution with 3 entries among 2-entry ones
        ([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.5, 0.25, 0.25]]], [[0.0, 0.0], [0.0, 0.0]],
         r"P is ragged: P\[1\]\[1\] has 3 entries where P\[0\]\[0\] has 2"),
        # a number where a list belongs
        ([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], 1.0]], [[0.0, 0.0], [0.0, 0.0]],
         r"P is ragged: P\[1\]\[1\] is a number where P\[0\]\[0\] is a sequence"),
        (np.eye(2)[:, None, :], [[0.0], [1.0, 2.0]], r"R is ragged: R\[1\] has 2 entries where R\[0\] has 1"),
        (np.eye(2)[:, None, :], [["a"], [1.0]], r"R must hold numbers: .*'a'"),
    ],
)
def test_ragged_or_non_numeric_nested_lists_name_the_field(P, R, match):
    with pytest.raises(InvalidMDPError, match=match):
        TabularMDP(P, R, 0.9)


@pytest.mark.parametrize("gamma", [-0.01, 1.0001, np.nan, np.inf])
def test_gamma_outside_unit_interval(gamma):
    P, R, _, terminal = chain()
    with pytest.raises(InvalidMDPError, match="gamma must lie in \\[0, 1\\]"):
        TabularMDP(P, R, gamma, terminal=terminal)


def test_initial_distribution_must_sum_to_one():
    P, R, gamma, terminal = chain()
    with pytest.raises(InvalidMDPError, match=r"initial distribution sums to 0\.9 \(off by -0\.1\)"):
        TabularMDP(P, R, gamma, terminal=terminal, initial=[0.5, 0.4, 0.0, 0.0])
    with pytest.raises(InvalidMDPError, match="initial has negative"):
        TabularMDP(P, R, gamma, terminal=terminal, initial=[1.5, -0.5, 0.0, 0.0])


def test_terminal_state_with_leaving_transitions():
    P, R, gamma, terminal = chain()
    terminal[1] = True  # state 1 moves on to 2 under action 0
    with pytest.raises(
        InvalidMDPError, match="terminal state 1 has transitions leaving it: action 0 stays with probability 0"
    ):
        TabularMDP(P, R, gamma, terminal=terminal)


def test_terminal_state_with_reward():
    P, R, gamma, terminal = chain()
    R[3, 1] = 2.0
    with pytest.raises(InvalidMDPError, match="terminal state 3 has a non-zero reward 2 for action 1"):
        TabularMDP(P, R, gamma, terminal=terminal)


def test_gamma_one_requires_a_proper_policy():
    P, R, _, terminal = chain()
    TabularMDP(P, R, 1.0, terminal=terminal)  # moving right always terminates: proper policy exists
    # cut the chain: state 0 can only stay, so it can never terminate
    P[0, 0] = 0.0
    P[0, 0, 0] = 1.0
    with pytest.raises(InvalidMDPError, match=r"gamma = 1 but no proper policy exists: .*state\(s\) 0;"):
        TabularMDP(P, R, 1.0, terminal=terminal)
    # the same MDP is fine when discounted
    TabularMDP(P, R, 0.99, terminal=terminal)


def test_states_that_cannot_terminate_agrees_with_graph_reachability():
    rng = np.random.default_rng(0)
    S, A = 12, 3
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            succ = rng.choice(S, size=2, replace=False)
            P[s, a, succ] = [0.3, 0.7]
    terminal = np.zeros(S, dtype=bool)
    terminal[[0, 5]] = True
    P[terminal] = 0.0
    P[0, :, 0] = P[5, :, 5] = 1.0
    # a trap: 10 and 11 only move between themselves, and 9 only into them (so the answer is not empty)
    P[[9, 10, 11]] = 0.0
    P[9, :, 10] = P[10, :, 11] = P[11, :, 10] = 1.0
    P[11, 0] = [0.0] * 10 + [0.5, 0.5]
    mdp = TabularMDP(P, np.zeros((S, A)), 0.9, terminal=terminal)
    g = mdp.to_networkx()
    expected = [s for s in range(S) if not any(nx.has_path(g, s, t) for t in (0, 5))]
    assert {9, 10, 11} <= set(expected) and len(expected) < S - 2
    np.testing.assert_array_equal(mdp.states_that_cannot_terminate(), expected)
    # to_networkx carries the probabilities: out-edges of each (s, a) sum to 1
    for s in range(S):
        for a in range(A):
            total = sum(d["prob"] for _, _, d in g.out_edges(s, data=True) if d["action"] == a)
            assert total == pytest.approx(1.0)


def test_policy_transitions_match_dense_contraction():
    P, R, gamma, terminal = chain(5)
    mdp = TabularMDP(P, R, gamma, terminal=terminal)
    pi = np.random.default_rng(1).dirichlet(np.ones(2), size=5)
    P_pi, r_pi = mdp.policy_transitions(pi)
    np.testing.assert_allclose(P_pi, np.einsum("sa,sat->st", pi, P))
    np.testing.assert_allclose(r_pi, (pi * R).sum(1))
    with pytest.raises(ValueError, match="policy row for state 0 sums to"):
        mdp.policy_transitions(np.full((5, 2), 0.4))
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        mdp.policy_transitions(np.array([0, 1, 2, 0, 0]))


def test_arrays_are_read_only():
    P, R, gamma, terminal = chain()
    mdp = TabularMDP(P, R, gamma, terminal=terminal)
    with pytest.raises(ValueError):
        mdp.R[0, 0] = 5.0
    R[0, 0] = 5.0  # the caller's array is copied, not aliased
    assert mdp.R[0, 0] == 0.0


def test_transition_array_is_copied():
    P, R, gamma, terminal = chain()
    mdp = TabularMDP(P, R, gamma, terminal=terminal)
    P[0, 0, 1] = 0.0  # mutating the caller's array after validation must not corrupt the MDP
    assert mdp.P[0, 0, 1] == 1.0


def test_reachable_states_agrees_with_networkx():
    rng = np.random.default_rng(3)
    S, A = 15, 2
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            P[s, a, rng.integers(S)] = 1.0
    mdp = TabularMDP(P, np.zeros((S, A)), 0.9, initial=np.eye(S)[4])
    g = mdp.to_networkx()
    expected = sorted({4} | nx.descendants(g, 4))
    np.testing.assert_array_equal(mdp.reachable_states(), expected)


def test_sparse_without_terminal_states():
    P = np.zeros((3, 2, 3))
    P[:, :, 0] = 1.0
    mdp = TabularMDP(sp.csr_matrix(P.reshape(6, 3)), np.zeros((3, 2)), 0.9)
    assert mdp.is_sparse and not mdp.terminal.any()
    # no terminal state: the default start is uniform over all three, and every row moves to state 0
    np.testing.assert_array_equal(mdp.initial, np.full(3, 1 / 3))
    np.testing.assert_array_equal(mdp.expected_next(np.array([5.0, 1.0, 2.0])), np.full((3, 2), 5.0))
    np.testing.assert_array_equal(mdp.dense_P(), P)
