"""The bandits and their data tables, one regime at a time (population data from :mod:`mdpalign.envs.bandits`,
exact weights)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdpalign.bench.config import BanditsConfig
from mdpalign.envs import bandits as eb
from mdpalign.proofs import kl_rl_optimum, pair_table
from mdpalign.proofs.crlft import crlft_table

__all__ = ["SeedData", "seed_data", "REGIME_TITLES"]

REGIME_TITLES = {
    "bt_all_pairs": "all pairs, Bradley–Terry labels",
    "partial_coverage": "partial coverage (two components), BT",
    "deterministic": "all pairs, deterministic labels",
    "mixed_quality": "mixed-quality class-labelled demonstrations",
}


@dataclass(frozen=True)
class SeedData:
    """One bandit and its data tables for one regime."""

    rewards: np.ndarray  # (X, K)
    ref: np.ndarray  # (X, K)
    mu: np.ndarray  # (X,)
    W: np.ndarray  # (X, K, K) win weights: W[x, i, j] = weight of "i chosen over j"
    D: np.ndarray  # (X, K) demonstrations for SFT
    D3: np.ndarray  # (X, 2, K) class-labelled demonstrations (0 expert, 1 sub-optimal)


def _bandit(config: BanditsConfig, seed: int):
    return eb.random_contextual_bandit(config.contexts, config.arms, seed=seed, reward_scale=config.reward_scale)


def seed_data(config: BanditsConfig, regime: str, seed: int) -> SeedData:
    b = _bandit(config, seed)
    X, K = b.rewards.shape
    if regime == "mixed_quality":
        expert = kl_rl_optimum(b.rewards, b.ref_policy, config.beta).policy
        demos = eb.mixed_quality_demonstrations(b, expert, b.ref_policy, expert_fraction=config.expert_fraction,
                                                class_rewards=None)
        D3 = crlft_table(demos, X, K, 2)
        D = D3.sum(axis=1)
        pe, ps = D3[:, 0] / D3[:, 0].sum(axis=1, keepdims=True), D3[:, 1] / D3[:, 1].sum(axis=1, keepdims=True)
        W = b.context_probs[:, None, None] * pe[:, :, None] * ps[:, None, :]
        W[:, np.arange(K), np.arange(K)] = 0.0  # the same arm twice carries no preference
    else:
        coverage = "partial" if regime == "partial_coverage" else "all"
        labels = "deterministic" if regime == "deterministic" else "bt"
        kw = {"partial_fraction": config.partial_fraction, "connected": False} if coverage == "partial" else {}
        pairs = eb.preference_pairs(b, coverage=coverage, labels=labels, seed=seed, **kw)
        W = pair_table(pairs, X, K)
        D = W.sum(axis=2)
        D3 = np.stack([W.sum(axis=2), W.sum(axis=1)], axis=1)
    return SeedData(b.rewards, b.ref_policy, b.context_probs, W, D, D3)
