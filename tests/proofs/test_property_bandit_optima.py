"""Property tests: training a float64 TabularPolicy with the LIBRARY's objective code (through
mdpalign.fit, L-BFGS, convergence asserted) reaches the closed-form optimum of mdpalign.proofs.

Tolerance (every attained optimum): ``4 ||grad||_2 / mu`` from mdpalign.harness.offline — strong
convexity off the structural null space (whose dimension is asserted) bounds the logit error by
``||grad||/mu``; log-softmax differences move by at most twice that; a factor 2 covers the variation
of ``mu`` over the segment. ``||grad|| <= 1e-8``: the float64 loss (O(1)) cannot resolve a smaller
gradient through the line search (decrease ~ ||grad||^2/mu falls below one ulp of the loss).
Limits (no finite optimum) use bounds derived in each test from the gradient formula.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.envs.bandits import preference_pairs, random_contextual_bandit
from mdpalign.harness.offline import (
    crlft_loss_closure,
    dpo_loss_closure,
    fit_and_check,
    fit_tabular,
    kl_rl_loss_closure,
    orpo_loss_closure,
    sft_loss_closure,
    tabular_policy,
)
from mdpalign.proofs import (
    NoFiniteOptimum,
    PinnedDifferences,
    UniqueOptimum,
    crlft_optimum,
    dpo_optimum,
    dpo_two_arm_log_ratio,
    ipo_optimum,
    kl_rl_optimum,
    orpo_optimum,
    sft_optimum,
)
from mdpalign.testing.strategies import arms, betas, contexts, seeds

GRAD_TOL = 1e-8
LIMIT_TOL = 1e-6  # no finite optimum: L-BFGS slows as logits diverge; bounds below scale with the gradient reached
N = 40  # examples per property: the whole property suite stays within its 5-minute CI budget (measured ~1 min)



def _bandit(seed, X, K, reward_scale=1.0):
    return random_contextual_bandit(X, K, seed=seed, reward_scale=reward_scale)


def _assert_ok(chk, bound):
    assert chk.ok, f"{chk.detail} (certified bound {bound:.2e})"


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=arms)
def test_sft_reaches_empirical_distribution(seed, X, K):
    """THEORY SFT: pi(y|x) = D(y|x) (full support: unique, certified tolerance)."""
    D = np.random.default_rng(seed).dirichlet(np.ones(K), size=X) * np.random.default_rng(seed + 1).uniform(
        0.5, 1, (X, 1)
    )
    opt = sft_optimum(D)
    assert isinstance(opt, UniqueOptimum)
    pol = tabular_policy(X, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, sft_loss_closure(pol, D), tol=GRAD_TOL)
    _assert_ok(chk, bound)


@settings(max_examples=N)
@given(seed=seeds, K=st.integers(3, 5))
def test_sft_unseen_arms_vanish(seed, K):
    """THEORY SFT: arms never seen go to 0 (no finite logits). dL/dtheta_y = n(pi_y - p_y), so at
    ||grad|| <= g every |pi_y - p_y| <= g/n: vanishing mass <= g/n and, on the support,
    |log pi - log p| <= (g/n)/(p_min - g/n); a pinned difference of two arms moves by at most twice
    that — the tolerance used."""
    rng = np.random.default_rng(seed)
    D = rng.dirichlet(np.ones(K))[None]
    D[0, rng.choice(K, size=K // 2, replace=False)] = 0.0
    opt = sft_optimum(D)
    assert isinstance(opt, NoFiniteOptimum)
    pol = tabular_policy(1, K, seed=seed)
    res = fit_tabular(pol, sft_loss_closure(pol, D), tol=LIMIT_TOL, max_iter=1000)
    n, p_min = D.sum(), D[D > 0].min() / D.sum()
    tol = 2 * (res.grad_norm / n) / (p_min - res.grad_norm / n)
    _assert_ok(opt.check(log_probs=pol.log_probs_table().detach(), tol=tol), tol)


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=arms, beta=betas)
def test_kl_rl_ascent_reaches_gibbs_policy(seed, X, K, beta):
    """THEORY KL-RL: the maximiser of E[r] - beta KL(pi || pi_ref) is pi_ref exp(r/beta)/Z."""
    b = _bandit(seed, X, K)
    opt = kl_rl_optimum(b.rewards, b.ref_policy, beta)
    pol = tabular_policy(X, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, kl_rl_loss_closure(pol, b.ref_policy, b.rewards, beta, b.context_probs))
    _assert_ok(chk, bound)


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=arms, beta=betas)
def test_dpo_all_pairs_bt_reaches_kl_rl_optimum(seed, X, K, beta):
    """THEORY DPO all pairs + BT labels: unique optimum = KL-RL optimum pi_ref exp(r/beta)/Z."""
    b = _bandit(seed, X, K)
    data = preference_pairs(b, coverage="all", labels="bt")
    opt = dpo_optimum(b.ref_policy, data, beta)
    assert isinstance(opt, UniqueOptimum)
    pol = tabular_policy(X, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, dpo_loss_closure(pol, b.ref_policy, data.weight_table(), beta))
    _assert_ok(chk, bound)
    _assert_ok(
        kl_rl_optimum(b.rewards, b.ref_policy, beta).check(log_probs=pol.log_probs_table().detach(), tol=bound), bound
    )


@settings(max_examples=N)
@given(seed=seeds, K=arms, beta=betas)
def test_dpo_non_bt_data_reaches_bt_mle(seed, K, beta):
    """THEORY DPO finite/non-BT data: beta g equals the BT maximum-likelihood scores (Ford holds:
    every ordered pair has positive weight, so the win graph is strongly connected)."""
    rng = np.random.default_rng(seed)
    W = rng.uniform(0.05, 1.0, size=(1, K, K))
    W[0, np.arange(K), np.arange(K)] = 0
    W /= W.sum()
    ref = rng.dirichlet(np.full(K, 2.0))[None]
    opt = dpo_optimum(ref, W, beta)
    assert isinstance(opt, UniqueOptimum)
    pol = tabular_policy(1, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, dpo_loss_closure(pol, ref, W, beta))
    _assert_ok(chk, bound)


@settings(max_examples=N)
@given(seed=seeds, p=st.floats(0.05, 0.95), beta=betas)
def test_dpo_contradictory_two_arm_ratio(seed, p, beta):
    """THEORY DPO contradictory labels: pi_a/pi_b = (ref_a/ref_b) (p/(1-p))^(1/beta)."""
    ref = np.random.default_rng(seed).dirichlet([2.0, 2.0])[None]
    W = np.array([[[0.0, p], [1 - p, 0.0]]])
    opt = dpo_optimum(ref, W, beta)
    pol = tabular_policy(1, 2, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, dpo_loss_closure(pol, ref, W, beta))
    _assert_ok(chk, bound)
    lp = pol.log_probs_table().detach().numpy()[0]
    assert abs((lp[0] - lp[1]) - dpo_two_arm_log_ratio(p, beta, ref[0, 0], ref[0, 1])) <= bound


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=st.integers(3, 5), beta=betas)
def test_dpo_partial_coverage_is_not_unique(seed, X, K, beta):
    """THEORY DPO partial coverage: only compared differences beta(g_i - g_j) are pinned; two starts
    reach the same loss (to ~||grad||^2/mu) with different free mass, and both satisfy the pins."""
    b = _bandit(seed, X, K)
    data = preference_pairs(b, coverage="partial", labels="bt", connected=False, seed=seed)
    W = data.weight_table()
    opt = dpo_optimum(b.ref_policy, data, beta)
    assert isinstance(opt, PinnedDifferences)
    probs, losses = [], []
    for start in (0, 1):
        pol = tabular_policy(X, K, seed=seed + start, init_scale=1.0)
        L = dpo_loss_closure(pol, b.ref_policy, W, beta)
        res, chk, bound = fit_and_check(opt, pol, L)
        _assert_ok(chk, bound)
        probs.append(pol.probs().detach().numpy())
        losses.append(res.loss)
    assert abs(losses[0] - losses[1]) <= 1e-12
    assert np.abs(probs[0] - probs[1]).max() > 1e-4, "different starts should leave the free mass different"


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=arms, tau=betas,
       setup=st.sampled_from([("all", "bt"), ("all", "deterministic"), ("partial", "bt")]))
def test_ipo_reaches_graph_least_squares(seed, X, K, tau, setup):
    """THEORY IPO: g = L^+ b, one constant per component; finite even for deterministic labels.
    Trained with dpo_loss(loss_type='ipo') (the library's IPO, tau = beta)."""
    coverage, labels = setup
    if coverage == "partial" and K < 3:
        K = 3
    b = _bandit(seed, X, K)
    data = preference_pairs(b, coverage=coverage, labels=labels, seed=seed, connected=True)
    opt = ipo_optimum(b.ref_policy, data, tau)
    assert opt.attained
    pol = tabular_policy(X, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, dpo_loss_closure(pol, b.ref_policy, data.weight_table(), tau, "ipo"))
    _assert_ok(chk, bound)


@settings(max_examples=N)
@given(q=st.floats(0.05, 0.95), lam=st.floats(0.05, 3.0), seed=seeds)
def test_orpo_two_arm_contradictory_reaches_root(q, lam, seed):
    """THEORY ORPO K=2, contradictory rate q: optimum u* with sigma(u) + 2 lam sigma(2u) = q(1 + 2 lam)
    (it flattens q; see tests/proofs/test_closed_forms.py)."""
    W = np.array([[[0.0, q], [1 - q, 0.0]]])
    opt = orpo_optimum(W, lam)
    assert isinstance(opt, UniqueOptimum)
    pol = tabular_policy(1, 2, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, orpo_loss_closure(pol, W, lam))
    _assert_ok(chk, bound)


@settings(max_examples=15)  # each fit runs into the diverging-logit regime (slow); 15 examples keep the budget
@given(seed=seeds, K=st.integers(3, 5), lam=st.floats(0.05, 2.0))
def test_orpo_disjoint_supports_tend_to_chosen_distribution(seed, K, lam):
    """THEORY ORPO disjoint supports: infimum n H(D_w), approached only as pi -> D_w (as SFT).
    Bound: for a non-chosen arm dL/dtheta_y >= n pi_y (the NLL part is n pi_y, the odds-ratio part
    is >= 0 since raising theta_y lowers every chosen log-odds and raises a rejected one), so its mass
    is <= ||grad||/n. The support tolerance 1e-4 covers the O(mass) odds-ratio pull on chosen arms."""
    rng = np.random.default_rng(seed)
    n_chosen = int(rng.integers(1, K))
    chosen = rng.choice(K, size=n_chosen, replace=False)
    rejected = np.setdiff1d(np.arange(K), chosen)
    W = np.zeros((1, K, K))
    for c in chosen:
        for r in rejected:
            W[0, c, r] = rng.uniform(0.1, 1.0)
    W /= W.sum()
    opt = orpo_optimum(W, lam)
    assert isinstance(opt, NoFiniteOptimum)
    pol = tabular_policy(1, K, seed=seed)
    L = orpo_loss_closure(pol, W, lam)
    res = fit_tabular(pol, L, tol=LIMIT_TOL, max_iter=1000)
    probs = pol.probs().detach().numpy()[0]
    assert probs[rejected].max() <= res.grad_norm / W.sum()
    _assert_ok(opt.check(log_probs=pol.log_probs_table().detach(), tol=1e-4), 1e-4)
    assert res.loss > opt.infimum  # not attained


@settings(max_examples=N)
@given(seed=seeds, X=contexts, K=arms, beta=betas, conditioned=st.booleans())
def test_crlft_reaches_class_weighted_sft(seed, X, K, beta, conditioned):
    """THEORY C-RLFT: conditioned -> D_c(y|x) whatever the weights; unconditioned ->
    pi ∝ sum_c exp(r_c/beta) P(c|x) D_c(y|x). Trained with crlft_loss and weights exp(r_c/beta)
    for OpenChat's class rewards (1.0, 0.1)."""
    rng = np.random.default_rng(seed)
    C = 2
    D = rng.dirichlet(np.ones(C * K), size=X).reshape(X, C, K)
    w = np.exp((np.array([1.0, 0.1]) - 1.0) / beta)  # exp(r_c/beta) scaled by its max: same optimum, O(1) loss
    opt = crlft_optimum(D, w, conditioned=conditioned)
    pol = tabular_policy(X * C if conditioned else X, K, seed=seed)
    _, chk, bound = fit_and_check(opt, pol, crlft_loss_closure(pol, D, w, conditioned=conditioned))
    _assert_ok(chk, bound)
    if conditioned:  # the weights cancel: the same optimum as with equal weights
        _assert_ok(
            crlft_optimum(D, [1.0, 1.0], conditioned=True).check(log_probs=pol.log_probs_table().detach(), tol=bound),
            bound,
        )
