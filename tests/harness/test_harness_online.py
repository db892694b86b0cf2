"""The online harness: exact expected updates vs Monte Carlo, the effective-advantage form, certified fixed points
against closed forms computed here independently (numpy / scipy), collapse of the unregularised placements, trees,
sampled mode. THEORY.md's 4-arm example: r = [1, .5, .2, 0], pi_ref = [.1, .2, .3, .4], β = .5."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from mdpalign.envs.token_tree import random_token_tree
from mdpalign.fit import fit
from mdpalign.harness.online import (
    METHODS,
    FixedPointError,
    HarnessError,
    MethodSpec,
    bandit_problem,
    bradley_terry_loss_closure,
    certify_fixed_point,
    exact_flow,
    expected_update,
    initial_params,
    method_spec,
    null_space_complement,
    sampled_gradients,
    solve_fixed_point,
    split_params,
    train_sampled,
    tree_problem,
)

f64 = torch.float64
R4, REF4, BETA4 = np.array([1.0, 0.5, 0.2, 0.0]), np.array([0.1, 0.2, 0.3, 0.4]), 0.5


@pytest.fixture(scope="module")
def theory_bandit():
    return bandit_problem([R4], [REF4], BETA4)


@pytest.fixture(scope="module")
def two_context_bandit():
    return bandit_problem([[1.0, 0.5, 0.2, 0.0], [0.0, 0.3, 0.9, 0.1]],
                          [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], 0.5, context_probs=[0.3, 0.7])


@pytest.fixture(scope="module")
def small_tree():
    return random_token_tree(3, 2, seed=0)  # 10 prefixes, 7 leaves, 3 decision states


def _gibbs(r, ref, beta):
    w = ref * np.exp(r / beta)
    return w / w.sum()


def _max_log_error(log_probs_row, target):
    return float(np.abs(log_probs_row - np.log(target)).max())


# ------------------------------------------------------------------ (1) exact expected update == Monte-Carlo mean

MC_METHODS = [("reinforce", {}), ("reinforce_baseline", {}), ("rloo", {}), ("remax", {}), ("ppo_clip", {"epochs": 1}),
              ("ppo_critic", {"epochs": 1}), ("grpo", {"group_size": 3}), ("grpo_trl", {"group_size": 3}),
              ("grpo_bias_corrected", {"group_size": 3}), ("dr_grpo", {"group_size": 3}),
              *[(f"kl_{e}_{p}", {}) for e in ("k1", "k2", "k3") for p in ("reward", "loss", "loss_is")]]


def _assert_mc_matches(problem, spec, params, n, seed):
    """Mean of n sampled-batch gradients vs the exact field, coordinate by coordinate. With d coordinates the
    threshold z solves d·P(|Z| > z) = 1e-6 (Bonferroni over the CLT normal approximation), so a correct
    implementation fails for a given seed with probability < 1e-6 under the CLT; the seeds are fixed, so the test is
    deterministic. Coordinates with zero sample variance (unused states) must agree to rounding (1e-12)."""
    exact = expected_update(problem, spec, params)
    g = sampled_gradients(problem, spec, params, n, torch.Generator().manual_seed(seed))
    mean, se = g.mean(0), g.std(0) / math.sqrt(n)
    z = norm.isf(1e-6 / (2 * exact.numel()))
    live = se > 0
    assert bool(((mean - exact)[live].abs() <= z * se[live]).all()), \
        f"{spec.name}: max |z| = {float(((mean - exact)[live] / se[live]).abs().max()):.2f} > {z:.2f}"
    if bool((~live).any()):
        assert float((mean - exact)[~live].abs().max()) <= 1e-12
    assert float(exact.norm()) > 1e-3  # not a vacuous comparison at a fixed point


@pytest.mark.parametrize("name, opts", MC_METHODS, ids=[m for m, _ in MC_METHODS])
def test_exact_update_is_the_monte_carlo_mean_on_a_bandit(two_context_bandit, name, opts):
    spec = method_spec(name, **opts)
    params = initial_params(two_context_bandit, spec, start="random", seed=3)
    _assert_mc_matches(two_context_bandit, spec, params, n=4000, seed=11)


@pytest.mark.parametrize("name, opts", [("kl_k2_loss", {}), ("ppo_critic", {"epochs": 1}), ("grpo", {"group_size": 2}),
                                        ("rloo", {"loss_type": "grpo"})])
def test_exact_update_is_the_monte_carlo_mean_on_a_tree(small_tree, name, opts):
    problem = tree_problem(small_tree, 0.5)
    spec = method_spec(name, **opts)
    params = initial_params(problem, spec, start="random", seed=5)
    _assert_mc_matches(problem, spec, params, n=4000, seed=12)


# ------------------------------------------------------------------ (2) the effective-advantage form (THEORY.md)


@pytest.mark.parametrize("name, opts", [("reinforce", {}), ("reinforce_baseline", {}), ("rloo", {}),
                                        ("rloo", {"group_size": 4}), ("remax", {}), ("ppo_clip", {"epochs": 1}),
                                        ("kl_k1_reward", {})])
def test_expected_ascent_is_pi_times_centred_effective_advantage(two_context_bandit, name, opts):
    problem = two_context_bandit
    spec = method_spec(name, **opts)
    params = initial_params(problem, spec, start="random", seed=7)
    theta, _ = split_params(problem, spec, params)
    pi = torch.softmax(theta, -1)
    a = problem.rewards - problem.beta * (torch.log(pi) - problem.ref_log_probs)   # A = r − β·h
    mu = problem.context_probs[:, None]
    ascent = mu * pi * (a - (pi * a).sum(-1, keepdim=True))
    torch.testing.assert_close(-expected_update(problem, spec, params).reshape(2, 4), ascent, rtol=0, atol=1e-14)


# ------------------------------------------------------------------ (3) certified fixed points vs closed forms

GIBBS_METHODS = [("reinforce", {}), ("reinforce_baseline", {}), ("rloo", {}), ("remax", {}), ("ppo_clip", {}),
                 ("ppo_critic", {}), ("kl_k1_reward", {}), ("kl_k2_loss", {}), ("kl_k1_loss_is", {}),
                 ("kl_k3_loss_is", {})]


@pytest.mark.parametrize("name, opts", GIBBS_METHODS, ids=[m for m, _ in GIBBS_METHODS])
def test_unbiased_placements_land_on_gibbs(theory_bandit, name, opts):
    spec = method_spec(name, **opts)
    res = solve_fixed_point(theory_bandit, spec)
    assert spec.fixed_point == "gibbs"
    target = _gibbs(R4, REF4, BETA4)  # [.3469, .2552, .2101, .1878]
    assert _max_log_error(res.log_probs[0].numpy(), target) <= res.certificate.log_prob_bound
    assert res.certificate.log_prob_bound < 1e-8
    assert res.certificate.min_real_eigenvalue > 0  # an attracting fixed point of the training flow


def test_k3_as_a_loss_lands_on_the_reverse_kl_point(theory_bandit):
    res = solve_fixed_point(theory_bandit, method_spec("kl_k3_loss"))
    # pi = β·ref/(λ − r), λ > max r with Σ pi = 1 (a scalar root, independent of the library)
    lam = brentq(lambda l: (BETA4 * REF4 / (l - R4)).sum() - 1.0, R4.max() + 1e-12, R4.max() + 100.0, xtol=1e-15)
    target = BETA4 * REF4 / (lam - R4)
    assert _max_log_error(res.log_probs[0].numpy(), target) <= res.certificate.log_prob_bound + 1e-12
    assert np.abs(res.probs[0].numpy() - [0.4866, 0.1659, 0.1662, 0.1814]).max() <= 5e-5  # THEORY.md, 4 decimals
    assert _max_log_error(res.log_probs[0].numpy(), _gibbs(R4, REF4, BETA4)) > 0.1  # and it is not Gibbs


def _group_advantage_of_arm(pi, r, G, scale="group", eps=1e-4):
    """P_G(y|pi) = E[A_1 | y_1 = y] over the G − 1 other draws, numpy, TRL's advantage (Bessel std + eps)."""
    K = len(pi)
    out = np.zeros(K)
    for y in range(K):
        for rest in itertools.product(range(K), repeat=G - 1):
            rs = r[[y, *rest]]
            w = np.prod(pi[list(rest)])
            a = rs[0] - rs.mean()
            if scale == "group":
                a = a / (rs.std(ddof=1) + eps)
            out[y] += w * a
    return out


