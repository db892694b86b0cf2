"""Closed forms of mdpalign.proofs checked against independent routes (no optimiser involved).

Each test names the THEORY.md statement it checks. Where two routes compute the same optimum
(e.g. the Bradley–Terry MLE solver and the KL-RL Gibbs formula) agreement to ~1e-12 is required:
both are exact float64 computations, the tolerance covers rounding only.
"""
import numpy as np
import pytest
import torch
from scipy.special import expit, logit

from mdpalign.data import DemoData, LabeledDemoData, PreferenceData
from mdpalign.envs.bandits import (
    bt_preference_probs,
    k_armed_bandit,
    preference_pairs,
    random_contextual_bandit,
)
from mdpalign.envs.token_tree import random_token_tree
from mdpalign.objectives import kl_rl_objective
from mdpalign.proofs import (
    NoClosedFormError,
    NoFiniteOptimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    bradley_terry_scores,
    crlft_optimum,
    dpo_optimum,
    dpo_two_arm_log_ratio,
    ford_condition,
    ipo_mu_optimum,
    ipo_optimum,
    kl_rl_gap,
    kl_rl_optimum,
    kl_rl_value,
    leaf_pair_table,
    optimal_soft_value,
    orpo_optimum,
    orpo_population_loss,
    orpo_two_arm_root,
    sft_optimum,
    token_tree_optimum,
)
from mdpalign.proofs.dpo import bradley_terry_nll
from mdpalign.proofs.ift import ift_depth2_optimum
from mdpalign.proofs.token_tree import tree_sft_optimum

EXACT = 1e-11  # two exact float64 routes: rounding only


def _random_policy(rng, X, K):
    return rng.dirichlet(np.ones(K), size=X)


# ----------------------------------------------------------------------------------- KL-RL


def test_kl_rl_gap_identity_and_soft_value():
    """THEORY KL-RL: J(pi*) = beta log Z and J(pi*) - J(pi) = beta KL(pi || pi*) for every pi."""
    rng = np.random.default_rng(0)
    b = random_contextual_bandit(4, 5, seed=1)
    beta = 0.37
    opt = kl_rl_optimum(b.rewards, b.ref_policy, beta)
    J_star = kl_rl_value(b.rewards, b.ref_policy, beta, opt.policy)
    np.testing.assert_allclose(J_star, optimal_soft_value(b.rewards, b.ref_policy, beta), atol=EXACT)
    for _ in range(5):
        pi = _random_policy(rng, 4, 5)
        J = kl_rl_value(b.rewards, b.ref_policy, beta, pi)
        np.testing.assert_allclose(J_star - J, kl_rl_gap(b.rewards, b.ref_policy, beta, pi), atol=EXACT)
        assert (J_star - J > 0).all()


def test_kl_rl_numpy_value_matches_library_objective():
    """The torch kl_rl_objective and the proofs' numpy J agree (two implementations of one formula)."""
    rng = np.random.default_rng(2)
    b = random_contextual_bandit(3, 4, seed=3)
    pi = _random_policy(rng, 3, 4)
    mu = b.context_probs
    ours = kl_rl_value(b.rewards, b.ref_policy, 0.8, pi, context_probs=mu)
    lib = kl_rl_objective(torch.tensor(np.log(pi)), torch.tensor(np.log(b.ref_policy)), torch.tensor(b.rewards), 0.8,
                          context_probs=torch.tensor(mu))
    assert abs(float(lib) - ours) < EXACT


# ----------------------------------------------------------------------------------- DPO


def test_dpo_all_pairs_bt_is_kl_rl_optimum():
    """THEORY DPO: all pairs compared with BT labels -> unique optimum = pi_ref exp(r/beta)/Z.
    Route 1: damped-Newton BT MLE on the population win table. Route 2: the Gibbs formula."""
    b = random_contextual_bandit(3, 5, seed=4, reward_scale=2.0)
    data = preference_pairs(b, coverage="all", labels="bt")
    for beta in (0.1, 1.0, 7.0):
        opt = dpo_optimum(b.ref_policy, data, beta)
        assert isinstance(opt, UniqueOptimum) and opt.attained
        np.testing.assert_allclose(opt.policy, kl_rl_optimum(b.rewards, b.ref_policy, beta).policy, atol=1e-10)


