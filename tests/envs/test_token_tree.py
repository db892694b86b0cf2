"""Token trees: structure against brute-force enumeration, log-probs three ways, the MDP's soft value."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from mdpalign.envs import InvalidTokenTreeError, TokenTree, random_token_tree, token_tree_counts
from mdpalign.mdp import TabularMDP
from mdpalign.testing.strategies import token_tree_shapes as trees


def brute_force_sequences(V, L, eos):
    """Every complete response: stop at EOS (included) or at length L."""
    out = set()
    for n in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=n):
            if eos is None:
                if n == L:
                    out.add(seq)
            elif eos not in seq[:-1] and (seq[-1] == eos or n == L):
                out.add(seq)
    return out


def make(V, L, eos_kind, seed=0, **kw):
    eos = {"first": 0, "last": V - 1, None: None}[eos_kind]
    return random_token_tree(V, L, seed=seed, eos=eos, **kw), eos


@settings(max_examples=30)
@given(trees)
def test_structure_matches_brute_force(spec):
    tree, eos = make(*spec)
    V, L = tree.vocab_size, tree.max_length
    seqs = tree.sequences()
    assert set(seqs) == brute_force_sequences(V, L, eos) and len(seqs) == tree.n_leaves
    # closed-form counts, written out independently of token_tree_counts
    m = V - 1 if eos is not None else V
    n_incomplete = sum(m**d for d in range(L))
    assert tree.n_prefixes == 1 + V * n_incomplete == token_tree_counts(V, L, eos)[0]
    assert tree.n_leaves == tree.n_prefixes - n_incomplete
    assert (~tree.is_complete).sum() == n_incomplete
    # breadth-first order
    assert np.all(tree.parent[1:] < np.arange(1, tree.n_prefixes))
    assert np.all(np.diff(tree.depth) >= 0)
    for p in range(tree.n_prefixes):
        toks = tree.tokens(p)
        assert tree.prefix_index(toks) == p and len(toks) == tree.depth[p]
        if tree.is_complete[p]:
            assert np.all(tree.children[p] == -1)
        else:
            assert [tree.parent[c] for c in tree.children[p]] == [p] * V
            assert tree.last_token[tree.children[p]].tolist() == list(range(V))
    assert tree.leaf_lengths.tolist() == [len(s) for s in seqs]
    assert tree.leaf_index[tree.leaf_prefixes].tolist() == list(range(tree.n_leaves))


@settings(max_examples=30)
@given(trees, st.integers(0, 1000))
def test_log_probs_three_ways_and_normalisation(spec, seed):
    tree, _ = make(*spec, seed=seed)
    ref_lp = tree.ref_log_probs
    assert np.exp(logsumexp(tree.leaf_log_probs(ref_lp))) == pytest.approx(1.0, abs=1e-12)
    # arbitrary (unnormalised) per-token scores: paths, walk and vectorised recursion agree
    scores = np.random.default_rng(seed).normal(size=(tree.n_prefixes, tree.vocab_size))
    states, actions, mask = tree.leaf_token_paths()
    assert states.shape == actions.shape == mask.shape == (tree.n_leaves, tree.max_length)
    via_paths = (scores[states, actions] * mask).sum(axis=1)
    vectorised = tree.leaf_log_probs(scores)
    walked = np.array([tree.sequence_log_prob(scores, s) for s in tree.sequences()])
    np.testing.assert_allclose(via_paths, walked, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vectorised, walked, rtol=0, atol=1e-12)
    # masks are left-aligned and count the tokens, EOS included
    assert np.all(mask.sum(axis=1) == tree.leaf_lengths)
    assert np.all(np.diff(mask.astype(int), axis=1) <= 0)
    assert np.all(states[~mask] == 0) and np.all(actions[~mask] == 0)
    assert not np.any(tree.is_complete[states[mask]])


def test_eos_is_a_token_and_max_length_truncates():
    tree = TokenTree(3, 2, eos=0, ref_logits=None)
    lp = tree.ref_log_probs  # uniform: every token log(1/3)
    assert tree.sequence_log_prob(lp, (0,)) == pytest.approx(np.log(1 / 3))
    assert tree.sequence_log_prob(lp, (1, 0)) == pytest.approx(2 * np.log(1 / 3))
    assert tree.sequence_log_prob(lp, (1, 2)) == pytest.approx(2 * np.log(1 / 3))  # truncated, no EOS
    with pytest.raises(InvalidTokenTreeError, match="not a complete sequence"):
        tree.sequence_log_prob(lp, (1,))
    with pytest.raises(InvalidTokenTreeError, match="continue after"):
        tree.sequence_log_prob(lp, (0, 1))
    with pytest.raises(InvalidTokenTreeError, match="continue after"):
        tree.sequence_log_prob(lp, (1, 2, 0))
    with pytest.raises(InvalidTokenTreeError, match="outside the vocabulary"):
        tree.sequence_log_prob(lp, (3,))
    with pytest.raises(InvalidTokenTreeError, match="log_probs must have shape"):
        tree.sequence_log_prob(lp[:-1], (0,))


def soft_values_by_backward_recursion(mdp: TabularMDP, ref: np.ndarray, beta: float) -> np.ndarray:
    """V(s) = beta log sum_a ref(a|s) exp((R[s,a] + V(next))/beta) on the MDP arrays; the MDP is a
    tree whose successors have larger indices, so one backward sweep is exact."""
    P = mdp.dense_P()
    V = np.zeros(mdp.n_states)
    for s in reversed(range(mdp.n_states)):
        if mdp.terminal[s]:
            continue
        nxt = P[s].argmax(axis=1)
        assert np.all(P[s, np.arange(mdp.n_actions), nxt] == 1.0) and np.all(nxt > s)
        V[s] = beta * logsumexp(np.log(ref[s]) + (mdp.R[s] + V[nxt]) / beta)
    return V


@pytest.mark.parametrize("V,L,eos", [(2, 3, 0), (3, 3, 2), (4, 2, None), (3, 4, 0)])
@pytest.mark.parametrize("beta", [0.1, 1.0, 7.0])
def test_to_mdp_soft_value_is_log_partition(V, L, eos, beta):
    tree = random_token_tree(V, L, seed=3, eos=eos, reward_scale=2.0)
    mdp = tree.to_mdp()
    assert isinstance(mdp, TabularMDP) and mdp.gamma == 1.0
    assert mdp.n_states == tree.n_prefixes and mdp.n_actions == V
    np.testing.assert_array_equal(mdp.terminal, tree.is_complete)
    assert mdp.initial[0] == 1.0
    # rewards sit exactly on the transitions that complete a sequence
    assert np.count_nonzero(mdp.R) == np.count_nonzero(tree.leaf_rewards)
    for leaf, p in enumerate(tree.leaf_prefixes):
        assert mdp.R[tree.parent[p], tree.last_token[p]] == tree.leaf_rewards[leaf]
    # brute force: beta log E_ref[exp(r/beta)] over the explicit list of sequences
    ref_lp = tree.ref_log_probs
    logp = np.array([sum(ref_lp[tree.prefix_index(s[:t]), s[t]] for t in range(len(s))) for s in tree.sequences()])
    brute = beta * logsumexp(logp + tree.leaf_rewards / beta)
    assert tree.log_partition(beta) == pytest.approx(brute, rel=1e-12, abs=1e-12)
    values = soft_values_by_backward_recursion(mdp, tree.ref_policy, beta)
    assert values[0] == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_to_mdp_sparse_equals_dense():
    tree = random_token_tree(3, 3, seed=0)
    a, b = tree.to_mdp(sparse=True), tree.to_mdp(sparse=False)
    assert a.is_sparse and not b.is_sparse
    np.testing.assert_array_equal(a.dense_P(), b.dense_P())
    np.testing.assert_array_equal(a.R, b.R)


def test_random_tree_reproducible_and_scaled():
    a = random_token_tree(3, 3, seed=5, reward_scale=3.0, ref_scale=0.0)
    b = random_token_tree(3, 3, seed=5)
    np.testing.assert_allclose(a.leaf_rewards, 3.0 * b.leaf_rewards)
    np.testing.assert_allclose(a.ref_policy[~a.is_complete], 1 / 3)
    assert not np.array_equal(random_token_tree(3, 3, seed=6).leaf_rewards, b.leaf_rewards)
    c = b.with_rewards(np.ones(b.n_leaves))
    assert c.log_partition(0.5) == pytest.approx(1.0)  # constant reward: beta log exp(1/beta)


def test_large_tree_is_built_vectorised():
    tree = random_token_tree(10, 5, seed=0)  # 73,811 prefixes
    assert (tree.n_prefixes, tree.n_leaves) == token_tree_counts(10, 5, 0) == (73811, 66430)
    paths = tree.leaf_token_paths()
    lp = tree.ref_log_probs
    np.testing.assert_allclose((lp[paths.states, paths.actions] * paths.mask).sum(axis=1),
                               tree.leaf_log_probs(lp), atol=1e-10)


@pytest.mark.parametrize(
    "make_tree,match",
    [
        (lambda: TokenTree(1, 3), "vocab_size"),
        (lambda: TokenTree(3, 0), "max_length"),
        (lambda: TokenTree(3, 2, eos=3), "eos"),
        (lambda: TokenTree(3, 2, eos=-1), "eos"),
        (lambda: TokenTree(3, 2, leaf_rewards=np.zeros(4)), "leaf_rewards must have shape"),
        (lambda: TokenTree(2, 2, leaf_rewards=[0.0, np.nan, 0.0]), "non-finite"),
        (lambda: TokenTree(3, 2, ref_logits=np.zeros((3, 3))), "ref_logits must have shape"),
        (lambda: TokenTree(2, 1, ref_logits=[[0.0, np.inf], [0, 0], [0, 0]]), "non-finite"),
        (lambda: TokenTree(64, 8), "more than"),
        (lambda: random_token_tree(1, 2, seed=0), "vocab_size"),
        (lambda: random_token_tree(3, 2, seed=0).log_partition(0.0), "beta"),
        (lambda: random_token_tree(3, 2, seed=0).tokens(99), "outside"),
    ],
)
def test_bad_inputs_raise(make_tree, match):
    with pytest.raises(InvalidTokenTreeError, match=match):
        make_tree()
