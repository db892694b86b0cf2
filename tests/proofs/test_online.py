"""Fixed points of online RL, best-of-n, Nash-MD, reward models and the RLHF pipeline (mdpalign.proofs),
each checked against a route that shares no code with it.

The main independent route is the exact expected-update flow: ``theta' = pi ⊙ (A - E_pi A)`` with the
effective advantage ``A`` computed here by explicit enumeration (finite differences of the estimators
for the KL terms, all groups for GRPO, all leaves for token trees), integrated with scipy's
``solve_ivp`` from several starts. Tolerances:

* ``EXACT = 1e-11``: two exact float64 routes, rounding only.
* Flow endpoints: :func:`_flow_tolerance` — the first-order distance ``||J^+ F||_inf`` from the endpoint
  to the fixed point (``J`` the field's Jacobian by central differences, ``F`` the field), times 2 for
  the log-softmax (its Jacobian rows have l1 norm <= 2) and 2 for slack, plus 1e-10 for rounding.
* Printed 4-digit numbers (THEORY.md): half a unit in the last digit, 5e-5.
numpy/scipy only; a separate test asserts that ``mdpalign.proofs`` does not import torch.
"""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from scipy.special import expit, logsumexp, softmax

from mdpalign.envs.token_tree import random_token_tree
from mdpalign.proofs import (
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    FlowLimit,
    NoClosedFormError,
    NoFiniteOptimum,
    PinnedDifferences,
    ProofInputError,
    UniqueOptimum,
    best_of_n_kl,
    best_of_n_kl_bound,
    best_of_n_policy,
    best_of_n_win_rate,
    bradley_terry_reward_optimum,
    bradley_terry_two_arm_margin,
    dpo_optimum,
    grpo_expected_advantage,
    grpo_optimum,
    k3_loss_optimum,
    kl_estimator_optimum,
    kl_expected_update,
    kl_rl_optimum,
    nash_md_fixed_point,
    nash_md_iterate,
    pipeline_offsets_of,
    raft_iterates,
    raft_limit,
    regularised_nash_optimum,
    reward_model_loss,
    rlhf_pipeline_optimum,
    token_tree_local_kl_optimum,
    token_tree_optimum,
)

EXACT = 1e-11
PRINTED = 5e-5
R4 = np.array([1.0, 0.5, 0.2, 0.0])  # THEORY.md's 4-arm example
Q4 = np.array([0.1, 0.2, 0.3, 0.4])

# ----------------------------------------------------------------------------------- helpers (independent)


def _estimator(name, h):
    return {"k1": h, "k2": h * h / 2, "k3": np.exp(-h) + h - 1}[name]


def _kl_field_fd(r, q, beta, est, placement):
    """Expected ascent direction on the logits, from the estimator's *value* only (central differences
    for its derivative: no use of the k_eff table under test)."""

    def penalty_grad(theta):
        # gradient of the per-placement penalty, averaged over y ~ pi (pi detached where the sampler is)
        p_old = softmax(theta)
        eps = 1e-6
        g = np.zeros_like(theta)
        for k in range(len(theta)):
            vals = []
            for sgn in (1, -1):
                th = theta.copy()
                th[k] += sgn * eps
                lp = th - logsumexp(th)
                h = lp - np.log(q)
                if placement == "loss":
                    vals.append(p_old @ _estimator(est, h))
                else:  # loss_is: (pi / pi_old) k, pi_old detached
                    vals.append(p_old @ (np.exp(lp) / p_old * _estimator(est, h)))
            g[k] = (vals[0] - vals[1]) / (2 * eps)
        return g

    def field(theta):
        p = softmax(theta)
        lp = np.log(p)
        if placement == "reward":
            a = r - beta * _estimator(est, lp - np.log(q))
            return p * (a - p @ a)
        return p * (r - p @ r) - beta * penalty_grad(theta)

    return field


_ESTIMATOR_DERIVATIVE = {"k1": lambda h: np.ones_like(h), "k2": lambda h: h, "k3": lambda h: 1 - np.exp(-h)}


def _kl_field(r, q, beta, est, placement):
    """The same field with the estimators' derivatives written out by hand (smooth: for the ODE solver)."""

    def field(theta):
        lp = theta - logsumexp(theta)
        p = np.exp(lp)
        h = lp - np.log(q)
        k, dk = _estimator(est, h), _ESTIMATOR_DERIVATIVE[est](h)
        if placement == "reward":
            a = r - beta * k
        elif placement == "loss":  # E_pi[dk(h(y))/dtheta] = E_pi[k'(h) (e_y - pi)]
            a = r - beta * dk
        else:  # d/dtheta [pi(y)/pi_old(y) k(h(y))] = (k + k')(e_y - pi) at pi_old = pi
            a = r - beta * (k + dk)
        return p * (a - p @ a)

    return field


def _flow(field, theta0, T=400.0, method="DOP853"):
    sol = solve_ivp(lambda t, th: field(th), (0.0, T), theta0, method=method, rtol=1e-12, atol=1e-13)
    assert sol.status == 0, sol.message
    th = sol.y[:, -1]
    return th - logsumexp(th)


def _flow_tolerance(field, theta):
    """First-order distance bound from ``theta`` to the field's zero, in ``log pi`` units (module doc)."""
    F = field(theta)
    n = len(theta)
    J = np.zeros((n, n))
    e = 1e-6
    for k in range(n):
        d = np.zeros(n)
        d[k] = e
        J[:, k] = (field(theta + d) - field(theta - d)) / (2 * e)
    delta = np.linalg.lstsq(J, -F, rcond=1e-8)[0]
    delta -= delta.mean()  # the per-context shift is not a direction of the problem
    return 4 * np.abs(delta).max() + 1e-10


def _starts(K, seed):
    rng = np.random.default_rng(seed)
    return [np.full(K, 1.0 / K)] + [rng.dirichlet(np.ones(K)) for _ in range(2)]


