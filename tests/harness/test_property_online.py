"""Property tests for the online-RL and reward-model fixed points (issue 11's "Fixed points" list): Hypothesis
generates bandits and token trees from seeds, the library's losses are trained in exact mode
(:mod:`mdpalign.harness.online`: the expected-update field, Newton-solved and certified from the final field; the
offline closures of :mod:`mdpalign.harness.offline`: fitted and certified from the final gradient), and the result
is compared with the numpy answer keys of :mod:`mdpalign.proofs` at the *certified* tolerance.

Tolerances: ``certificate.log_prob_bound`` (online: ``2·2(‖F‖ + δ_F)/σ_min``) or ``4‖∇‖/μ`` (offline), plus the
answer key's own certified ``error_bound`` where it has one; where a fitted quantity feeds a second step (reward
model → RL, Nash-MD and RAFT rounds) the propagation is derived in the test's docstring.
"""
import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.envs.token_tree import random_token_tree
from mdpalign.fit import fit
from mdpalign.harness.offline import (
    dpo_loss_closure,
    fit_and_check,
    kl_rl_loss_closure,
    sft_loss_closure,
    tabular_policy,
)
from mdpalign.harness.online import (
    bandit_problem,
    bradley_terry_loss_closure,
    method_spec,
    solve_fixed_point,
    tree_problem,
)
from mdpalign.proofs import token_tree_optimum
from mdpalign.proofs.base import optimum_from_target
from mdpalign.proofs.best_of_n import best_of_n_policy, raft_limit
from mdpalign.proofs.dpo import dpo_optimum
from mdpalign.proofs.grpo import grpo_optimum
from mdpalign.proofs.nash import nash_md_fixed_point, nash_md_iterate
from mdpalign.proofs.online_rl import kl_estimator_optimum
from mdpalign.proofs.reward_model import bradley_terry_reward_optimum
from mdpalign.proofs.rlhf_pipeline import rlhf_pipeline_optimum
from mdpalign.proofs.token_tree_online import token_tree_local_kl_optimum

seeds = st.integers(0, 2**31 - 1)


def _bandit(seed, X, K, ties=False):
    """Rewards in [0, 1] (on a 3-level grid when ``ties``), a reference bounded away from 0 (mixed with uniform)."""
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 3, size=(X, K)) / 2.0 if ties else rng.uniform(0.0, 1.0, size=(X, K))
    ref = 0.5 * rng.dirichlet(np.ones(K), size=X) + 0.5 / K
    return r, ref / ref.sum(axis=1, keepdims=True)


def _err(opt):
    return float(np.max(opt.extras.get("error_bound", 0.0)))


# ------------------------------------------------------------------ KL estimators and placements (bandits)

#: (method, placement kind) whose exact flow has an interior fixed point; the others have none (tested as
#: collapse in tests/test_harness_online.py): Gibbs (k1 reward, k2 loss, k1·ρ, k3·ρ), β·ref/(λ − r) (k3 loss).
INTERIOR_KL = [("k1", "reward"), ("k2", "loss"), ("k1", "loss_is"), ("k3", "loss_is"), ("k3", "loss")]


@settings(max_examples=15)
@given(seed=seeds, X=st.integers(1, 2), K=st.integers(2, 4), beta=st.floats(0.3, 2.0),
       kind=st.sampled_from(INTERIOR_KL))
def test_kl_estimator_placements_land_on_their_proven_fixed_point(seed, X, K, beta, kind):
    """REINFORCE with the exact value baseline and the KL term ``kind``: Gibbs where the placement is unbiased,
    ``β·pi_ref/(λ − r)`` for k3 as a loss (``kl_estimator_optimum``)."""
    r, ref = _bandit(seed, X, K)
    e, p = kind
    res = solve_fixed_point(bandit_problem(r, ref, beta), method_spec(f"kl_{e}_{p}"))
    opt = kl_estimator_optimum(r, ref, beta, e, p)
    tol = res.certificate.log_prob_bound + _err(opt)
    chk = opt.check(log_probs=res.log_probs.numpy(), tol=tol)
    assert chk.ok, chk.detail