@pytest.mark.parametrize("G, theory", [(2, [0.4499, 0.1798, 0.1843, 0.1860]), (4, [0.6911, 0.0850, 0.1014, 0.1225])])
def test_grpo_fixed_point_is_vojnovic_yun(theory_bandit, G, theory):
    res = solve_fixed_point(theory_bandit, method_spec("grpo", group_size=G))
    pi = res.probs[0].numpy()
    eps_lp = res.certificate.log_prob_bound
    # Closed form pi = ref/(1 − P_G(y|pi)/β) evaluated at the certified pi: if |log pi − log pi*| <= ε, then
    # |log rhs(pi) − log pi*| <= L·ε with L = max|A|·(G−1)/(β − max P_G) (∂P_G/∂log pi is an average of advantages
    # times the G − 1 other draws' log-prob changes; |A| <= (G−1)/√G for the std-normalised advantage).
    p_g = _group_advantage_of_arm(pi, R4, G)
    rhs = REF4 / (1.0 - p_g / BETA4)
    lip = (G - 1) / math.sqrt(G) * (G - 1) / (BETA4 - p_g.max())
    assert float(np.abs(np.log(rhs) - np.log(pi)).max()) <= (1 + lip) * eps_lp + 1e-12
    assert np.abs(pi - theory).max() <= 5e-5  # THEORY.md's numbers, to their 4 decimals
    assert abs((pi * p_g).sum()) < 1e-12  # E_pi P_G = 0


