"""Bandits: Bradley–Terry probabilities, exact population data, samplers converging to it, clear errors."""
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from mdpalign.data import DataError
from mdpalign.envs import (
    ContextualBandit,
    InvalidBanditError,
    bt_preference_probs,
    comparison_components,
    comparison_graph,
    exact_demonstrations,
    k_armed_bandit,
    mixed_quality_demonstrations,
    preference_pairs,
    random_contextual_bandit,
    sample_demonstrations,
    sample_preference_pairs,
    win_graph,
)

# Fixed seeds make every chi-square p-value below deterministic; 1e-3 is the acceptance level,
# and each convergence test also shows the test rejects a slightly wrong distribution.
ALPHA = 1e-3


def chi2_p(counts, expected_probs):
    keep = expected_probs > 0
    assert counts[~keep].sum() == 0, "samples fell where the exact data has no mass"
    n = counts.sum()
    return chisquare(counts[keep], n * expected_probs[keep] / expected_probs[keep].sum()).pvalue


def test_bt_probabilities():
    b = k_armed_bandit(3, rewards=[0.0, 1.0, -2.0])
    p = bt_preference_probs(b)
    assert p.shape == (1, 3, 3)
    assert p[0, 1, 0] == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-15)
    assert p[0, 0, 2] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-15)
    np.testing.assert_allclose(p + p.transpose(0, 2, 1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.diagonal(p, axis1=1, axis2=2), 0.5)
    # extreme rewards do not overflow
    big = k_armed_bandit(2, rewards=[800.0, -800.0])
    assert bt_preference_probs(big)[0, 0, 1] == 1.0 and bt_preference_probs(big)[0, 1, 0] == 0.0


@settings(max_examples=25)
@given(X=st.integers(1, 3), K=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_population_weights_all_pairs_bt(X, K, seed):
    b = random_contextual_bandit(X, K, seed=seed, context_concentration=1.0)
    d = preference_pairs(b)
    m = K * (K - 1) // 2
    assert len(d) == 2 * m * X
    assert d.weight.sum() == pytest.approx(1.0, abs=1e-12)
    W = d.weight_table()
    np.testing.assert_allclose(W.sum(axis=(1, 2)), b.context_probs, atol=1e-12)
    iu = np.triu_indices(K, 1)
    for x in range(X):
        pair_mass = W[x] + W[x].T
        np.testing.assert_allclose(pair_mass[iu], b.context_probs[x] / m, rtol=1e-12)
        # the odds of each pair's two rows are exp(r_i - r_j): Bradley–Terry
        r = b.rewards[x]
        np.testing.assert_allclose(np.log(W[x][iu]) - np.log(W[x].T[iu]), (r[:, None] - r[None, :])[iu], atol=1e-9)


def test_deterministic_labels_drop_losers_and_split_ties():
    b = k_armed_bandit(4, rewards=[0.3, -1.0, 2.0, 0.3])
    d = preference_pairs(b, labels="deterministic")
    r = b.rewards[0]
    strict = [(i, j) for i in range(4) for j in range(4) if r[i] > r[j]]
    tie_rows = [(0, 3), (3, 0)]
    assert sorted(zip(d.chosen.tolist(), d.rejected.tolist())) == sorted(strict + tie_rows)
    w = {(c, l): wt for c, l, wt in zip(d.chosen.tolist(), d.rejected.tolist(), d.weight)}
    for pair in strict:
        assert w[pair] == pytest.approx(1 / 6)
    assert w[(0, 3)] == w[(3, 0)] == pytest.approx(1 / 12)
    assert d.weight.sum() == pytest.approx(1.0)
    # the win graph of deterministic, tie-free labels has no cycle: no finite Bradley–Terry fit
    b2 = k_armed_bandit(4, rewards=[0.3, -1.0, 2.0, 0.1])
    g = win_graph(preference_pairs(b2, labels="deterministic"), 0)
    assert nx.is_directed_acyclic_graph(g)
    assert nx.is_strongly_connected(win_graph(preference_pairs(b2), 0))


@pytest.mark.parametrize("K,fraction", [(4, 0.2), (6, 0.5), (7, 0.9)])
def test_partial_coverage_connected(K, fraction):
    b = random_contextual_bandit(3, K, seed=5)
    d = preference_pairs(b, "partial", partial_fraction=fraction, connected=True, seed=1)
    m_target = max(K - 1, round(fraction * K * (K - 1) / 2))
    for x in range(3):
        g = comparison_graph(d, x)
        assert nx.is_connected(g) and g.number_of_nodes() == K
        assert g.number_of_edges() == m_target
        assert comparison_components(d, x) == [frozenset(range(K))]
    again = preference_pairs(b, "partial", partial_fraction=fraction, connected=True, seed=1)
    np.testing.assert_array_equal(again.chosen, d.chosen)


def test_partial_coverage_disconnected_and_uncontrolled():
    b = random_contextual_bandit(4, 6, seed=2)
    d = preference_pairs(b, "partial", partial_fraction=0.5, connected=False, seed=3)
    for x in range(4):
        comps = comparison_components(d, x)
        assert len(comps) >= 2
        assert set().union(*comps) == set(range(6))
    d = preference_pairs(b, "partial", partial_fraction=0.4, connected=None, seed=3)
    for x in range(4):
        assert comparison_graph(d, x).number_of_edges() == round(0.4 * 15)
    with pytest.raises(InvalidBanditError, match="at least 3 arms"):
        preference_pairs(k_armed_bandit(2, seed=0), "partial", connected=False)


def test_explicit_pairs_and_pair_weights():
    b = random_contextual_bandit(2, 4, seed=0, context_concentration=1.0)
    d = preference_pairs(b, [(0, 1), (3, 2)])
    for x in range(2):
        assert {frozenset(e) for e in comparison_graph(d, x).edges} == {frozenset((0, 1)), frozenset((2, 3))}
        assert comparison_components(d, x) == [frozenset({0, 1}), frozenset({2, 3})]
    d = preference_pairs(b, [(0, 0, 1), (1, 1, 2)])
    assert set(d.context[d.chosen + d.rejected == 1].tolist()) == {0}
    assert set(d.context[d.chosen + d.rejected == 3].tolist()) == {1}
    w = np.arange(16.0).reshape(4, 4)
    d = preference_pairs(b, "all", pair_weights=w)
    p = bt_preference_probs(b)
    for x, c, l, wt in zip(d.context, d.chosen, d.rejected, d.weight):
        assert wt == pytest.approx(b.context_probs[x] * w[min(c, l), max(c, l)] * p[x, c, l], rel=1e-12)
    with pytest.raises(InvalidBanditError, match="twice"):
        preference_pairs(b, [(0, 1), (1, 0)])
    with pytest.raises(InvalidBanditError, match="two different arms"):
        preference_pairs(b, [(1, 1)])
    with pytest.raises(InvalidBanditError, match="context 5"):
        preference_pairs(b, [(5, 0, 1)])
    with pytest.raises(InvalidBanditError, match="pair_weights"):
        preference_pairs(b, pair_weights=np.ones(4))


def test_sampled_preferences_converge_to_population():
    b = random_contextual_bandit(2, 4, seed=7, context_concentration=2.0)
    for labels in ("bt", "deterministic"):
        exact = preference_pairs(b, labels=labels).weight_table().ravel()
        s = sample_preference_pairs(b, 50_000, np.random.default_rng(0), labels=labels)
        assert s.weight.sum() == pytest.approx(1.0)
        counts = np.rint(s.weight_table().ravel() * 50_000)
        assert chi2_p(counts, exact) > ALPHA
    # power: the same counts against uniform winners (BT ignored) are rejected
    s = sample_preference_pairs(b, 50_000, np.random.default_rng(0))
    counts = np.rint(s.weight_table().ravel() * 50_000)
    mask = preference_pairs(b).weight_table()
    wrong = (mask > 0) * (b.context_probs[:, None, None] / 12)
    assert chi2_p(counts, wrong.ravel()) < 1e-9


def test_sampled_partial_preferences_use_the_same_pairs_as_exact():
    b = random_contextual_bandit(1, 6, seed=1)
    s = sample_preference_pairs(b, 4000, 11, coverage="partial", partial_fraction=0.3)
    assert nx.is_connected(comparison_graph(s, 0))
    # max(K - 1, round(0.3 * 15)) = 5 pairs, drawn from the same seed as the exact data's: the same edges
    exact = preference_pairs(b, "partial", partial_fraction=0.3, connected=True, seed=11)
    edges = {frozenset(e) for e in comparison_graph(s, 0).edges}
    assert edges == {frozenset(e) for e in comparison_graph(exact, 0).edges} and len(edges) == 5


def test_demonstrations_exact_and_sampled():
    b = random_contextual_bandit(3, 5, seed=4, context_concentration=1.0)
    pi = np.random.default_rng(1).dirichlet(np.ones(5), size=3)
    pi[0, 2] = 0.0
    pi[0] /= pi[0].sum()
    exact = exact_demonstrations(b, pi)
    np.testing.assert_allclose(exact.weight_table(), b.context_probs[:, None] * pi, atol=1e-15)
    assert not np.any((exact.context == 0) & (exact.action == 2))
    s = sample_demonstrations(b, 40_000, pi, np.random.default_rng(3))
    counts = np.rint(s.weight_table().ravel() * 40_000)
    assert chi2_p(counts, exact.weight_table().ravel()) > ALPHA
    assert chi2_p(counts, (b.context_probs[:, None] * np.full((3, 5), 0.2)).ravel()) < 1e-9
    # k-armed: a (K,) policy is accepted
    kb = k_armed_bandit(3, seed=0)
    assert exact_demonstrations(kb, [0.5, 0.5, 0.0]).weight.tolist() == [0.5, 0.5]


def test_mixed_quality_demonstrations():
    b = random_contextual_bandit(2, 4, seed=9)
    expert = np.eye(4)[[1, 3]]
    sub = np.full((2, 4), 0.25)
    d = mixed_quality_demonstrations(b, expert, sub, expert_fraction=0.3)
    assert d.class_rewards == (1.0, 0.1)
    T = d.weight_table()  # (X, C, K)
    assert T.shape == (2, 2, 4) and T.sum() == pytest.approx(1.0)
    assert T[:, 0].sum() == pytest.approx(0.3) and T[:, 1].sum() == pytest.approx(0.7)
    np.testing.assert_allclose(T[:, 0] / T[:, 0].sum(axis=1, keepdims=True), expert)
    np.testing.assert_allclose(T[:, 1] / T[:, 1].sum(axis=1, keepdims=True), sub)
    s = mixed_quality_demonstrations(b, expert, sub, expert_fraction=0.3, class_rewards=None, n=30_000,
                                     rng=np.random.default_rng(2))
    assert s.class_rewards is None and len(s) == 30_000
    counts = np.rint(s.weight_table().ravel() * 30_000)
    assert chi2_p(counts, T.ravel()) > ALPHA
    swapped = mixed_quality_demonstrations(b, expert, sub, expert_fraction=0.7).weight_table()
    assert chi2_p(counts, swapped.ravel()) < 1e-9
    with pytest.raises(InvalidBanditError, match="rng"):
        mixed_quality_demonstrations(b, expert, sub, n=10)
    with pytest.raises(InvalidBanditError, match="expert_fraction"):
        mixed_quality_demonstrations(b, expert, sub, expert_fraction=1.5)
    with pytest.raises(InvalidBanditError, match="suboptimal_policy"):
        mixed_quality_demonstrations(b, expert, np.ones((2, 4)))
    with pytest.raises(DataError, match="class_rewards"):
        mixed_quality_demonstrations(b, expert, sub, class_rewards=(1.0,))


def test_bandit_constructors():
    b = k_armed_bandit(5, seed=3, reward_scale=2.0)
    assert b.n_contexts == 1 and b.n_arms == 5
    np.testing.assert_allclose(b.ref_policy, 0.2)
    np.testing.assert_array_equal(b.rewards, k_armed_bandit(5, seed=3, reward_scale=2.0).rewards)
    np.testing.assert_allclose(b.rewards / 2.0, k_armed_bandit(5, seed=3).rewards)
    c = random_contextual_bandit(3, 4, seed=0, ref_concentration=0.01)
    assert np.all(c.ref_policy > 0) and np.all(np.isfinite(c.log_ref))
    np.testing.assert_allclose(c.ref_policy.sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        b.rewards[0, 0] = 1.0  # read-only


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: k_armed_bandit(1), "at least 2 arms"),
        (lambda: random_contextual_bandit(2, 1, seed=0), "at least 2 arms"),
        (lambda: random_contextual_bandit(0, 3, seed=0), "n_contexts"),
        (lambda: k_armed_bandit(3, rewards=[0.0, 1.0]), r"shape \(3,\)"),
        (lambda: k_armed_bandit(3, ref_policy=[0.5, 0.5, 0.1]), "not a distribution"),
        (lambda: k_armed_bandit(3, ref_policy=[0.5, 0.5, 0.0]), "strictly positive"),
        (lambda: k_armed_bandit(2, rewards=[0.0, np.inf]), "non-finite"),
        (lambda: ContextualBandit(np.zeros(3), np.full(3, 1 / 3)), "shape"),
        (lambda: ContextualBandit(np.zeros((2, 3)), np.full((1, 3), 1 / 3)), "ref_policy must have shape"),
        (lambda: ContextualBandit(np.zeros((2, 2)), np.full((2, 2), 0.5), [0.5, 0.6]), "context_probs"),
        (lambda: ContextualBandit(np.zeros((2, 2)), np.full((2, 2), 0.5), [1.0]), "context_probs"),
        (lambda: random_contextual_bandit(2, 3, seed=0, ref_concentration=0.0), "ref_concentration"),
        (lambda: preference_pairs(k_armed_bandit(3, seed=0), "most"), "coverage"),
        (lambda: preference_pairs(k_armed_bandit(3, seed=0), labels="random"), "labels"),
        (lambda: preference_pairs(k_armed_bandit(3, seed=0), "partial", partial_fraction=0.0), "partial_fraction"),
        (lambda: sample_preference_pairs(k_armed_bandit(3, seed=0), 0, 0), "positive number"),
        (lambda: sample_demonstrations(k_armed_bandit(3, seed=0), 5, [0.5, 0.5], 0), "shape"),
        (lambda: exact_demonstrations(k_armed_bandit(3, seed=0), [0.5, 0.6, -0.1]), "negative"),
        (lambda: sample_demonstrations(k_armed_bandit(3, seed=0), 5, [1, 0, 0], "seed"), "rng"),
        (lambda: comparison_graph(preference_pairs(k_armed_bandit(3, seed=0)), 1), "context 1"),
    ],
)
def test_bad_inputs_raise(make, match):
    with pytest.raises(InvalidBanditError, match=match):
        make()