# ----------------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("est", KL_ESTIMATORS)
@pytest.mark.parametrize("placement", KL_PLACEMENTS)
def test_effective_advantage_is_the_expected_update(est, placement):
    """Module table: the expected update of each estimator/placement is pi ⊙ (A - E A), A = r - beta k_eff.
    Route 2 differentiates the estimator *values* by central differences (eps = 1e-6: truncation
    eps^2 |k'''| / 6 <~ 1e-11, rounding ~ u |k| / eps ~ 1e-10 for these O(1) values) — tolerance 1e-8."""
    rng = np.random.default_rng(1)
    r, q, beta = rng.normal(size=4), rng.dirichlet(np.ones(4)), 0.7
    for _ in range(3):
        pi = rng.dirichlet(np.ones(4))
        ours = kl_expected_update(r, q, beta, est, placement, pi)[0]
        theirs = _kl_field_fd(r, q, beta, est, placement)(np.log(pi))
        np.testing.assert_allclose(ours, theirs, atol=1e-8)
        np.testing.assert_allclose(_kl_field(r, q, beta, est, placement)(np.log(pi)), theirs, atol=1e-8)


_POTENTIAL_F = {  # THEORY/module: the update ascends Phi = E r - beta E_pi f(h)
    ("k1", "reward"): lambda h, p, q: p @ (h - 1),
    ("k2", "reward"): lambda h, p, q: p @ (h * h / 2 - h + 1),
    ("k3", "reward"): lambda h, p, q: p @ h - q @ (-h) - 2,  # KL(pi||q) - KL(q||pi) - 2
    ("k1", "loss"): lambda h, p, q: 1.0,
    ("k2", "loss"): lambda h, p, q: p @ (h - 1),
    ("k3", "loss"): lambda h, p, q: 1 + q @ (-h),  # 1 + KL(q||pi)
    ("k1", "loss_is"): lambda h, p, q: p @ h,
    ("k2", "loss_is"): lambda h, p, q: p @ (h * h / 2),
    ("k3", "loss_is"): lambda h, p, q: p @ (h - 1),
}


@pytest.mark.parametrize("kind", sorted(_POTENTIAL_F))
def test_update_is_gradient_of_the_tabled_potential(kind):
    """Module table: the update equals d/dtheta [E r - beta E_pi f(h)] (central differences, tol as above)."""
    rng = np.random.default_rng(2)
    r, q, beta = rng.normal(size=5), rng.dirichlet(np.ones(5)), 0.4
    f = _POTENTIAL_F[kind]

    def phi(theta):
        p = softmax(theta)
        return p @ r - beta * f(np.log(p) - np.log(q), p, q)

    theta = rng.normal(size=5)
    e = 1e-6
    grad = np.array([(phi(theta + e * np.eye(5)[k]) - phi(theta - e * np.eye(5)[k])) / (2 * e) for k in range(5)])
    np.testing.assert_allclose(kl_expected_update(r, q, beta, *kind, softmax(theta))[0], grad, atol=1e-8)


def test_theory_numbers_gibbs_and_k3_loss():
    """THEORY 4-arm example: Gibbs [.3469 .2552 .2101 .1878], k3 as a loss [.4866 .1659 .1662 .1814]."""
    g = kl_estimator_optimum(R4, Q4, 0.5, "k1", "reward").policy[0]
    np.testing.assert_allclose(g, [0.3469, 0.2552, 0.2101, 0.1878], atol=PRINTED)
    k3 = kl_estimator_optimum(R4, Q4, 0.5, "k3", "loss")
    np.testing.assert_allclose(k3.policy[0], [0.4866, 0.1659, 0.1662, 0.1814], atol=PRINTED)
    lam = k3.extras["lambda"][0]
    np.testing.assert_allclose(k3.policy[0], 0.5 * Q4 / (lam - R4), atol=EXACT)
    assert lam > R4.max() and k3.extras["error_bound"][0] < 1e-12


@pytest.mark.parametrize(
    "kind", [("k1", "reward"), ("k2", "loss"), ("k1", "loss_is"), ("k3", "loss_is"), ("k3", "loss")]
)
def test_concave_cases_flow_reaches_the_closed_form(kind):
    """Gibbs (four placements) and k3-as-loss: the independent flow from three starts lands on the answer key."""
    r, q, beta = np.array([0.3, -1.0, 1.2, 0.0]), np.array([0.4, 0.3, 0.2, 0.1]), 0.6
    opt = kl_estimator_optimum(r, q, beta, *kind)
    assert isinstance(opt, UniqueOptimum)
    field = _kl_field(r, q, beta, *kind)
    for s in _starts(4, 3):
        th = _flow(field, np.log(s))
        res = opt.check(log_probs=th, tol=_flow_tolerance(field, th))
        assert res.ok, res.detail


def test_k1_as_a_loss_has_no_regularisation():
    """k1 as a loss: zero expected gradient of the penalty, plain REINFORCE. Natural flow: log-ratios inside the
    argmax tie class never move, limit = start restricted to argmax r. Plain gradient flow: the likelier tied
    arm gains, d(theta_0 - theta_2)/dt = (pi_0 - pi_2)(max r - E r) > 0, limit delta on it (slowly)."""
    r, q = np.array([1.0, 0.2, 1.0, -0.5]), np.array([0.1, 0.2, 0.3, 0.4])
    start = np.array([0.2, 0.5, 0.1, 0.2])
    nat = kl_estimator_optimum(r, q, 0.5, "k1", "loss", start=start, flow="natural")
    grad = kl_estimator_optimum(r, q, 0.5, "k1", "loss", start=start)
    assert isinstance(nat, NoFiniteOptimum) and isinstance(grad, NoFiniteOptimum)
    np.testing.assert_allclose(nat.policy[0], [2 / 3, 0, 1 / 3, 0], atol=EXACT)
    np.testing.assert_allclose(grad.policy[0], [1, 0, 0, 0], atol=EXACT)
    field = _kl_field(r, q, 0.5, "k1", "loss")
    ends = [_flow(field, np.log(start), T=T) for T in (10.0, 100.0, 1000.0)]
    gaps = [th[0] - th[2] for th in ends]
    assert np.log(2.0) < gaps[0] < gaps[1] < gaps[2]  # grows like log t: the gradient flow's limit is delta_0

    def natural(th):  # theta' = A - E A
        return r - softmax(th) @ r

    th = _flow(natural, np.log(start), T=30.0)
    assert abs((th[0] - th[2]) - np.log(2.0)) < 1e-8 and nat.check(log_probs=th, tol=1e-8).ok


