"""Exact Frozen Lake numbers against roll-outs in the real gymnasium environment.

Each check is a 99.9% confidence interval (z = 3.29) around the empirical mean of N seeded
episodes, and each also asserts that the interval is narrow enough to reject a value 10% off
(|p_hat − p| <= hw and hw < 0.05·p imply |p_hat − 0.9·p| > hw), so a wrong transition table,
a wrong horizon or a wrong reward would fail rather than hide inside a wide interval.
"""
import math

import numpy as np
import pytest

from mdpalign import solve
from mdpalign.envs import frozen_lake

Z = 3.29  # two-sided 99.9% normal quantile
N_EPISODES = 4000


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval: (centre, half-width)."""
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre, half


def rollout(lake, policy, n_episodes: int, seed: int):
    """Run ``policy`` ((S,) stationary or (H, S) time-indexed) in lake.to_gymnasium().

    Returns (success flags, discounted returns sum_t gamma^t r_t, truncation flags)."""
    env = lake.to_gymnasium()
    gamma = lake.mdp.gamma
    time_indexed = policy.ndim == 2
    success = np.zeros(n_episodes, dtype=bool)
    returns = np.zeros(n_episodes)
    truncated = np.zeros(n_episodes, dtype=bool)
    env.reset(seed=seed)  # seeds the environment's generator once; later resets continue it
    for ep in range(n_episodes):
        s, _ = env.reset()
        t, done = 0, False
        while not done:
            a = int(policy[t, s] if time_indexed else policy[s])
            s, r, term, trunc, _ = env.step(a)
            returns[ep] += gamma**t * r
            success[ep] |= r > 0
            truncated[ep] = trunc
            done = term or trunc
            t += 1
        assert t <= lake.max_episode_steps
    return success, returns, truncated


def assert_in_ci(p_hat_centre: float, half: float, exact: float, what: str):
    assert abs(p_hat_centre - exact) <= half, f"{what}: exact {exact:.5f} outside {p_hat_centre:.5f} ± {half:.5f}"
    assert half < 0.05 * exact, f"{what}: half-width {half:.4f} too wide to tell {exact:.4f} from 0.9×"


@pytest.fixture(scope="module")
def lake():
    return frozen_lake("4x4", slippery=True, gamma=0.99)


def test_discounted_optimal_policy_success_and_return(lake):
    H = lake.max_episode_steps
    assert H == 100
    sol = solve.policy_iteration(lake.mdp)
    policy = np.asarray(sol.policy)
    exact_success = float(
        solve.state_success_probabilities(lake.mdp, policy, lake.goal_states, horizon=H)[lake.start_state]
    )
    exact_return = float(solve.evaluate(lake.mdp, policy, horizon=H)[0, lake.start_state])
    success, returns, truncated = rollout(lake, policy, N_EPISODES, seed=2024)
    centre, half = wilson(int(success.sum()), N_EPISODES)
    assert_in_ci(centre, half, exact_success, "success probability within 100 steps")
    mean, sd = returns.mean(), returns.std(ddof=1)
    assert_in_ci(mean, Z * sd / math.sqrt(N_EPISODES), exact_return, "discounted return within 100 steps")
    # the time limit matters here: some episodes were truncated, and the untruncated success is larger
    assert truncated.any()
    assert solve.state_success_probabilities(lake.mdp, policy, lake.goal_states)[lake.start_state] > exact_success
    # and the discounted value of the whole (untruncated) episode is larger than the time-limited one
    assert sol.values[lake.start_state] > exact_return


def test_time_limited_optimal_policy_success(lake):
    H = lake.max_episode_steps
    undiscounted = lake.mdp.with_gamma(1.0)  # reward 1 on entering G: the return is the success indicator
    fh = solve.finite_horizon(undiscounted, H)
    policy = np.asarray(fh.policy)
    assert policy.shape == (H, lake.n_states)
    exact = float(fh.values[0, lake.start_state])
    assert exact == pytest.approx(
        float(solve.state_success_probabilities(lake.mdp, policy, lake.goal_states, horizon=H)[lake.start_state]),
        abs=1e-12,
    )
    stationary = np.asarray(solve.policy_iteration(lake.mdp).policy)
    assert (
        exact
        >= solve.state_success_probabilities(lake.mdp, stationary, lake.goal_states, horizon=H)[lake.start_state]
        - 1e-12
    )
    success, _, _ = rollout(lake, policy, N_EPISODES, seed=7)
    centre, half = wilson(int(success.sum()), N_EPISODES)
    assert_in_ci(centre, half, exact, "time-limited optimal success probability")