def test_bt_scores_are_stationary_and_unique_for_non_bt_data():
    """THEORY DPO finite/non-BT data: beta g = BT MLE scores. The solver's scores zero the exact
    gradient and beat every perturbation (strict convexity modulo the constant)."""
    rng = np.random.default_rng(5)
    W = rng.uniform(0.05, 1.0, size=(5, 5))
    np.fill_diagonal(W, 0)
    s = bradley_terry_scores(W)
    d = s[:, None] - s[None, :]
    grad = -(W * expit(-d)).sum(1) + (W.T * expit(d)).sum(1)
    assert np.abs(grad).max() < 1e-12
    f0 = bradley_terry_nll(W, s)
    for _ in range(20):
        e = rng.normal(size=5) * 1e-3
        e -= e.mean()
        assert bradley_terry_nll(W, s + e) > f0


def test_dpo_two_arm_contradictory_ratio():
    """THEORY DPO contradictory labels: pi_a/pi_b = (ref_a/ref_b) (p/(1-p))^(1/beta)."""
    ref = np.array([[0.3, 0.7]])
    p, beta = 0.8, 0.4
    W = np.array([[[0, p], [1 - p, 0]]])
    opt = dpo_optimum(ref, W, beta)
    lp = np.log(opt.policy[0])
    assert abs((lp[0] - lp[1]) - dpo_two_arm_log_ratio(p, beta, 0.3, 0.7)) < EXACT
    assert abs((lp[0] - lp[1]) - (np.log(0.3 / 0.7) + logit(p) / beta)) < EXACT


def test_dpo_deterministic_labels_no_finite_optimum():
    """THEORY DPO deterministic: no finite minimiser; every loser vanishes; limit = best arm."""
    b = k_armed_bandit(5, seed=6)
    data = preference_pairs(b, coverage="all", labels="deterministic")
    opt = dpo_optimum(b.ref_policy, data, 0.5)
    assert isinstance(opt, NoFiniteOptimum) and not opt.attained
    assert not ford_condition(data.weight_table()[0])
    best = int(np.argmax(b.rewards[0]))
    expect = np.zeros(5)
    expect[best] = 1
    np.testing.assert_array_equal(opt.policy[0], expect)
    assert opt.vanishing[0].sum() == 4 and not opt.vanishing[0, best]


def test_dpo_mixed_scc_structure():
    """Ford/Zermelo via SCCs: A beats B deterministically, {B, C} contradictory -> B and C vanish,
    log pi_B - log pi_C stays pinned at log(ref ratio) + log(W_BC/W_CB)/beta."""
    ref = np.array([[0.2, 0.3, 0.5]])
    W = np.zeros((1, 3, 3))
    W[0, 0, 1] = 1.0
    W[0, 1, 2] = 0.6
    W[0, 2, 1] = 0.2
    beta = 0.5
    opt = dpo_optimum(ref, W, beta)
    assert isinstance(opt, NoFiniteOptimum)
    np.testing.assert_array_equal(opt.vanishing[0], [False, True, True])
    np.testing.assert_array_equal(opt.policy[0], [1, 0, 0])
    row = opt.pinned[(opt.pinned[:, 1] == 1) & (opt.pinned[:, 2] == 2)][0]
    assert abs(row[3] - (np.log(0.3 / 0.5) + np.log(3.0) / beta)) < 1e-10