def _pi_space_euler(r, q, beta, est, start, flow, dt, T):
    """Explicit Euler of the reward-placement flows in probability space, written with pi * A (finite as pi -> 0:
    an extinct arm simply reaches 0): natural pi' = pi ⊙ (A - E A); gradient pi' = pi ⊙ (g - pi.g),
    g = pi ⊙ (A - E A). No logits, no extinction test, no face solver: a second integrator."""
    p = start.copy()
    for _ in range(int(T / dt)):
        alive = p > 0
        h = np.where(alive, np.log(np.where(alive, p, 1.0)) - np.log(q), 0.0)
        if est == "k3":
            pA = np.where(alive, p * r - beta * (q + p * h - p), 0.0)  # pi * (r - beta k3)
        elif est == "k2":
            pA = np.where(alive, p * (r - beta * h * h / 2), 0.0)
        else:  # "k2_is": k2 * pi/pi_old as a loss, k_eff = h^2/2 + h
            pA = np.where(alive, p * (r - beta * (h * h / 2 + h)), 0.0)
        pg = pA - p * pA.sum()  # pi ⊙ (A - E A)
        step = pg if flow == "natural" else p * (pg - p @ pg)
        p = np.maximum(p + dt * step, 0.0)
        p[p < 1e-300] = 0.0
        p /= p.sum()
    return p


def test_k3_in_the_reward_theory_claim_and_its_limits():
    """THEORY: k3 in the reward collapses to delta(argmax r) from pi_ref, uniform and Gibbs starts. Plain gradient
    flow: true at beta = .25 and .5; at beta = 2 it goes to delta_2 (from pi_ref) or delta_1 (uniform, Gibbs).
    Natural flow: faces [.6929 .3071 0 0] (beta .5), [.2890 .3713 .3396 0] (beta 2). Route 2: Euler in probability
    space. Under the gradient flow an extinct arm decays like exp(-beta q_y t) (its pi A -> -beta q_y), so
    T = 10/(beta q_min) + 100 leaves < e^-10 on it and 1e-3 in probability is ample; under the natural flow
    extinct arms reach 0 in finite time."""
    cases = {
        ("gradient", 0.5): ([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]),
        ("gradient", 2.0): ([0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]),
        ("natural", 0.5): ([0.6929, 0.3071, 0, 0],) * 3,
        ("natural", 2.0): ([0.2890, 0.3713, 0.3396, 0],) * 3,
    }
    for (flow, beta), expects in cases.items():
        starts = (Q4, np.full(4, 0.25), kl_rl_optimum(R4, Q4, beta).policy[0])
        for start, expect in zip(starts, expects):
            opt = kl_estimator_optimum(R4, Q4, beta, "k3", "reward", start=start, flow=flow)
            assert isinstance(opt, FlowLimit) and opt.extras["stable"].all()
            np.testing.assert_allclose(opt.policy[0], expect, atol=PRINTED)
            np.testing.assert_array_equal(opt.vanishing[0], np.asarray(expect) == 0)
        T = 60.0 if flow == "natural" else 10.0 / (beta * Q4.min()) + 100.0
        euler = _pi_space_euler(R4, Q4, beta, "k3", Q4, flow, dt=2e-3 if flow == "natural" else 1e-2, T=T)
        np.testing.assert_allclose(
            euler, kl_estimator_optimum(R4, Q4, beta, "k3", "reward", flow=flow).policy[0], atol=1e-3
        )
    assert np.array_equal(kl_estimator_optimum(R4, Q4, 0.25, "k3", "reward").policy[0], [1, 0, 0, 0])
    for flow in ("gradient", "natural"):
        two = kl_estimator_optimum([1.0, 0.0], [0.01, 0.99], 0.5, "k3", "reward", flow=flow)
        assert two.attained and two.extras["stable"][0]
        np.testing.assert_allclose(two.policy[0], [0.1953, 0.8047], atol=PRINTED)


@pytest.mark.parametrize("est,placement,tag", [("k2", "reward", "k2"), ("k2", "loss_is", "k2_is")])
def test_non_monotone_k2_penalties_flow_limit(est, placement, tag):
    """k2 in the reward and k2·rho as a loss: the returned limit zeroes the effective advantage's spread on its
    support (k_eff written out here), is certified, and both flows' Euler integrations reach it (plain gradient:
    the extinct arms decay slowly, ~1/t, so 2e-3 in probability at T = 3000)."""
    for beta, flow, dt, T in ((0.5, "natural", 2e-3, 60.0), (0.5, "gradient", 0.05, 3000.0)):
        opt = kl_estimator_optimum(R4, Q4, beta, est, placement, flow=flow)
        assert isinstance(opt, FlowLimit) and opt.extras["stable"][0] and opt.extras["error_bound"][0] < 1e-10
        p = opt.policy[0]
        sup = p > 0
        h = np.log(p[sup]) - np.log(Q4[sup])
        a = R4[sup] - beta * (h * h / 2 + (h if placement == "loss_is" else 0.0))
        assert np.abs(a - a.mean()).max() < 1e-10
        euler = _pi_space_euler(R4, Q4, beta, tag, Q4, flow, dt=dt, T=T)
        np.testing.assert_allclose(euler, p, atol=2e-3)
    if placement == "reward":
        np.testing.assert_allclose(kl_estimator_optimum(R4, Q4, 0.5, "k2", "reward").policy[0], [0.5248, 0.4752, 0, 0],
                                   atol=PRINTED)