# ------------------------------------------------------------------ GRPO / Dr. GRPO (bandits)

GRPO_CASES = [("grpo", "group", "k3_loss"), ("grpo_bias_corrected", "group", "k3_loss_is"),
              ("dr_grpo", "none", "k3_loss_is")]


@settings(max_examples=15)
@given(seed=seeds, K=st.integers(2, 3), G=st.integers(2, 3), beta=st.floats(0.5, 2.0),
       case=st.sampled_from(GRPO_CASES))
def test_grpo_fixed_points(seed, K, G, beta, case):
    """GRPO's ``pi = pi_ref/(1 − P_G/β)`` (k3 as a loss), ``pi ∝ pi_ref·exp(P_G/β)`` (k3·ρ), and Dr. GRPO's Gibbs at
    ``β·G/(G−1)`` (no std, reverse-KL gradient): exact group enumeration through the library's advantages."""
    name, scale, kl = case
    r, ref = _bandit(seed, 1, K)
    res = solve_fixed_point(bandit_problem(r, ref, beta), method_spec(name, group_size=G))
    opt = grpo_optimum(r, ref, beta, G, scale_rewards=scale, kl=kl)
    chk = opt.check(log_probs=res.log_probs.numpy(), tol=res.certificate.log_prob_bound + _err(opt))
    assert chk.ok, chk.detail


# ------------------------------------------------------------------ token trees

TREE_SHAPES = [(2, 2, 0), (2, 3, 0), (3, 2, 0), (2, 2, None)]
TREE_CASES = [("kl_k1_reward", "soft"), ("rloo", "soft"), ("ppo_critic", "soft"),
              ("kl_k2_loss", "reverse"), ("kl_k3_loss_is", "reverse"), ("kl_k3_loss", "k3_loss")]


@settings(max_examples=10)
@given(seed=seeds, shape=st.sampled_from(TREE_SHAPES), beta=st.floats(0.4, 2.0), case=st.sampled_from(TREE_CASES))
def test_token_tree_sequence_kl_is_soft_optimal_and_local_kl_is_myopic(seed, shape, beta, case):
    """Sequence-level KL in the reward (REINFORCE, RLOO, PPO with a GAE critic) -> the soft-optimal token policy;
    a per-token KL *loss* -> the myopic ``pi ∝ pi_ref·exp(Q_r/β)`` (reverse-KL gradient) or its k3 analogue
    (``token_tree_local_kl_optimum``). The critic's values: the soft value of each decision state."""
    V, L, eos = shape
    tree = random_token_tree(V, L, seed=seed, eos=eos)
    name, target = case
    spec = method_spec(name, epochs=1) if name == "ppo_critic" else method_spec(name)
    res = solve_fixed_point(tree_problem(tree, beta), spec)
    opt = token_tree_optimum(tree, beta) if target == "soft" else token_tree_local_kl_optimum(tree, beta, target)
    chk = opt.check(log_probs=res.log_probs.numpy(), tol=res.certificate.log_prob_bound + _err(opt))
    assert chk.ok, chk.detail
    if res.values is not None:
        used = tree_problem(tree, beta).used_states.numpy()
        err = np.abs(res.values.numpy()[used] - opt.extras["values"][used]).max()
        assert err <= res.certificate.logit_bound, (err, res.certificate.logit_bound)


# ------------------------------------------------------------------ reward models and the RLHF pipeline


def _wins(seed, X, K, drop):
    """Positive win counts in both directions of every pair (one strongly connected component per context), with
    one pair removed when ``drop`` and ``K >= 3`` (the graph stays strongly connected)."""
    rng = np.random.default_rng(seed)
    W = rng.integers(1, 6, size=(X, K, K)).astype(float)
    W[:, np.arange(K), np.arange(K)] = 0.0
    if drop and K >= 3:
        W[:, 0, 1] = W[:, 1, 0] = 0.0
    return W / W.sum()