def test_dpo_partial_coverage_pins_only_compared_differences():
    """THEORY DPO partial coverage: only compared differences pinned; the optimum is a set."""
    b = random_contextual_bandit(2, 5, seed=7)
    data = preference_pairs(b, coverage="partial", labels="bt", connected=False, seed=3)
    opt = dpo_optimum(b.ref_policy, data, 0.7)
    assert isinstance(opt, PinnedDifferences) and opt.policy is None
    star = kl_rl_optimum(b.rewards, b.ref_policy, 0.7).policy
    assert opt.check(star, tol=1e-10).ok  # the KL-RL optimum is one member of the set
    other = opt.representative(fill=np.full((2, 5), 0.2))
    assert opt.check(other, tol=1e-10).ok and np.abs(other - star).max() > 1e-3  # ... and not the only one


# ----------------------------------------------------------------------------------- IPO


def test_ipo_graph_least_squares_equals_mu_formula():
    """THEORY IPO: g = L^+ b; with pairs from mu x mu it is pi* ∝ pi_ref exp(p(y > mu)/tau)."""
    rng = np.random.default_rng(8)
    b = random_contextual_bandit(2, 4, seed=9)
    P = bt_preference_probs(b)
    mu = rng.dirichlet(np.ones(4), size=2)
    W = mu[:, :, None] * mu[:, None, :] * P
    W[:, np.arange(4), np.arange(4)] = 0
    tau = 0.3
    opt = ipo_optimum(b.ref_policy, W, tau)
    assert isinstance(opt, UniqueOptimum)
    np.testing.assert_allclose(opt.policy, ipo_mu_optimum(b.ref_policy, mu, P, tau), atol=1e-10)


def test_ipo_is_finite_for_deterministic_labels():
    """THEORY IPO: finite even for deterministic preferences (unlike DPO)."""
    b = k_armed_bandit(4, seed=10)
    data = preference_pairs(b, labels="deterministic")
    opt = ipo_optimum(b.ref_policy, data, 0.5)
    assert isinstance(opt, UniqueOptimum) and np.all(opt.policy > 0)
    assert isinstance(dpo_optimum(b.ref_policy, data, 0.5), NoFiniteOptimum)


# ----------------------------------------------------------------------------------- ORPO


@pytest.mark.parametrize("q", [0.55, 0.7, 0.9, 0.99, 0.2])
@pytest.mark.parametrize("lam", [0.1, 1.0, 5.0])
def test_orpo_two_arm_root_flattens_q(q, lam):
    """THEORY ORPO K=2 contradictory: u* solves sigma(u) + 2 lam sigma(2u) = q(1 + 2 lam).
    Correction: the optimum lies strictly between logit(q)/2 and logit(q) — it FLATTENS q
    (pi_a between 1/2 and q), THEORY.md said 'sharpens'. The root also zeroes the derivative of
    the exact population loss (numpy, independent of the root finder)."""
    u = orpo_two_arm_root(q, lam)
    assert abs(expit(u) + 2 * lam * expit(2 * u) - q * (1 + 2 * lam)) < 1e-14
    lo, hi = sorted((logit(q) / 2, logit(q)))
    assert lo < u < hi
    assert min(q, 0.5) < expit(u) < max(q, 0.5)
    W = np.array([[[0, q], [1 - q, 0]]])

    def L(v):
        return orpo_population_loss(W, lam, np.array([[expit(v), expit(-v)]]))

    h = 1e-5
    assert abs((L(u + h) - L(u - h)) / (2 * h)) < 1e-8
    assert L(u) < L(logit(q)) and L(u) < L(logit(q) / 2)


def test_orpo_disjoint_supports_limit_is_chosen_distribution():
    """THEORY ORPO disjoint supports: infimum n H(D_w), approached only as pi -> D_w."""
    W = np.zeros((1, 4, 4))
    W[0, 0, 2] = 0.3
    W[0, 1, 3] = 0.5
    W[0, 0, 3] = 0.2
    opt = orpo_optimum(W, 0.5)
    assert isinstance(opt, NoFiniteOptimum)
    np.testing.assert_allclose(opt.policy[0], [0.5, 0.5, 0, 0])
    assert abs(opt.infimum - np.log(2)) < EXACT
    # the loss approaches the infimum from above along pi -> D_w
    vals = [orpo_population_loss(W, 0.5, np.array([[0.5 - e, 0.5 - e, e, e]])) for e in (1e-2, 1e-4, 1e-6)]
    assert vals[0] > vals[1] > vals[2] > opt.infimum and vals[2] - opt.infimum < 1e-5