def test_beta_to_infinity_gives_the_reference():
    """beta -> inf: k3-loss and GRPO fixed points tend to pi_ref, |log pi - log q| = O(1/beta)."""
    for big in (1e3, 1e5):
        k3 = k3_loss_optimum(R4, Q4, big).policy[0]
        gr = grpo_optimum(R4, Q4, big, 3).policy[0]
        assert np.abs(np.log(k3 / Q4)).max() < 2.0 / big
        assert np.abs(np.log(gr / Q4)).max() < 2.0 / big


# ----------------------------------------------------------------------------------- GRPO


_GROUPS: dict = {}


def _grpo_P_bruteforce(r, pi, G, scale="group", eps=1e-4):
    """E[A_1 | y_1 = y] over complete groups (all K^G of them), advantages as TRL computes them (ddof 1, + eps)."""
    K = len(r)
    if (K, G) not in _GROUPS:
        _GROUPS[(K, G)] = np.array(list(itertools.product(range(K), repeat=G)))
    grp = _GROUPS[(K, G)]
    rr = r[grp]
    a = rr[:, 0] - rr.mean(axis=1)
    if scale == "group":
        a = a / (rr.std(axis=1, ddof=1) + eps)
    w = np.prod(pi[grp[:, 1:]], axis=1)
    return np.bincount(grp[:, 0], weights=w * a, minlength=K)


def test_grpo_expected_advantage_matches_bruteforce():
    rng = np.random.default_rng(5)
    r, pi = rng.normal(size=4), rng.dirichlet(np.ones(4))
    for G in (2, 3, 4):
        for scale in ("group", "none"):
            ours = grpo_expected_advantage(r, pi, G, scale)[0]
            np.testing.assert_allclose(ours, _grpo_P_bruteforce(r, pi, G, scale), atol=EXACT)
            assert abs(pi @ ours) < EXACT  # E_pi P_G = 0
        # Dr. GRPO: P = (G-1)/G (r - E r) exactly
        np.testing.assert_allclose(grpo_expected_advantage(r, pi, G, "none")[0], (G - 1) / G * (r - pi @ r), atol=EXACT)


def test_grpo_theory_numbers_and_fixed_point_equation():
    """THEORY: GRPO (k3 loss) G = 2 [.4499 .1798 .1843 .1860], G = 4 [.6911 .0850 .1014 .1225]; G = 3 ours."""
    for G, expect in ((2, [0.4499, 0.1798, 0.1843, 0.1860]), (3, [0.6292, 0.1054, 0.1227, 0.1427]),
                      (4, [0.6911, 0.0850, 0.1014, 0.1225])):
        opt = grpo_optimum(R4, Q4, 0.5, G)
        pi = opt.policy[0]
        np.testing.assert_allclose(pi, expect, atol=PRINTED)
        np.testing.assert_allclose(pi, Q4 / (1 - _grpo_P_bruteforce(R4, pi, G) / 0.5), atol=1e-12)
        assert opt.extras["error_bound"][0] < 1e-11


def _grpo_field(r, q, beta, G, scale, kl):
    def field(theta):
        p = softmax(theta)
        h = np.log(p) - np.log(q)
        if kl == "k1_reward":
            a = _grpo_P_bruteforce(r - beta * h, p, G, scale)
        else:
            P = _grpo_P_bruteforce(r, p, G, scale)
            a = P - beta * (1 - q / p) if kl == "k3_loss" else P - beta * h
        return p * (a - p @ a)

    return field


@pytest.mark.parametrize("scale,kl", [("group", "k3_loss"), ("group", "k2_loss"), ("group", "k1_reward"),
                                      ("none", "k3_loss"), ("none", "k3_loss_is"), ("none", "k1_reward")])
def test_grpo_flow_reaches_the_answer_key(scale, kl):
    """The exact GRPO flow (brute-force groups, G = 3) from three starts reaches grpo_optimum. This checks
    the closed forms too: Dr. GRPO + reverse KL = Gibbs at beta G/(G-1); k1 in the reward = Gibbs at beta
    with either scaling (the brief's grouping of k1_reward with the loss placements is corrected)."""
    r, q, beta, G = np.array([0.5, -0.2, 1.0]), np.array([0.5, 0.3, 0.2]), 0.4, 3
    opt = grpo_optimum(r, q, beta, G, scale, kl)
    if (scale, kl) == ("none", "k3_loss_is"):
        np.testing.assert_allclose(opt.policy, kl_rl_optimum(r, q, beta * G / (G - 1)).policy, atol=EXACT)
    if kl == "k1_reward":
        np.testing.assert_allclose(opt.policy, kl_rl_optimum(r, q, beta).policy, atol=EXACT)
    field = _grpo_field(r, q, beta, G, scale, kl)
    # k1 in the reward with the std division: near Gibbs the group spread -> 0 and the gain -> 1/eps = 1e4 (stiff)
    method = "LSODA" if kl == "k1_reward" else "DOP853"
    for s in _starts(3, 6):
        th = _flow(field, np.log(s), T=300.0, method=method)
        res = opt.check(log_probs=th, tol=_flow_tolerance(field, th))
        assert res.ok, res.detail


def test_grpo_std_normalisation_makes_it_reward_scale_free():
    """With eps = 0 the group advantage is invariant under r -> a r + c: so is the fixed point."""
    a = grpo_optimum(R4, Q4, 0.5, 3, eps=0.0).policy
    b = grpo_optimum(7.0 * R4 - 3.0, Q4, 0.5, 3, eps=0.0).policy
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert np.abs(a - grpo_optimum(7.0 * R4, Q4, 0.5, 3).policy).max() < 1e-3  # TRL's eps: nearly so


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 4), G=st.integers(2, 3),
       beta=st.sampled_from([0.2, 0.7, 3.0]), shift=st.floats(-5, 5))