def _fit_scores(W, margin=None, center=None, components=1):
    """Fit the score table with :func:`mdpalign.fit.fit` (L-BFGS) on the library's reward loss; certificate
    ``4‖∇‖₂/μ`` as :func:`mdpalign.harness.offline.certified_logit_error` (μ: the smallest Hessian eigenvalue off
    the structural null space, one constant per comparison component when ``c = 0``, none when ``c > 0``)."""
    X, K = W.shape[:2]
    scores = torch.zeros(X, K, dtype=torch.float64, requires_grad=True)
    fit(scores, bradley_terry_loss_closure(scores, W, margin=margin, center_coefficient=center), method="lbfgs",
        tol=1e-8, max_iter=500, require_convergence=False)  # the Newton steps below finish the job
    def of(v):
        return bradley_terry_loss_closure(v.reshape(X, K), W, margin=margin, center_coefficient=center)()
    null = X * components if not center else 0
    flat = scores.detach().reshape(-1).clone()
    for _ in range(3):  # Newton off the null space: L-BFGS's line search stalls near 1e-9 on an O(10) loss
        H = torch.autograd.functional.hessian(of, flat).numpy()
        v = flat.clone().requires_grad_(True)
        g = torch.autograd.grad(of(v), v)[0].numpy()
        ev, U = np.linalg.eigh(H)
        assert np.abs(ev[:null]).max(initial=0.0) <= 1e-9 * ev[-1] < ev[null]
        live = U[:, null:]
        flat = flat - torch.as_tensor(live @ ((live.T @ g) / ev[null:]))
    scores = flat.reshape(X, K)
    return scores.detach().numpy(), 4.0 * float(np.linalg.norm(g)) / float(ev[null]) + 1e-12


@settings(max_examples=20)
@given(seed=seeds, X=st.integers(1, 2), K=st.integers(2, 4), drop=st.booleans(),
       margin=st.sampled_from([None, 0.5, 1.0]), center=st.sampled_from([None, 0.01, 0.1]))
def test_bradley_terry_reward_model_is_the_mle(seed, X, K, drop, margin, center):
    """TRL's reward loss (``bradley_terry_loss`` + ``center_rewards_penalty``) on win counts reaches the tabular BT
    MLE with a margin and with the centring penalty (pinned differences; with centring, the scores themselves).
    The certificate ``4‖∇‖/μ`` bounds every score difference (and, with ``c > 0``, twice every score)."""
    W = _wins(seed, X, K, drop)
    s, bound = _fit_scores(W, margin, center)
    opt = bradley_terry_reward_optimum(W, margin, center or 0.0)
    chk = opt.check(s, tol=bound + _err(opt))
    assert chk.ok, chk.detail