def test_orpo_general_case_has_no_closed_form():
    W = np.ones((1, 3, 3)) - np.eye(3)
    with pytest.raises(NoClosedFormError, match="context 0"):
        orpo_optimum(W, 0.5)


# ----------------------------------------------------------------------------------- C-RLFT


def test_crlft_conditioned_weights_cancel_and_unconditioned_is_mixture_kl_rl():
    """THEORY C-RLFT: conditioned pi*(y|x,c) = D_c(y|x) whatever the weights; unconditioned
    pi ∝ sum_c exp(r_c/beta) P(c|x) D_c(y|x) = KL-RL optimum for the mixture reference with reward
    beta log E[exp(r_c/beta) | y]."""
    rng = np.random.default_rng(11)
    X, C, K = 3, 2, 4
    D = rng.dirichlet(np.ones(C * K), size=X).reshape(X, C, K)
    r_c, beta = np.array([1.0, 0.1]), 0.4
    w = np.exp(r_c / beta)
    cond_a = crlft_optimum(D, w, conditioned=True)
    cond_b = crlft_optimum(D, np.array([1.0, 1.0]), conditioned=True)
    np.testing.assert_allclose(cond_a.policy, cond_b.policy, atol=EXACT)
    np.testing.assert_allclose(cond_a.policy.reshape(X, C, K), D / D.sum(2, keepdims=True), atol=EXACT)
    unc = crlft_optimum(D, w, conditioned=False)
    m = D.sum(1) / D.sum((1, 2))[:, None]
    post = D / D.sum(1, keepdims=True)  # P(c | x, y)
    r_tilde = beta * np.log(np.einsum("xcy,c->xy", post, w))
    np.testing.assert_allclose(unc.policy, kl_rl_optimum(r_tilde, m, beta).policy, atol=1e-10)
    assert np.abs(unc.policy - sft_optimum(D.sum(1)).policy).max() > 1e-3  # weights matter here


# ----------------------------------------------------------------------------------- token trees


@pytest.mark.parametrize("V,L,eos", [(2, 3, 0), (3, 3, 0), (3, 2, None), (4, 2, 1)])
def test_token_tree_recursion_telescopes_and_matches_soft_value_iteration(V, L, eos):
    """THEORY token trees: backward recursion telescopes to pi_ref(y) exp(r/beta)/Z, V(root) = beta log Z,
    and equals the solvers' soft_value_iteration on TokenTree.to_mdp() (an independent solver)."""
    from mdpalign.solve.soft import soft_value_iteration

    tree = random_token_tree(V, L, seed=V * 10 + L, eos=eos, reward_scale=1.5)
    beta = 0.6
    opt = token_tree_optimum(tree, beta)
    leaf = tree.leaf_log_probs(np.log(np.where(np.isfinite(opt.policy), opt.policy, 1.0)))
    np.testing.assert_allclose(leaf, np.log(opt.extras["leaf_policy"]), atol=EXACT)
    assert abs(opt.extras["values"][0] - tree.log_partition(beta)) < EXACT
    sol = soft_value_iteration(tree.to_mdp(), beta, tree.ref_policy)
    inc = ~tree.is_complete
    np.testing.assert_allclose(sol.values[inc], opt.extras["values"][inc], atol=1e-9)
    np.testing.assert_allclose(sol.policy_probs[inc], opt.policy[inc], atol=1e-9)