def test_grpo_with_the_unbiased_kl_is_gibbs_on_the_group_advantage(theory_bandit):
    # TRL 1.16's default (k3·ρ, dapo; one token per response, so dapo = mean): ∇KL(pi‖ref) with the GRPO advantage
    # -> pi ∝ ref·exp(P_G(y|pi)/β); log rhs has Lipschitz constant 2·max|A|·(G−1)/β in log pi (the log Z term twice).
    G = 4
    res = solve_fixed_point(theory_bandit, method_spec("grpo_trl", group_size=G))
    pi = res.probs[0].numpy()
    p_g = _group_advantage_of_arm(pi, R4, G)
    rhs = _gibbs(p_g, REF4, BETA4)
    lip = 2 * (G - 1) / math.sqrt(G) * (G - 1) / BETA4
    assert float(np.abs(np.log(rhs) - np.log(pi)).max()) <= (1 + lip) * res.certificate.log_prob_bound + 1e-12
    assert _max_log_error(np.log(pi), _gibbs(R4, REF4, BETA4)) > 0.1  # not the KL-regularised optimum


@pytest.mark.parametrize("G", [2, 3, 4])
def test_dr_grpo_is_gibbs_at_temperature_beta_g_over_g_minus_1(theory_bandit, G):
    res = solve_fixed_point(theory_bandit, method_spec("dr_grpo", group_size=G))
    target = _gibbs(R4, REF4, BETA4 * G / (G - 1))
    assert _max_log_error(res.log_probs[0].numpy(), target) <= res.certificate.log_prob_bound


def test_k2_importance_corrected_is_the_second_moment_point_not_gibbs(theory_bandit):
    # ∇E_pi[h²/2]: effective advantage r − β(h²/2 + h) constant on the support -> h = −1 + sqrt(1 + 2(r − c)/β)
    res = solve_fixed_point(theory_bandit, method_spec("kl_k2_loss_is"))
    h_of = lambda c: -1.0 + np.sqrt(1.0 + 2.0 * (R4 - c) / BETA4)  # noqa: E731
    c = brentq(lambda c: (REF4 * np.exp(h_of(c))).sum() - 1.0, R4.min() - 50.0, R4.min() + BETA4 / 2, xtol=1e-15)
    target = REF4 * np.exp(h_of(c))
    assert _max_log_error(res.log_probs[0].numpy(), target) <= res.certificate.log_prob_bound + 1e-12
    assert _max_log_error(res.log_probs[0].numpy(), _gibbs(R4, REF4, BETA4)) > 0.1


def test_certificate_bounds_the_true_error_near_a_fixed_point(theory_bandit):
    spec = method_spec("grpo", group_size=2)
    star = solve_fixed_point(theory_bandit, spec)
    Q = null_space_complement(theory_bandit, spec)
    for seed in range(3):
        delta = 1e-4 * torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=f64)
        p = star.params + delta
        cert = certify_fixed_point(theory_bandit, spec, p)
        true_logit = float((Q @ (Q.T @ (p - star.params))).norm())
        true_lp = float((torch.log_softmax(p, 0) - star.log_probs[0]).abs().max())
        assert true_logit <= cert.logit_bound and true_lp <= cert.log_prob_bound
        assert cert.logit_bound < 10 * true_logit  # and it is not vacuous (2/σ_min-type slack only)


