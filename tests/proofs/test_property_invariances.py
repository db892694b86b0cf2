"""Structural properties (THEORY.md "Properties worth a Hypothesis test") and non-existence.

Invariances are checked on the library's loss values (exact up to float64 rounding: 1e-12 relative),
monotonicity and limits on the closed forms, non-existence on gradient-descent runs of the library's
dpo_loss / orpo_loss.
"""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit

from mdpalign.envs.bandits import k_armed_bandit, preference_pairs, random_contextual_bandit
from mdpalign.harness.offline import (
    certified_logit_error,
    crlft_loss_closure,
    dpo_loss_closure,
    fit_tabular,
    kl_rl_loss_closure,
    orpo_loss_closure,
    sft_loss_closure,
    tabular_policy,
)
from mdpalign.proofs import dpo_optimum, greedy_limit, kl_rl_optimum, orpo_two_arm_root
from mdpalign.testing.strategies import seeds


def _kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


@settings(max_examples=50)
@given(seed=seeds, X=st.integers(1, 3), K=st.integers(2, 5), beta=st.floats(0.1, 5.0))
def test_every_loss_is_invariant_to_a_per_state_logit_shift(seed, X, K, beta):
    """THEORY: every loss is invariant to theta_x -> theta_x + c(x) (the policy does not change);
    parameter MSE is NOT — a reason to distrust it as a metric."""
    b = random_contextual_bandit(X, K, seed=seed)
    W = preference_pairs(b, labels="bt").weight_table()
    D = np.random.default_rng(seed).dirichlet(np.ones(2 * K), size=X).reshape(X, 2, K)
    pol = tabular_policy(X, K, seed=seed, init_scale=1.0)
    losses = {
        "sft": sft_loss_closure(pol, D.sum(1)),
        "dpo": dpo_loss_closure(pol, b.ref_policy, W, beta),
        "ipo": dpo_loss_closure(pol, b.ref_policy, W, beta, "ipo"),
        "hinge": dpo_loss_closure(pol, b.ref_policy, W, beta, "hinge"),
        "orpo": orpo_loss_closure(pol, W, 0.5),
        "crlft": crlft_loss_closure(pol, D, [1.0, 0.3], conditioned=False),
        "kl_rl": kl_rl_loss_closure(pol, b.ref_policy, b.rewards, beta),
    }
    before = {k: float(f()) for k, f in losses.items()}
    theta0 = pol.logits.detach().clone()
    shift = torch.tensor(np.random.default_rng(seed + 1).normal(scale=3.0, size=(X, 1)))
    with torch.no_grad():
        pol.logits.add_(shift)
    for k, f in losses.items():
        assert abs(float(f()) - before[k]) <= 1e-12 * max(1.0, abs(before[k])), k
    mse = float(((pol.logits.detach() - theta0) ** 2).mean())
    assert mse > 0  # the parameters moved although nothing the losses see did