def test_grpo_fixed_point_property(seed, K, G, beta, shift):
    """Hypothesis: the answer key solves pi = q/(1 - P_G/beta) (P_G brute force) and is unchanged by r + c."""
    rng = np.random.default_rng(seed)
    r, q = rng.normal(size=K), rng.dirichlet(np.ones(K))
    opt = grpo_optimum(r, q, beta, G)
    pi = opt.policy[0]
    np.testing.assert_allclose(pi, q / (1 - _grpo_P_bruteforce(r, pi, G) / beta), atol=1e-10)
    assert opt.check(grpo_optimum(r + shift, q, beta, G).policy, tol=1e-9).ok


# ----------------------------------------------------------------------------------- best-of-n / RAFT


def _bon_bruteforce(r, pi, n):
    """Enumerate all n-tuples; the first sample with the maximal reward wins."""
    K = len(r)
    out = np.zeros(K)
    for tup in itertools.product(range(K), repeat=n):
        rr = r[list(tup)]
        out[tup[int(np.argmax(rr))]] += np.prod(pi[list(tup)])
    return out


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 5), n=st.integers(1, 4), levels=st.integers(1, 4))
def test_best_of_n_matches_enumeration_with_ties(seed, K, n, levels):
    rng = np.random.default_rng(seed)
    r = rng.integers(0, levels, size=K).astype(float)  # few levels: ties are common
    pi = rng.dirichlet(np.ones(K))
    ours = best_of_n_policy(r, pi, n)[0]
    np.testing.assert_allclose(ours, _bon_bruteforce(r, pi, n), atol=1e-12)
    assert best_of_n_kl(r, pi, n)[0] <= best_of_n_kl_bound(n) + 1e-12
    strict, half = best_of_n_win_rate(r, pi, n, ties="strict")[0], best_of_n_win_rate(r, pi, n)[0]
    assert strict <= half + 1e-12 <= n / (n + 1) + 2e-12


def test_best_of_n_limits():
    """n = 1 returns pi; with many distinct rewards under a uniform pi the KL approaches the bound."""
    rng = np.random.default_rng(7)
    r, pi = rng.normal(size=6), rng.dirichlet(np.ones(6))
    np.testing.assert_allclose(best_of_n_policy(r, pi, 1)[0], pi, atol=EXACT)
    K = 4000
    gap = best_of_n_kl_bound(4) - best_of_n_kl(np.arange(K, dtype=float), np.full(K, 1 / K), 4)[0]
    assert 0 <= gap < 5e-3


def test_raft_top_mass_recursion_and_limit():
    """RAFT: q -> 1 - (1 - q)^n per round, within-class ratios fixed, limit pi_0 restricted to argmax r."""
    r = np.array([0.0, 2.0, 1.0, 2.0])
    pi0 = np.array([0.4, 0.1, 0.3, 0.2])
    its = raft_iterates(r, pi0, 2, 5)
    q = 0.3
    for t in range(1, 6):
        q = 1 - (1 - q) ** 2
        assert abs(its[t, 0, [1, 3]].sum() - q) < EXACT
        assert abs(its[t, 0, 1] / its[t, 0, 3] - 0.5) < 1e-10
    lim = raft_limit(r, pi0)
    assert isinstance(lim, NoFiniteOptimum)
    np.testing.assert_allclose(lim.policy[0], [0, 1 / 3, 0, 2 / 3], atol=EXACT)
    assert np.abs(its[-1, 0] - lim.policy[0]).max() < (1 - 0.3) ** (2**5) + 1e-12


# ----------------------------------------------------------------------------------- Nash


def _random_preferences(rng, K):
    S = rng.uniform(size=(K, K))
    P = np.triu(S, 1)
    P = P + np.tril(1 - P.T, -1)
    np.fill_diagonal(P, 0.5)
    return P


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 5), tau=st.sampled_from([0.05, 0.3, 2.0]))
def test_regularised_nash_is_an_equilibrium(seed, K, tau):
    """pi* ∝ mu exp(P pi*/tau); no deviation pi improves P(pi > pi*) - tau KL(pi||mu) over pi* itself."""
    rng = np.random.default_rng(seed)
    P, mu = _random_preferences(rng, K), rng.dirichlet(np.ones(K))
    opt = regularised_nash_optimum(P, mu, tau)
    pi = opt.policy[0]
    br = mu * np.exp(P @ pi / tau)
    np.testing.assert_allclose(pi, br / br.sum(), atol=1e-12)

    def payoff(p):
        return p @ P @ pi - tau * np.sum(p * np.log(p / mu))

    for _ in range(20):
        dev = rng.dirichlet(np.ones(K))
        assert payoff(dev) <= payoff(pi) + 1e-12


def test_nash_differs_from_gibbs_under_bradley_terry():
    """Own example (THEORY's '.435 vs .727' could not be reproduced)."""
    P = expit(R4[:, None] - R4[None, :])
    nash = regularised_nash_optimum(P, Q4, 0.2).policy[0]
    np.testing.assert_allclose(nash, [0.2220, 0.2475, 0.2585, 0.2719], atol=PRINTED)
    np.testing.assert_allclose(kl_rl_optimum(R4, Q4, 0.2).policy[0], [0.8025, 0.1318, 0.0441, 0.0216], atol=PRINTED)


def test_nash_md_step_fixed_point_approaches_nash_linearly_in_eta():
    """The Nash-MD step's fixed point solves pi ∝ mu exp(P(y > pi^mu)/tau) — not pi* — and iterating the step
    converges to it; its distance to pi* is O(eta): halving eta halves it (ratio 2 within 2%; the O(eta^2)
    term made it 2.06 at eta = .4 -> .2)."""
    rng = np.random.default_rng(9)
    P, mu, tau = _random_preferences(rng, 4), rng.dirichlet(np.ones(4)), 0.3
    star = regularised_nash_optimum(P, mu, tau).policy
    dists = []
    for eta in (0.1, 0.05, 0.025):
        fp, _ = nash_md_fixed_point(P, mu, tau, eta)
        mix = fp[0] ** (1 - eta * tau) * mu ** (eta * tau)
        mix /= mix.sum()
        tgt = mu * np.exp(P @ mix / tau)
        np.testing.assert_allclose(fp[0], tgt / tgt.sum(), atol=1e-12)
        if eta == 0.1:
            it = mu[None].copy()
            for _ in range(int(40 / (eta * tau))):  # contraction ~ (1 - eta tau) per step: e^-40
                it = nash_md_iterate(P, mu, tau, eta, it)
            np.testing.assert_allclose(it, fp, atol=1e-10)
        dists.append(np.abs(np.log(fp) - np.log(star)).max())
    assert dists[0] > 1e-4
    assert abs(dists[0] / dists[1] - 2) < 0.04 and abs(dists[1] / dists[2] - 2) < 0.04