# ------------------------------------------------------------------ (4) no interior fixed point: what they tend to


def test_k1_as_a_loss_tends_to_the_argmax(theory_bandit):
    spec = method_spec("kl_k1_loss")
    flow = exact_flow(theory_bandit, spec, steps=600, lr=1.0, record_every=100)
    top = torch.softmax(flow.params, -1)[:, 0].tolist()
    assert all(b > a for a, b in zip(top, top[1:])) and top[-1] > 0.99
    with pytest.raises(FixedPointError):
        solve_fixed_point(theory_bandit, spec, max_iter=10, max_flow_rounds=2)


@pytest.mark.parametrize("start", ["ref", "uniform", "gibbs"])
def test_k3_in_the_reward_collapses_with_a_linearly_growing_gap(theory_bandit, start):
    spec = method_spec("kl_k3_reward")
    p0 = (torch.tensor(np.log(_gibbs(R4, REF4, BETA4)), dtype=f64) if start == "gibbs"
          else initial_params(theory_bandit, spec, start=start))
    flow = exact_flow(theory_bandit, spec, steps=300, lr=1.0, params0=p0, record_every=100)
    p = flow.params
    assert torch.softmax(p[-1], 0)[0].item() > 1 - 1e-12
    gap = (p[:, 0] - p[:, 1:].max(-1).values).tolist()
    # drift of the vanishing arms tends to β·pi_ref (constant): the gap grows linearly, the field does not vanish
    assert gap[3] - gap[2] == pytest.approx(gap[2] - gap[1], rel=1e-2) and gap[3] - gap[2] > 10
    assert flow.residuals[-1] > 0.05


def test_k2_in_the_reward_collapses_onto_a_face(theory_bandit):
    flow = exact_flow(theory_bandit, method_spec("kl_k2_reward"), steps=1000, lr=1.0, record_every=500)
    pi = torch.softmax(flow.params, -1)
    # arms that drop below pi_ref get advantage r − β·h²/2 → −∞ and keep falling
    assert pi[-1, 2].item() < 1e-3 and pi[-1, 3].item() < 1e-3
    assert pi[-1, 2].item() < pi[1, 2].item() and pi[-1, 3].item() < pi[1, 3].item()


# ------------------------------------------------------------------ (5) token trees


def _soft_optimum(tree, beta):
    """pi*(a|s) = ref·exp((V(s·a) − V(s))/β), V(leaf) = r — the backward recursion, written here."""
    ref = np.exp(tree.ref_log_probs)
    V = np.zeros(tree.n_prefixes)
    V[tree.leaf_prefixes] = tree.leaf_rewards
    pi = np.full(ref.shape, np.nan)
    for s in np.argsort(-tree.depth, kind="stable"):
        if tree.is_complete[s]:
            continue
        q = V[tree.children[s]]
        V[s] = beta * np.log((ref[s] * np.exp(q / beta)).sum())
        pi[s] = ref[s] * np.exp((q - V[s]) / beta)
    return pi, V


def _myopic_optimum(tree, beta):
    """pi(a|s) ∝ ref·exp(Q_r(s,a)/β), Q_r the reward-only value under pi below s (per-token local KL)."""
    ref = np.exp(tree.ref_log_probs)
    Qv = np.zeros(tree.n_prefixes)  # E_pi[r | prefix]
    Qv[tree.leaf_prefixes] = tree.leaf_rewards
    pi = np.full(ref.shape, np.nan)
    for s in np.argsort(-tree.depth, kind="stable"):
        if tree.is_complete[s]:
            continue
        q = Qv[tree.children[s]]
        w = ref[s] * np.exp(q / beta)
        pi[s] = w / w.sum()
        Qv[s] = (pi[s] * q).sum()
    return pi