@settings(max_examples=50)
@given(seed=seeds, X=st.integers(1, 3), K=st.integers(2, 6), beta=st.floats(0.05, 10.0), c=st.floats(0.1, 10.0))
def test_kl_rl_optimum_depends_on_r_over_beta_and_ignores_r_plus_c(seed, X, K, beta, c):
    """THEORY: optima depend on r/beta only, and r + c(x) leaves them unchanged (KL-RL and DPO-BT:
    BT probabilities see only reward differences, so the preference data are identical)."""
    b = random_contextual_bandit(X, K, seed=seed)
    base = kl_rl_optimum(b.rewards, b.ref_policy, beta).policy
    scaled = kl_rl_optimum(c * b.rewards, b.ref_policy, c * beta).policy
    shifted_r = b.rewards + np.random.default_rng(seed).normal(scale=5.0, size=(X, 1))
    shifted = kl_rl_optimum(shifted_r, b.ref_policy, beta).policy
    np.testing.assert_allclose(scaled, base, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(shifted, base, rtol=1e-10, atol=1e-14)
    from mdpalign.envs.bandits import ContextualBandit

    b2 = ContextualBandit(shifted_r, b.ref_policy, b.context_probs)
    d1 = dpo_optimum(b.ref_policy, preference_pairs(b), beta).policy
    d2 = dpo_optimum(b.ref_policy, preference_pairs(b2), beta).policy
    np.testing.assert_allclose(d1, d2, atol=1e-10)


@settings(max_examples=30)
@given(seed=seeds, K=st.integers(3, 5), beta=st.floats(0.3, 3.0))
def test_trained_dpo_is_permutation_equivariant(seed, K, beta):
    """THEORY: permutation equivariance over arms — relabelling the arms in data and reference
    relabels the trained optimum (library dpo_loss, L-BFGS to ||grad|| <= 1e-8). Tolerance: each run's
    pairwise log-probability differences are within its own certified 4||grad||/mu of the optimum's
    (mdpalign.harness.offline.certified_logit_error, one structural null direction: the logit shift),
    so the two runs' differences agree within the sum of the two bounds.
    """
    b = k_armed_bandit(K, seed=seed)
    W = preference_pairs(b).weight_table()
    perm = np.random.default_rng(seed).permutation(K)
    Wp = W[:, perm][:, :, perm]
    refp = b.ref_policy[:, perm]
    out, bounds = [], []
    for ref, w in ((b.ref_policy, W), (refp, Wp)):
        pol = tabular_policy(1, K, seed=seed)
        loss = dpo_loss_closure(pol, ref, w, beta)
        fit_tabular(pol, loss, tol=1e-8)
        bounds.append(certified_logit_error(loss, pol, null_dim=1)[0])
        out.append(pol.log_probs_table().detach().numpy()[0])
    d1 = out[1][:, None] - out[1][None, :]
    d0 = out[0][perm][:, None] - out[0][perm][None, :]
    assert np.abs(d1 - d0).max() <= bounds[0] + bounds[1]
    assert bounds[0] + bounds[1] < 1e-4  # the certificate is tight enough for the check to mean something


@settings(max_examples=50)
@given(seed=seeds, K=st.integers(2, 6), betas=st.lists(st.floats(0.01, 50.0), min_size=2, max_size=6, unique=True))
def test_kl_and_expected_reward_non_increasing_in_beta(seed, K, betas):
    """THEORY KL-RL: KL(pi*_beta || pi_ref) and E_{pi*_beta}[r] are non-increasing in beta
    (d/dt E_t r = Var_t r >= 0, d/dt KL = t Var_t r >= 0 with t = 1/beta). Slack 1e-12 for rounding."""
    b = k_armed_bandit(K, seed=seed)
    kls, ers = [], []
    for beta in sorted(betas):
        p = kl_rl_optimum(b.rewards, b.ref_policy, beta).policy[0]
        kls.append(_kl(p, b.ref_policy[0]))
        ers.append(p @ b.rewards[0])
    assert all(a >= c - 1e-12 for a, c in zip(kls, kls[1:]))
    assert all(a >= c - 1e-12 for a, c in zip(ers, ers[1:]))


@settings(max_examples=50)
@given(seed=seeds, K=st.integers(2, 6))
def test_beta_limits_greedy_and_reference(seed, K):
    """THEORY KL-RL limits: beta -> 0 gives the greedy policy (ties broken by pi_ref), beta -> inf gives
    pi_ref. Rates: the non-greedy mass is <= exp(-gap/beta)/ref_min, and |pi* - pi_ref| <= (e^{range/beta} - 1)."""
    b = k_armed_bandit(K, seed=seed)
    r = b.rewards[0]
    gap = np.sort(r)[-1] - np.sort(r)[-2]
    beta0 = gap / 40.0
    p0 = kl_rl_optimum(b.rewards, b.ref_policy, beta0).policy
    assert np.abs(p0 - greedy_limit(b.rewards, b.ref_policy)).max() <= K * np.exp(-40.0) / b.ref_policy.min() + 1e-15
    big = 1e6 * (r.max() - r.min())
    pinf = kl_rl_optimum(b.rewards, b.ref_policy, big).policy
    assert np.abs(pinf - b.ref_policy).max() <= np.expm1((r.max() - r.min()) / big) + 1e-15


@settings(max_examples=50)
@given(q=st.floats(0.05, 0.95))
def test_orpo_lambda_to_zero_recovers_sft(q):
    """THEORY limits lambda -> 0: the ORPO two-arm optimum tends to SFT's logit(q) (rate O(lambda)).
    Bound: the root equation sigma(u) + 2 lam sigma(2u) = q(1 + 2 lam) reads sigma(u) - q = 2 lam (q - sigma(2u));
    by the mean value theorem sigma(u) - sigma(logit q) = sigma'(xi)(u - logit q) with xi between u and logit q,
    and u lies between logit(q)/2 and logit(q) (test_proofs_closed_forms), so |xi| <= |logit q| and
    sigma'(xi) >= q(1 - q): |u - logit q| <= 2 lam |q - sigma(2u)| / (q(1 - q)) < 2 lam / (q(1 - q)).
    1e-12 covers the root finder's rounding."""
    for lam in (1e-3, 1e-5):
        u = orpo_two_arm_root(q, lam)
        assert abs(u - logit(q)) <= 2 * lam * abs(q - expit(2 * u)) / (q * (1 - q)) + 1e-12


# ----------------------------------------------------------------------------------- non-existence


def _gd(pol, loss_fn, lr, steps, record):
    out = []
    for t in range(1, steps + 1):
        pol.logits.grad = None
        L = loss_fn()
        L.backward()
        with torch.no_grad():
            pol.logits -= lr * pol.logits.grad
        if t in record:
            out.append((t, float(L)))
    return out


@settings(max_examples=5)
@given(seed=seeds, beta=st.floats(0.5, 2.0))
def test_dpo_deterministic_gap_grows_like_log_steps_over_beta(seed, beta):
    """THEORY DPO deterministic: no finite minimiser; the loss decreases strictly at every GD step, the
    loser's probability -> 0 and the logit gap Delta grows like log(steps)/beta. For one pair, GD with
    step eta on theta follows dDelta/dt = 2 eta beta sigma(-beta Delta), whose solution satisfies
    beta Delta + e^{beta Delta} = 2 eta beta^2 t + const: we check Delta(t2) against that prediction from
    Delta(t1) (forward-Euler error of the discrete steps: < 2% at these step sizes)."""
    ref = np.random.default_rng(seed).dirichlet([2.0, 2.0])[None]
    W = np.array([[[0.0, 1.0], [0.0, 0.0]]])  # arm 0 always wins
    pol = tabular_policy(1, 2, seed=seed)
    L = dpo_loss_closure(pol, ref, W, beta)
    eta = 0.5
    losses, gaps = [], {}
    for t in range(1, 4001):
        pol.logits.grad = None
        loss = L()
        loss.backward()
        losses.append(float(loss))
        with torch.no_grad():
            pol.logits -= eta * pol.logits.grad
        if t in (400, 4000):
            th = pol.logits.detach().numpy()[0]
            gaps[t] = (th[0] - th[1]) - np.log(ref[0, 0] / ref[0, 1])  # g_w - g_l
    assert all(b < a for a, b in zip(losses, losses[1:])), "loss must decrease at every step"
    d1 = gaps[400]
    const = beta * d1 + np.exp(beta * d1) - 2 * eta * beta**2 * 400
    target = 2 * eta * beta**2 * 4000 + const  # solve beta D + e^{beta D} = target for D
    D = np.log(target) / beta
    for _ in range(50):
        D = (np.log(target - beta * D)) / beta
    assert abs(gaps[4000] - D) <= 0.02 * (gaps[4000] - d1)
    assert abs((gaps[4000] - d1) - np.log(10) / beta) <= 0.25 * np.log(10) / beta  # ~ log(steps)/beta


def test_orpo_single_pair_has_no_stationary_point():
    """THEORY ORPO one chosen / one rejected: dL/dtheta_c < 0 everywhere (no stationary point),
    GD decreases the loss at every step and pi -> delta_c."""
    rng = np.random.default_rng(0)
    W = np.zeros((1, 3, 3))
    W[0, 0, 1] = 1.0
    for _ in range(50):
        pol = tabular_policy(1, 3, seed=int(rng.integers(1 << 30)), init_scale=3.0)
        orpo_loss_closure(pol, W, 0.7)().backward()
        assert pol.logits.grad[0, 0] < 0
    pol = tabular_policy(1, 3, seed=1)
    L = orpo_loss_closure(pol, W, 0.7)
    rec = _gd(pol, L, 1.0, 3000, set(range(1, 3001)))
    vals = [v for _, v in rec]
    assert all(b < a for a, b in zip(vals, vals[1:]))
    assert pol.probs()[0, 0].item() > 0.999


@settings(max_examples=5)
@given(seed=seeds, K=st.integers(3, 5))
def test_dpo_deterministic_limit_policy_reached(seed, K):
    """THEORY DPO deterministic, all pairs: the limit is delta on the best arm. L-BFGS to ||grad|| <= 1e-6:
    the loser-vs-best term contributes beta sigma(-beta Delta) ~ beta pi_l/pi_best to the loser's gradient,
    so each loser keeps mass <= ||grad||·K/(beta w_min) — the tolerance used."""
    b = k_armed_bandit(K, seed=seed, reward_scale=2.0)
    data = preference_pairs(b, labels="deterministic")
    opt = dpo_optimum(b.ref_policy, data, 1.0)
    pol = tabular_policy(1, K, seed=seed)
    res = fit_tabular(pol, dpo_loss_closure(pol, b.ref_policy, data.weight_table(), 1.0), tol=1e-6, max_iter=3000)
    tol = res.grad_norm * K / data.weight.min() / b.ref_policy.min()
    chk = opt.check(log_probs=pol.log_probs_table().detach(), tol=tol)
    assert chk.ok, chk.detail