@settings(max_examples=6)
@given(seed=seeds, beta=st.floats(0.3, 2.0), coverage=st.sampled_from(["all", "partial"]))
def test_rlhf_pipeline_matches_its_proof_and_lies_in_dpos_optimal_set(seed, beta, coverage):
    """Reward model (library loss, fitted) -> gauge fixed to zero mean per comparison component (what gradient
    descent from zero scores keeps) -> REINFORCE with the exact baseline on those scores (exact field) lands on
    ``rlhf_pipeline_optimum``; DPO (library loss) on the same counts lands on ``dpo_optimum``, and the pipeline's
    policy is a member of DPO's optimal set (equal to DPO's when all pairs are compared).

    Error propagation: the gauge-fixed scores are within ``2‖∇‖/μ`` (half the certificate) of the MLE in ℓ2, so
    in sup norm; ``log pi = log pi_ref + s/β − log Z`` moves by at most ``2·δs/β``."""
    K = 4
    W = _wins(seed, 1, K, drop=False)
    if coverage == "partial":  # two components {0, 1} and {2, 3}
        W[0, :2, 2:] = W[0, 2:, :2] = 0.0
    rng = np.random.default_rng(seed + 1)
    ref = 0.5 * rng.dirichlet(np.ones(K))[None] + 0.5 / K
    ref /= ref.sum()
    comps = [[0, 1], [2, 3]] if coverage == "partial" else [list(range(K))]
    s, bound = _fit_scores(W, components=len(comps))
    for c in comps:
        s[0, c] -= s[0, c].mean()
    res = solve_fixed_point(bandit_problem(s, ref, beta), method_spec("reinforce_baseline"))
    tol = res.certificate.log_prob_bound + 2.0 * (bound / 2.0) / beta
    pipe = rlhf_pipeline_optimum(W, ref, beta)
    chk = pipe.check(log_probs=res.log_probs.numpy(), tol=tol + _err(pipe.extras["reward_model"]) / beta)
    assert chk.ok, chk.detail
    dpo = dpo_optimum(ref, W, beta)
    pol = tabular_policy(1, K, seed=seed)
    _, dchk, dbound = fit_and_check(dpo, pol, dpo_loss_closure(pol, ref, W, beta))
    assert dchk.ok, dchk.detail
    member = dpo.check(log_probs=res.log_probs.numpy(), tol=2.0 * tol)  # a difference of two log-probs
    assert member.ok, member.detail
    if coverage == "all":  # one component: DPO's optimum is a single policy, the pipeline's
        gap = np.abs(pol.log_probs_table().detach().numpy() - res.log_probs.numpy()).max()
        assert gap <= dbound + tol


# ------------------------------------------------------------------ best-of-n and RAFT


def _best_of_n_by_enumeration(r, pi, n):
    """Exact best-of-n sampling: every ordered n-tuple of arms with its probability, the *first* maximal reward
    wins (TRL's / a sampler's argmax), written here independently of the proof's class formula."""
    X, K = pi.shape
    out = np.zeros((X, K))
    for x in range(X):
        for ys in itertools.product(range(K), repeat=n):
            w = np.prod(pi[x, list(ys)])
            out[x, ys[int(np.argmax(r[x, list(ys)]))]] += w
    return out


@settings(max_examples=6)
@given(seed=seeds, K=st.integers(2, 4), n=st.integers(2, 3))
def test_raft_rounds_are_best_of_n_and_reach_the_restricted_start(seed, K, n):
    """RAFT with the library's SFT loss: each round fits ``sft_loss`` to the exact best-of-n distribution of the
    previous round's fitted policy and is certified against ``best_of_n_policy`` of it (ties: any position rule
    gives the proof's pi-proportional split). The limit, ``raft_limit`` (the start restricted to the argmax
    class): run as many rounds as its stated tolerance needs. Bound on the losing mass: ``b_0 = 1 − q_0``,
    ``b_{t+1} = e^{ε_{t+1}}·b_t^n`` (exact map ``q -> 1 − (1 − q)^n``, then a fit within ``ε`` in log-prob);
    within-class log-ratios are kept exactly by the map, so their error is at most ``Σ_t 2ε_t``; the stated
    tolerance of the limit is ``1e-2`` in losing mass (a policy within 1e-2 of deterministic: further rounds make the
    SFT targets too close to deterministic for float64 certification)."""
    X = 1  # one context: a second one would already be (nearly) deterministic while this one catches up
    r, ref = _bandit(seed, X, K, ties=True)
    tol_limit = 1e-2
    top = r == r.max(axis=1, keepdims=True)
    b = float((1.0 - np.where(top, ref, 0.0).sum(1)).max())
    pi, drift, rounds = ref, 0.0, 0
    while b > tol_limit:
        target = _best_of_n_by_enumeration(r, pi, n)
        np.testing.assert_allclose(target, best_of_n_policy(r, pi, n), rtol=1e-12, atol=1e-15)
        pol = tabular_policy(X, K, seed=seed)
        with torch.no_grad():  # RAFT fine-tunes the current model: warm start from the previous round's logits
            pol.logits.copy_(torch.as_tensor(np.log(pi)))
        opt = optimum_from_target("raft_round", best_of_n_policy(r, pi, n))
        _, chk, eps = fit_and_check(opt, pol, sft_loss_closure(pol, target))
        assert chk.ok, chk.detail
        pi = pol.log_probs_table().detach().exp().numpy()
        b, drift, rounds = np.exp(eps) * b ** n, drift + 2 * eps, rounds + 1
        assert rounds <= 6  # (1 − q_0)^(n^t) with q_0 >= min ref >= 1/(2K): a handful of rounds suffice
    lim = raft_limit(r, ref)
    # on the top class log pi_k − log pi* = (within-class ratio error, <= drift) + log(top mass >= 1 − b)
    chk = lim.check(probs=pi, tol=max(b, drift - np.log1p(-b)))
    assert chk.ok, chk.detail
    assert float(np.where(top, 0.0, pi).sum(1).max()) <= b <= tol_limit