# ----------------------------------------------------------------------------------- reward models


def _fd_grad(f, s, e=1e-6):
    return np.array([(f(s + e * np.eye(len(s))[k]) - f(s - e * np.eye(len(s))[k])) / (2 * e) for k in range(len(s))])


def test_reward_model_margin_two_arms():
    """THEORY: 3:1 with margin 1 gives Delta = 1.78 (not log 3); the table solver agrees with the 1-D root."""
    d = bradley_terry_two_arm_margin(3, 1, 1.0)
    assert abs(3 * expit(1 - d) - expit(1 + d)) < 1e-15 and abs(d - 1.78196) < 1e-5
    W = np.array([[0.0, 3.0], [1.0, 0.0]])
    rm = bradley_terry_reward_optimum(W, margin=1.0)
    assert abs((rm.scores[0, 0] - rm.scores[0, 1]) - d) < 1e-12
    assert abs(np.diff(bradley_terry_reward_optimum(W).scores[0])[0] + np.log(3)) < 1e-12


def test_reward_model_centring_triangle_and_shrinkage():
    """THEORY triangle: P(a>b) = .8, P(b>c) = .7, P(a>c) = .5, unit weights: s_a - s_b = .551 -> .535 (c = .01)
    -> .428 (c = .1). Scores zero the finite-difference gradient of the loss; s^T Q s never grows with c."""
    W = np.zeros((3, 3))
    W[0, 1], W[1, 0], W[1, 2], W[2, 1], W[0, 2], W[2, 0] = 0.8, 0.2, 0.7, 0.3, 0.5, 0.5
    gaps, ridge = [], []
    N = W + W.T
    Q = np.diag(N.sum(1)) + N
    for c in (0.0, 0.01, 0.03, 0.1, 0.3):
        rm = bradley_terry_reward_optimum(W, center_coefficient=c)
        s = rm.scores[0]
        g = _fd_grad(lambda v, c=c: reward_model_loss(W, v, center_coefficient=c), s)
        assert np.abs(g).max() < 1e-8  # central differences: truncation ~1e-12, rounding ~1e-10
        gaps.append(s[0] - s[1])
        ridge.append(s @ Q @ s)
    np.testing.assert_allclose([gaps[0], gaps[1], gaps[3]], [0.5509, 0.5352, 0.4277], atol=PRINTED)
    assert all(a >= b for a, b in itertools.pairwise(ridge))


def test_reward_model_centring_limit_is_the_degree_gauge():
    """c -> 0+: the scores tend to the c = 0 solution in the degree-weighted gauge (not the plain mean)."""
    W = np.zeros((4, 4))
    W[0, 1], W[1, 0], W[1, 2], W[2, 1], W[2, 3], W[3, 2], W[0, 2], W[2, 0] = 3, 1, 2, 2, 5, 1, 1, 1
    deg = bradley_terry_reward_optimum(W, gauge="degree").scores[0]
    mean = bradley_terry_reward_optimum(W, gauge="mean").scores[0]
    assert np.abs(deg - mean).max() > 1e-2
    errs = [np.abs(bradley_terry_reward_optimum(W, center_coefficient=c).scores[0] - deg).max() for c in (1e-4, 1e-5)]
    assert errs[1] < 2e-4 and 5 < errs[0] / errs[1] < 20  # O(c)


def test_reward_model_finiteness_conditions():
    """c = 0: Ford's condition (deterministic triangle diverges); c > 0: finite on non-bipartite components
    even then, not on a bipartite component whose wins all go one way."""
    Wd = np.zeros((3, 3))
    Wd[0, 1] = Wd[1, 2] = Wd[0, 2] = 1.0
    assert not bradley_terry_reward_optimum(Wd).attained
    rm = bradley_terry_reward_optimum(Wd, center_coefficient=0.1)
    assert rm.attained and rm.absolute.all()
    assert np.abs(_fd_grad(lambda v: reward_model_loss(Wd, v, center_coefficient=0.1), rm.scores[0])).max() < 1e-8
    Wp = np.zeros((3, 3))
    Wp[0, 1], Wp[2, 1] = 1.0, 2.0  # path 0 - 1 - 2, bipartite, all wins into arm 1's side
    assert not bradley_terry_reward_optimum(Wp, center_coefficient=0.1).attained
    Wp[1, 2] = 0.5  # now a win the other way: finite
    assert bradley_terry_reward_optimum(Wp, center_coefficient=0.1).attained


def test_reward_model_check_and_plain_mle_agree_with_dpo_scores():
    rng = np.random.default_rng(11)
    W = rng.uniform(0.1, 1, size=(5, 5))
    np.fill_diagonal(W, 0)
    rm = bradley_terry_reward_optimum(W)
    d = dpo_optimum(np.full((1, 5), 0.2), W[None], 1.0).extras["scores"][0]
    np.testing.assert_allclose(rm.scores[0] - rm.scores[0, 0], d - d[0], atol=1e-10)
    assert rm.check(rm.scores + 3.0, tol=1e-12).ok  # a constant per component is free at c = 0
    bumped = rm.scores.copy()
    bumped[0, 2] += 1e-4
    assert not rm.check(bumped, tol=1e-6).ok


# ----------------------------------------------------------------------------------- RLHF pipeline vs DPO