def test_sequence_dpo_bandit_over_leaves_equals_token_soft_optimum():
    """THEORY token trees: sequence-level DPO with all leaf pairs BT -> pi*(y) of the soft recursion."""
    tree = random_token_tree(3, 3, seed=12)
    beta = 0.8
    ref_leaf = np.exp(tree.leaf_log_probs(tree.ref_log_probs))[None]
    opt = dpo_optimum(ref_leaf, leaf_pair_table(tree), beta)
    np.testing.assert_allclose(opt.policy[0], token_tree_optimum(tree, beta).extras["leaf_policy"], atol=1e-10)


def test_tree_sft_telescopes_to_demo_distribution():
    """SFT on a tree: pi*(a|s) = M(s.a)/M(s) telescopes to pi*(y) = D(y) (sum form), ∝ D(y)/|y| (mean form)."""
    tree = random_token_tree(3, 3, seed=13)
    D = np.random.default_rng(13).dirichlet(np.ones(tree.n_leaves))
    for norm, target in ((False, D), (True, (D / tree.leaf_lengths) / (D / tree.leaf_lengths).sum())):
        opt = tree_sft_optimum(tree, D, length_normalised=norm)
        assert isinstance(opt, UniqueOptimum)
        lp = np.log(np.where(np.isfinite(opt.policy), opt.policy, 1.0))
        np.testing.assert_allclose(np.exp(tree.leaf_log_probs(lp)), target, atol=EXACT)


def test_ift_depth2_formula_reduces_to_sft_at_lambda_zero():
    """THEORY IFT depth 2: lam = 0 gives the SFT conditionals; lam > 0 distorts only a != m."""
    from mdpalign.envs.token_tree import TokenTree

    tree = TokenTree(3, 2, eos=None)
    rng = np.random.default_rng(14)
    J = rng.dirichlet(np.ones(9)).reshape(3, 3)
    J[0] *= 3  # unique modal first token 0
    J /= J.sum()
    sft = tree_sft_optimum(tree, J.reshape(-1))
    np.testing.assert_allclose(ift_depth2_optimum(tree, J, 0.0).policy[~tree.is_complete],
                               sft.policy[~tree.is_complete], atol=EXACT)
    d = ift_depth2_optimum(tree, J, 0.5).policy
    m = tree.children[0, 0]
    np.testing.assert_allclose(d[m], sft.policy[m], atol=EXACT)
    assert np.abs(d[tree.children[0, 1]] - sft.policy[tree.children[0, 1]]).max() > 1e-3


# ----------------------------------------------------------------------------------- check() and errors


def test_check_measures_the_miss():
    """check() reports the size of a perturbation (in nats) and fails beyond tol."""
    b = random_contextual_bandit(2, 4, seed=15)
    opt = kl_rl_optimum(b.rewards, b.ref_policy, 0.5)
    lp = np.log(opt.policy)
    assert opt.check(log_probs=lp, tol=1e-12).ok
    bumped = lp.copy()
    bumped[1, 2] += 1e-3
    bumped[1] -= np.log(np.exp(bumped[1]).sum())
    res = opt.check(log_probs=bumped, tol=1e-6)
    assert not res.ok and 5e-4 < res.max_violation < 2e-3 and "context 1" in res.detail
    # torch tensors are accepted
    assert opt.check(log_probs=torch.tensor(lp), tol=1e-12).ok


