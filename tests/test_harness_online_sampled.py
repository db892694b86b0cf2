"""Sampled mode reaches the exact fixed point: one small case per method (a 2-arm bandit), seeded, fast.

Each of ``S`` seeds trains with real sampled groups (:func:`~mdpalign.harness.online.train_sampled`: 16 prompts per
step, SGD at ``lr = 0.3`` then ``0.05``) and tail-averages ``log pi`` over the last half of the second phase. The
exact fixed point (:func:`~mdpalign.harness.online.solve_fixed_point`, certified) must lie within

    t_{S−1, 1 − 0.025/K} · sd / √S  +  e_flow  +  certificate.log_prob_bound

of the mean over seeds, coordinate by coordinate: the 95% confidence interval from the seeds' sample variance
(Bonferroni over the ``K`` coordinates) plus the deterministic part the seeds cannot see — ``e_flow``, how far the
*exact* expected-update flow with the same schedule and the same tail average still is from the fixed point (for
methods whose sampled gradient is exactly 0 at the fixed point — RLOO, PPO with a value baseline, k3 as a loss —
the seeds agree to rounding and only this transient is left).
"""
import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from mdpalign.harness.online import (
    bandit_problem,
    exact_flow,
    method_spec,
    solve_fixed_point,
    train_sampled,
)

PROBLEM = bandit_problem([[1.0, 0.0]], [[0.3, 0.7]], 0.5)
SEEDS = 4
PHASES = ((150, 0.3), (150, 0.05))
CASES = [("reinforce", {}), ("rloo", {}), ("remax", {}), ("ppo_clip", {"epochs": 2}), ("grpo", {"group_size": 2}),
         ("grpo_trl", {"group_size": 2}), ("dr_grpo", {"group_size": 2}), ("kl_k3_loss", {}), ("kl_k2_loss", {})]


def _tail_mean(log_probs):
    return log_probs[-(PHASES[-1][0] // 2):].mean(0)


def _sampled(spec, seed):
    p = None
    for k, (steps, lr) in enumerate(PHASES):
        run = train_sampled(PROBLEM, spec, steps=steps, seed=1000 * k + seed, lr=lr, n_prompts=16, params0=p)
        p = run.params[-1]
    return _tail_mean(torch.log(run.probs[:, 0])).numpy()


def _flow(spec):
    p = None
    for steps, lr in PHASES:
        flow = exact_flow(PROBLEM, spec, steps=steps, lr=lr, params0=p)
        p = flow.params[-1]
    return _tail_mean(torch.log_softmax(flow.params, -1)).numpy()


@pytest.mark.parametrize("name, opts", CASES, ids=[n for n, _ in CASES])
def test_sampled_training_reaches_the_exact_fixed_point_within_its_confidence_interval(name, opts):
    spec = method_spec(name, **opts)
    star = solve_fixed_point(PROBLEM, spec)
    target = star.log_probs[0].numpy()
    finals = np.array([_sampled(spec, s) for s in range(SEEDS)])
    mean, sd = finals.mean(0), finals.std(0, ddof=1)
    K = target.shape[0]
    half_width = student_t.ppf(1 - 0.025 / K, SEEDS - 1) * sd / np.sqrt(SEEDS)
    e_flow = np.abs(_flow(spec) - target).max()
    tol = half_width + e_flow + star.certificate.log_prob_bound
    assert np.all(np.abs(mean - target) <= tol), (mean, target, half_width, e_flow)
    # and the runs did move: the start (the reference) is outside the interval
    assert np.all(np.abs(np.log([0.3, 0.7]) - target) > tol)