def _two_component_table():
    """Context with arms {0, 1, 2} compared (cyclic, finite), {3, 4} compared, arm 5 never compared."""
    W = np.zeros((1, 6, 6))
    W[0, 0, 1], W[0, 1, 0], W[0, 1, 2], W[0, 2, 1], W[0, 2, 0], W[0, 0, 2] = 0.6, 0.4, 0.7, 0.3, 0.2, 0.5
    W[0, 3, 4], W[0, 4, 3] = 0.9, 0.3
    return W


def test_pipeline_equals_dpo_under_all_pairs_bt():
    from mdpalign.envs.bandits import preference_pairs, random_contextual_bandit
    from mdpalign.proofs import pair_table

    b = random_contextual_bandit(2, 4, seed=12)
    W = pair_table(preference_pairs(b, coverage="all", labels="bt"), 2, 4)
    pipe = rlhf_pipeline_optimum(W, b.ref_policy, 0.6)
    np.testing.assert_allclose(pipe.policy, dpo_optimum(b.ref_policy, W, 0.6).policy, atol=1e-10)
    np.testing.assert_allclose(pipe.policy, kl_rl_optimum(b.rewards, b.ref_policy, 0.6).policy, atol=1e-10)


def test_pipeline_gauge_picks_a_member_of_dpos_set():
    """Partial coverage: every offset choice gives a different RL policy, and every one passes DPO's check;
    conversely a DPO member is the pipeline for the offsets pipeline_offsets_of recovers."""
    W = _two_component_table()
    ref = np.array([[0.1, 0.2, 0.15, 0.25, 0.2, 0.1]])
    beta = 0.5
    dpo = dpo_optimum(ref, W, beta)
    assert isinstance(dpo, PinnedDifferences)
    pols = []
    for off in (None, [[0, 0, 0, 1.0, 1.0, -2.0]], [[0.5, 0.5, 0.5, -1.0, -1.0, 0.0]]):
        p = rlhf_pipeline_optimum(W, ref, beta, offsets=off).policy
        assert dpo.check(p, tol=1e-9).ok
        pols.append(p)
    pols.append(rlhf_pipeline_optimum(W, ref, beta, gauge="degree").policy)
    for a, b in itertools.combinations(pols, 2):
        assert np.abs(a - b).max() > 1e-3  # distinct policies (the check above passes at 1e-9)
    member = dpo.representative(fill=np.array([[0.3, 0.1, 0.1, 0.1, 0.1, 0.3]]))
    off = pipeline_offsets_of(W, ref, beta, member)
    np.testing.assert_allclose(rlhf_pipeline_optimum(W, ref, beta, offsets=off).policy, member, atol=1e-10)
    centred = rlhf_pipeline_optimum(W, ref, beta, center_coefficient=0.1).policy
    assert not dpo.check(centred, tol=1e-3).ok  # the centring penalty leaves DPO's set
    with pytest.raises(ProofInputError, match="constant on each comparison component"):
        rlhf_pipeline_optimum(W, ref, beta, offsets=[[0, 1.0, 0, 0, 0, 0]])


def test_gradient_descent_dpo_lands_on_the_mean_gauge_pipeline():
    """Plain GD on DPO's population loss from theta = log pi_ref conserves sum_C (theta - log ref) per component
    and the uncompared logits, so it converges to the pipeline with gauge "mean" and zero offsets."""
    W = _two_component_table()[0]
    ref = np.array([0.1, 0.2, 0.15, 0.25, 0.2, 0.1])
    beta = 0.5
    th = np.log(ref)
    for _ in range(6000):
        d = beta * (th[:, None] - th[None, :] - np.log(ref)[:, None] + np.log(ref)[None, :])
        a = W * expit(-d)
        th = th - 2.0 * (-beta * (a.sum(1) - a.sum(0)))
    g = th - np.log(ref)
    assert abs(g[:3].sum()) < 1e-12 and abs(g[3:5].sum()) < 1e-12 and g[5] == 0.0
    pipe = rlhf_pipeline_optimum(W[None], ref[None], beta)
    d = beta * (th[:, None] - th[None, :] - np.log(ref)[:, None] + np.log(ref)[None, :])
    grad = -beta * ((W * expit(-d)).sum(1) - (W * expit(-d)).sum(0))
    assert np.abs(grad).max() < 1e-12  # converged (the loss is strictly convex on the conserved slice)
    assert pipe.check(log_probs=th - logsumexp(th), tol=1e-9).ok
    assert (
        not rlhf_pipeline_optimum(W[None], ref[None], beta, gauge="degree")
        .check(log_probs=th - logsumexp(th), tol=1e-3)
        .ok
    )


# ----------------------------------------------------------------------------------- token trees


def _tree_fields(tree, beta, local):
    """Expected ascent direction on the prefix logits by enumerating leaves: REINFORCE on r plus, per token,
    either the local KL loss (k2, gradient of KL(pi(.|s)||ref) weighted by d(s)) or the sequence KL in the
    reward (k1 summed over the response)."""
    paths = tree.leaf_token_paths()
    inc = np.flatnonzero(~tree.is_complete)
    V = tree.vocab_size
    lref = tree.ref_log_probs

    def field(flat):
        theta = np.zeros((tree.n_prefixes, V))
        theta[inc] = flat.reshape(len(inc), V)
        lp = theta - logsumexp(theta, axis=1, keepdims=True)
        p = np.exp(lp)
        leaf_lp = (lp[paths.states, paths.actions] * paths.mask).sum(1)
        leaf_p = np.exp(leaf_lp)
        seq_kl = ((lp - lref)[paths.states, paths.actions] * paths.mask).sum(1)
        ret = tree.leaf_rewards - (0.0 if local else beta * seq_kl)
        g = np.zeros_like(theta)
        visit = np.zeros(tree.n_prefixes)
        for n in range(tree.n_leaves):
            for t in np.flatnonzero(paths.mask[n]):
                s, a = paths.states[n, t], paths.actions[n, t]
                g[s] -= leaf_p[n] * ret[n] * p[s]
                g[s, a] += leaf_p[n] * ret[n]
                visit[s] += leaf_p[n]
        if local:
            h = lp - lref
            g -= beta * visit[:, None] * p * (h - (p * h).sum(1, keepdims=True))
        return g[inc].reshape(-1)

    return field, inc