@pytest.mark.parametrize("name, opts", [("kl_k1_reward", {}), ("rloo", {}), ("ppo_critic", {"epochs": 1})])
def test_sequence_kl_in_the_reward_recovers_the_soft_optimum(small_tree, name, opts):
    problem = tree_problem(small_tree, 0.5)
    res = solve_fixed_point(problem, method_spec(name, **opts))
    used = problem.used_states.numpy()
    pi_star, V = _soft_optimum(small_tree, 0.5)
    err = np.abs(res.log_probs.numpy()[used] - np.log(pi_star[used])).max()
    assert err <= res.certificate.log_prob_bound
    if res.values is not None:  # the critic converges to the soft value of every decision state
        assert np.abs(res.values.numpy()[used] - V[used]).max() <= res.certificate.logit_bound


@pytest.mark.parametrize("name", ["kl_k2_loss", "kl_k3_loss_is"])
def test_per_token_kl_loss_is_myopic_on_a_tree(small_tree, name):
    problem = tree_problem(small_tree, 0.5)
    res = solve_fixed_point(problem, method_spec(name))
    used = problem.used_states.numpy()
    lp = res.log_probs.numpy()[used]
    assert np.abs(lp - np.log(_myopic_optimum(small_tree, 0.5)[used])).max() <= res.certificate.log_prob_bound
    assert np.abs(lp - np.log(_soft_optimum(small_tree, 0.5)[0][used])).max() > 1e-2


# ------------------------------------------------------------------ (6) sampled mode


def test_sampled_training_is_deterministic_and_wired_to_the_sampled_gradient(two_context_bandit):
    spec = method_spec("rloo")
    a = train_sampled(two_context_bandit, spec, steps=20, seed=4, lr=0.3)
    b = train_sampled(two_context_bandit, spec, steps=20, seed=4, lr=0.3)
    c = train_sampled(two_context_bandit, spec, steps=20, seed=5, lr=0.3)
    assert torch.equal(a.params, b.params) and not torch.equal(a.params, c.params)
    p0 = initial_params(two_context_bandit, spec)
    g = sampled_gradients(two_context_bandit, spec, p0, 1, torch.Generator().manual_seed(4))[0]
    one = train_sampled(two_context_bandit, spec, steps=1, seed=4, lr=0.3)
    torch.testing.assert_close(one.params[1], p0 - 0.3 * g, rtol=0, atol=1e-15)
    assert a.probs.shape == (21, 2, 4) and torch.allclose(a.probs.sum(-1), torch.ones(21, 2, dtype=f64))


# ------------------------------------------------------------------ (7) registry, options, reward model


def test_registry_names_and_options():
    assert all(name == spec.name for name, spec in METHODS.items())
    assert {f"kl_{e}_{p}" for e in ("k1", "k2", "k3") for p in ("reward", "loss", "loss_is")} <= set(METHODS)
    with pytest.raises(HarnessError, match="unknown method 'ppo2'"):
        method_spec("ppo2")
    with pytest.raises(HarnessError, match="unknown option\\(s\\) \\['group'\\]"):
        method_spec("grpo", group=2)
    with pytest.raises(HarnessError, match="needs group_size >= 2"):
        method_spec("rloo", group_size=1)
    with pytest.raises(HarnessError, match="unknown loss_type"):
        MethodSpec("x", loss_type="token-mean")


def test_exact_mode_refuses_huge_enumerations(theory_bandit):
    spec = method_spec("grpo", group_size=9)  # 4^9 = 262144 groups
    with pytest.raises(HarnessError, match="MAX_EXACT_BATCHES"):
        expected_update(theory_bandit, spec, initial_params(theory_bandit, spec))


def test_bradley_terry_margin_shifts_the_two_arm_mle():
    # 3 wins to 1 with margin m = 1: n_w·σ(m − Δ) = n_l·σ(Δ + m) (THEORY.md: Δ ≈ 1.78, not log 3)
    scores = torch.zeros(1, 2, dtype=f64, requires_grad=True)
    wins = np.array([[[0.0, 3.0], [1.0, 0.0]]])
    fit(scores, bradley_terry_loss_closure(scores, wins, margin=1.0), tol=1e-12, max_iter=200,
        require_convergence=True)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    delta = brentq(lambda d: 3 * sig(1 - d) - sig(d + 1), -10, 10, xtol=1e-15)
    assert (scores[0, 0] - scores[0, 1]).item() == pytest.approx(delta, abs=1e-9)
    assert delta == pytest.approx(1.78, abs=5e-3) and abs(delta - math.log(3)) > 0.6