# ------------------------------------------------------------------ Nash-MD and the regularised Nash equilibrium


@settings(max_examples=10)
@given(seed=seeds, K=st.integers(2, 4), tau=st.floats(0.5, 1.0), eta_tau=st.floats(0.6, 0.9))
def test_nash_md_with_the_library_kl_rl_loss_reaches_its_step_fixed_point(seed, K, tau, eta_tau):
    """Nash-MD at a *constant* step ``η`` (``0 < ητ <= 1``, what the proof covers): each step solves the KL-RL
    problem ``max η·P(y ≻ pi^μ) − KL(pi‖pi^μ)`` with the library's ``kl_rl_objective`` (reward ``P(y ≻ pi^μ)``,
    reference the geometric mixture ``pi^μ``, ``β = 1/η``), certified against ``nash_md_iterate``. The iterates
    converge to the *step's* fixed point ``nash_md_fixed_point`` (not the regularised Nash ``pi*``, which it misses
    by O(η)). Tolerance: in the Hilbert metric ``d = osc(log p − log q)`` the step contracts by
    ``c = (1 − ητ)(1 + η/2)`` (the mixture shrinks ``d`` by ``1 − ητ``; ``η·P v`` adds at most ``η‖v‖₁ <= η·d/2``),
    so ``sup|log pi_T − log pi_η| <= d(pi_T, T pi_T)/(1 − c)``, ``T`` the exact numpy step."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(0, 2, K)
    P = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))                 # Bradley–Terry preferences
    P = P + 0.3 * np.triu(rng.uniform(-1, 1, (K, K)), 1) * np.minimum(P, 1 - P) * 2  # intransitive part
    P = np.triu(P, 1) + np.tril(1.0 - np.triu(P, 1).T, -1) + 0.5 * np.eye(K)
    mu = 0.5 * rng.dirichlet(np.ones(K))[None] + 0.5 / K
    mu /= mu.sum()
    eta = eta_tau / tau
    c = (1 - eta * tau) * (1 + eta / 2)
    assert c < 1
    pi = mu.copy()
    for t in range(int(np.ceil(np.log(1e-9) / np.log(c))) + 1):
        mix = mu ** (eta * tau) * pi ** (1 - eta * tau)
        mix /= mix.sum()
        reward = mix @ P.T                                                  # P(y ≻ pi^μ)
        pol = tabular_policy(1, K, seed=seed + t)
        target = nash_md_iterate(P[None], mu, tau, eta, pi)
        _, chk, _ = fit_and_check(optimum_from_target("nash_md_step", target), pol,
                                    kl_rl_loss_closure(pol, mix, reward, 1.0 / eta))
        assert chk.ok, chk.detail
        pi = pol.log_probs_table().detach().exp().numpy()
    d_step = np.ptp(np.log(nash_md_iterate(P[None], mu, tau, eta, pi)) - np.log(pi))
    fixed, resid = nash_md_fixed_point(P[None], mu, tau, eta)
    tol = d_step / (1 - c) + float(resid.max()) / (1 - c)
    assert np.abs(np.log(pi) - np.log(fixed)).max() <= tol + 1e-12
