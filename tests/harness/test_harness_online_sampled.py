"""Sampled mode reaches the exact fixed point: one small case per method (a 2-arm bandit; PPO with a GAE critic on a
4-leaf token tree), seeded, fast.

Each of ``S`` seeds trains with real sampled groups (:func:`~mdpalign.harness.online.train_sampled`: 16 prompts per
step, SGD at ``lr = 0.3`` then ``0.05``) and tail-averages ``log pi`` over the last half of the second phase. The
exact fixed point (:func:`~mdpalign.harness.online.solve_fixed_point`, certified) must lie within

    t_{S−1, 1 − 0.025/K} · sd / √S  +  e_flow  +  certificate.log_prob_bound

of the mean over seeds, for every log-probability of a used state: the 95% confidence interval from the seeds'
sample variance (Bonferroni over the ``K`` coordinates) plus the deterministic part the seeds cannot see —
``e_flow``, how far the
*exact* expected-update flow with the same schedule and the same tail average still is from the fixed point (for
methods whose sampled gradient is exactly 0 at the fixed point — RLOO, PPO with a value baseline, k3 as a loss —
the seeds agree to rounding and only this transient is left).
"""
import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from mdpalign.envs.token_tree import random_token_tree
from mdpalign.harness.online import (
    bandit_problem,
    exact_flow,
    method_spec,
    solve_fixed_point,
    split_params,
    train_sampled,
    tree_problem,
)

BANDIT = bandit_problem([[1.0, 0.0]], [[0.3, 0.7]], 0.5)
TREE = tree_problem(random_token_tree(2, 2, seed=0), 0.5)  # PPO with a learned critic: a token-level method
SEEDS = 4
PHASES = ((150, 0.3), (150, 0.05))
TREE_PHASES = ((50, 0.3), (50, 0.05))  # a GAE step costs ~6 bandit steps; e_flow absorbs the shorter schedule
CASES = [("reinforce", {}, BANDIT), ("rloo", {}, BANDIT), ("remax", {}, BANDIT), ("ppo_clip", {"epochs": 2}, BANDIT),
         ("grpo", {"group_size": 2}, BANDIT), ("grpo_trl", {"group_size": 2}, BANDIT),
         ("dr_grpo", {"group_size": 2}, BANDIT), ("kl_k3_loss", {}, BANDIT), ("kl_k2_loss", {}, BANDIT),
         ("ppo_critic", {"epochs": 1}, TREE)]


def _phases(problem):
    return TREE_PHASES if problem is TREE else PHASES


def _tail_mean(log_probs, phases):
    return log_probs[-(phases[-1][0] // 2):].mean(0)


def _sampled(problem, spec, seed, used):
    p = None
    for k, (steps, lr) in enumerate(_phases(problem)):
        run = train_sampled(problem, spec, steps=steps, seed=1000 * k + seed, lr=lr, n_prompts=16, params0=p)
        p = run.params[-1]
    return _tail_mean(torch.log(run.probs[:, used]).flatten(1), _phases(problem)).numpy()


def _flow(problem, spec, used):
    p = None
    for steps, lr in _phases(problem):
        flow = exact_flow(problem, spec, steps=steps, lr=lr, params0=p)
        p = flow.params[-1]
    theta, _ = split_params(problem, spec, flow.params)
    return _tail_mean(torch.log_softmax(theta, -1)[:, used].flatten(1), _phases(problem)).numpy()


@pytest.mark.parametrize("name, opts, problem", CASES, ids=[n for n, _, _ in CASES])
def test_sampled_training_reaches_the_exact_fixed_point_within_its_confidence_interval(name, opts, problem):
    spec = method_spec(name, **opts)
    star = solve_fixed_point(problem, spec)
    used = problem.used_states
    target = star.log_probs[used].flatten().numpy()
    finals = np.array([_sampled(problem, spec, s, used) for s in range(SEEDS)])
    mean, sd = finals.mean(0), finals.std(0, ddof=1)
    K = target.shape[0]
    half_width = student_t.ppf(1 - 0.025 / K, SEEDS - 1) * sd / np.sqrt(SEEDS)
    e_flow = np.abs(_flow(problem, spec, used) - target).max()
    tol = half_width + e_flow + star.certificate.log_prob_bound
    assert np.all(np.abs(mean - target) <= tol), (mean, target, half_width, e_flow)
    # and the runs did move: the start (the reference) is outside the interval
    start = problem.ref_log_probs[used].flatten().numpy()
    assert np.abs(start - target).max() > tol.max()