@pytest.mark.parametrize("eos", [0, None])
def test_token_tree_local_kl_myopic_fixed_point(eos):
    """Per-token local KL: the leaf-enumerated update vanishes at the answer key, the flow from pi_ref reaches
    it, it is NOT pi* (THEORY: max error 0.21 on the 3x3 tree: random_token_tree(3, 3, seed=0), beta = .5,
    measured 0.206), V_r = V_soft + beta KL_seq, and Q_r - V* = beta KL(child || ref) above the last decisions."""
    tree = random_token_tree(3, 3, seed=0, eos=eos)
    beta = 0.5
    opt = token_tree_local_kl_optimum(tree, beta)
    star = token_tree_optimum(tree, beta)
    field, inc = _tree_fields(tree, beta, local=True)
    lp = np.log(opt.policy)
    assert np.abs(field(lp[inc].reshape(-1))).max() < 1e-12
    th = _flow(field, tree.ref_log_probs[inc].reshape(-1), T=300.0)
    full = np.zeros((tree.n_prefixes, tree.vocab_size))
    full[inc] = th.reshape(len(inc), -1)
    full -= logsumexp(full, axis=1, keepdims=True)
    assert opt.check(log_probs=full, tol=_flow_tolerance(field, th)).ok
    err = np.abs(opt.policy[inc] - star.policy[inc]).max()
    if eos == 0:
        assert abs(err - 0.206) < 5e-4
    assert err > 0.05
    ex = opt.extras
    np.testing.assert_allclose(ex["values_reward"], ex["values_soft"] + beta * ex["subtree_kl"], atol=EXACT)
    assert ex["soft_regret"] > 0
    # prefixes whose children decide only among complete responses: pi = pi* below, regret 0
    children = tree.children
    for s in inc:
        kids = children[s]
        if all(tree.is_complete[k] or tree.is_complete[children[k]].all() for k in kids):
            for a, k in enumerate(kids):
                if not tree.is_complete[k]:
                    kl = np.sum(star.policy[k] * (np.log(star.policy[k]) - tree.ref_log_probs[k]))
                    assert abs(ex["q_reward"][s, a] - star.extras["values"][k] - beta * kl) < EXACT


def test_token_tree_sequence_kl_in_reward_is_the_soft_optimum():
    """THEORY: sequence-level k1 in the reward recovers pi* exactly (its update vanishes there)."""
    tree = random_token_tree(3, 3, seed=1)
    star = token_tree_optimum(tree, 0.7)
    field, inc = _tree_fields(tree, 0.7, local=False)
    assert np.abs(field(np.log(star.policy[inc]).reshape(-1))).max() < 1e-12


def test_token_tree_local_k3_loss_fixed_point():
    """kl="k3_loss": pi(a|s) = beta ref/(lambda_s - Q_r(s, a)) at every prefix, normalised."""
    tree = random_token_tree(3, 2, seed=2)
    opt = token_tree_local_kl_optimum(tree, 0.4, kl="k3_loss")
    for s in np.flatnonzero(~tree.is_complete):
        p, qv, ref = opt.policy[s], opt.extras["q_reward"][s], tree.ref_policy[s]
        lam = qv + 0.4 * ref / p
        assert np.ptp(lam) < 1e-12 and abs(p.sum() - 1) < EXACT


# ----------------------------------------------------------------------------------- hygiene


def test_proofs_do_not_import_torch():
    code = "import sys, mdpalign.proofs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kl_estimator_optimum(R4, Q4, 0.5, "k4", "loss"), "estimator"),
        (lambda: kl_estimator_optimum(R4, Q4, 0.5, "k3", "penalty"), "placement"),
        (lambda: kl_estimator_optimum(R4, Q4, -1.0, "k3", "loss"), "beta"),
        (lambda: kl_estimator_optimum(R4, Q4, 0.5, "k3", "reward", flow="adam"), "flow"),
        (lambda: kl_estimator_optimum(R4, Q4, 0.5, "k3", "reward", start=[0.5, 0.5]), "start"),
        (lambda: grpo_optimum(R4, Q4, 0.5, 1), "group_size"),
        (lambda: grpo_optimum(R4, Q4, 0.5, 2, scale_rewards="rank"), "scale_rewards"),
        (lambda: grpo_optimum(R4, Q4, 0.5, 2, kl="k1_loss"), "kl must"),
        (lambda: grpo_optimum(np.zeros(8), np.full(8, 1 / 8), 0.5, 9), "groups"),
        (lambda: best_of_n_policy(R4, Q4, 0), "n must"),
        (lambda: best_of_n_policy(R4, [0.5, 0.6, 0, 0], 2), "policy"),
        (lambda: raft_iterates(R4, Q4, 2, -1), "rounds"),
        (lambda: regularised_nash_optimum(np.ones((4, 4)), Q4, 0.2), "P\\(i > j\\)"),
        (lambda: regularised_nash_optimum(np.full((4, 4), 0.5), Q4, 0.0), "tau"),
        (lambda: nash_md_iterate(np.full((4, 4), 0.5), Q4, 0.5, 3.0, Q4), "eta"),
        (lambda: bradley_terry_reward_optimum(np.ones((3, 3))), "itself"),
        (lambda: bradley_terry_reward_optimum(np.zeros((3, 3)), center_coefficient=-1), "center_coefficient"),
        (lambda: bradley_terry_reward_optimum(np.zeros((3, 3)), margin=np.zeros(2)), "margin"),
        (lambda: bradley_terry_reward_optimum(np.zeros((3, 3)), gauge="median"), "gauge"),
        (lambda: token_tree_local_kl_optimum(random_token_tree(2, 2, seed=0), 0.5, kl="k1"), "kl must"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ProofInputError, match=match):
        call()


def test_grpo_batch_scaling_is_declared_out_of_scope():
    with pytest.raises(NoClosedFormError, match="batch"):
        grpo_optimum(R4, Q4, 0.5, 2, scale_rewards="batch")