def test_check_vanishing_mass_is_measured():
    opt = sft_optimum(np.array([[2.0, 0.0, 1.0]]))
    assert isinstance(opt, NoFiniteOptimum)
    eps = 1e-4  # the seen arms keep their ratio: only the vanishing mass is off
    res = opt.check(np.array([[2 / 3 * (1 - eps), eps, 1 / 3 * (1 - eps)]]), tol=1e-5)
    assert not res.ok and abs(res.max_violation - eps) < 1e-7  # |log(1 - eps)| ~ eps on the support too


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kl_rl_optimum(np.zeros((1, 3)), np.array([[0.5, 0.5, 0.0]]), 1.0), "non-positive"),
        (lambda: kl_rl_optimum(np.zeros((1, 3)), np.array([[0.5, 0.4, 0.2]]), 1.0), "sums to"),
        (lambda: kl_rl_optimum(np.zeros((1, 3)), np.full((1, 3), 1 / 3), 0.0), "beta"),
        (lambda: kl_rl_optimum(np.zeros((2, 3)), np.full((1, 3), 1 / 3), 1.0), "shape"),
        # rows are validated by mdpalign.data (tests/test_data.py); the answer keys take its containers or tables
        (
            lambda: dpo_optimum(
                np.full((1, 3), 1 / 3), {"context": [0], "chosen": [1], "rejected": [2], "weight": [1.0]}, 1.0
            ),
            "PreferenceData or an",
        ),
        (lambda: dpo_optimum(np.full((1, 3), 1 / 3), PreferenceData([0], [0], [3], [1.0], 1, 4), 1.0), "n_arms=4"),
        (lambda: dpo_optimum(np.full((1, 3), 1 / 3), np.zeros((1, 3, 2)), 1.0), "win table must have shape"),
        (lambda: dpo_optimum(np.full((1, 3), 1 / 3), -np.ones((1, 3, 3)), 1.0), "finite and >= 0"),
        (lambda: sft_optimum(DemoData([0], [1], [1.0], 1, 3), n_contexts=2), "n_contexts=1"),
        (
            lambda: crlft_optimum(LabeledDemoData([0], [1], [0], [1.0], None, 1, 3), [1.0, 0.5, 0.2], conditioned=True),
            "2 labels",
        ),
        (lambda: orpo_two_arm_root(1.0, 0.5), "q must be"),
        (lambda: sft_optimum(np.zeros((2, 3))), "zero total weight"),
        (
            lambda: kl_rl_optimum(np.zeros((1, 2)), np.full((1, 2), 0.5), 1.0).check(np.array([[0.5, 0.6]])),
            "total probability",
        ),
        (lambda: kl_rl_optimum(np.zeros((1, 2)), np.full((1, 2), 0.5), 1.0).check(), "exactly one"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ProofInputError, match=match):
        call()


def test_bradley_terry_newton_converges_at_float64_resolution():
    """Regression: all-pairs BT data from rewards shifted by a large constant made the damped Newton's
    strict Armijo test stall near the optimum (predicted decrease below the loss's rounding). The MLE of
    exact BT data is the reward vector up to its gauge."""
    import numpy as np

    from mdpalign.envs.bandits import ContextualBandit, preference_pairs, random_contextual_bandit
    from mdpalign.proofs.dpo import bradley_terry_scores

    b = random_contextual_bandit(1, 6, seed=6295)
    shifted = ContextualBandit(b.rewards + 7.3, b.ref_policy, b.context_probs)
    W = preference_pairs(shifted).weight_table()[0]
    r = b.rewards[0]
    np.testing.assert_allclose(bradley_terry_scores(W), r - r[0], atol=1e-9)


def test_kl_rl_optimum_survives_underflow():
    """Regression: at tiny beta, pi_ref·exp(r/beta) underflows to 0 for non-greedy arms; the optimum is
    still unique and attained (computed in log space), not a 'no finite optimum'."""
    import numpy as np

    from mdpalign.proofs.base import UniqueOptimum
    from mdpalign.proofs.kl_rl import kl_rl_optimum

    opt = kl_rl_optimum(np.array([[0.0, 1.0, 2.0]]), np.full((1, 3), 1 / 3), 1e-3)
    assert isinstance(opt, UniqueOptimum) and opt.attained
    assert opt.policy[0, 2] == 1.0 and opt.policy[0, 0] == 0.0  # underflowed, as float64 must
    pinned = {(int(i), int(j)): v for _, i, j, v in opt.pinned}
    assert pinned[(0, 2)] == -2000.0  # the exact log-ratio survives
