"""The two problems of ``mdpalign bench rlhf`` and their KL-regularised optima.

Bandit: ``contexts × arms``, rewards ``N(0, 1)``, π_ref ``Dirichlet(1)`` mixed half with uniform (bounded away from
0), contexts uniform, from ``bandit_seed``. Preference data: every ordered pair once with Bradley–Terry labels
``W[x, i, j] = σ(r_i − r_j)/(X·K(K−1))`` (all pairs: DPO and the pipeline land on π*). Tree:
:func:`~mdpalign.envs.token_tree.random_token_tree` (EOS = token 0, so responses of different lengths).
Regret: ``β·E_x KL(π(·|x)‖π*(·|x))`` on the bandit, ``β·KL(π(y)‖π*(y))`` over the tree's leaves — the exact gap
``J(π*) − J(π)`` of the KL-regularised objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdpalign.bench import report as rp
from mdpalign.envs.token_tree import TokenTree, random_token_tree
from mdpalign.harness.online import OnlineProblem, bandit_problem, tree_problem
from mdpalign.proofs import token_tree_optimum
from mdpalign.proofs.kl_rl import kl_rl_optimum

__all__ = ["METRICS", "Problems", "bandit_regret", "make_problems", "tree_regret"]

#: The two curves every method records (``entry["exact"][key]``, ``entry["sampled"][key]``), in report order.
METRICS = {
    "regret": rp.Metric("regret β·KL(π‖π*)", lower_is_better=True, log_scale=True),
    "own": rp.Metric("distance to own fixed point", lower_is_better=True, log_scale=True),
}


@dataclass(frozen=True, eq=False)
class Problems:
    rewards: np.ndarray
    ref: np.ndarray
    wins: np.ndarray
    bandit: OnlineProblem
    tree: TokenTree
    tree_problem: OnlineProblem
    bandit_star: np.ndarray      # log π* (X, K)
    tree_star_leaf: np.ndarray   # log π*(y) over leaves


def make_problems(config) -> Problems:
    rng = np.random.default_rng(config.bandit_seed)
    X, K = config.contexts, config.arms
    r = rng.standard_normal((X, K))
    ref = 0.5 * rng.dirichlet(np.ones(K), size=X) + 0.5 / K
    ref /= ref.sum(axis=1, keepdims=True)
    d = r[:, :, None] - r[:, None, :]
    W = 1.0 / (1.0 + np.exp(-d))
    W[:, np.arange(K), np.arange(K)] = 0.0
    W /= W.sum()
    tree = random_token_tree(config.tree_vocab, config.tree_length, seed=config.tree_seed)
    star = np.log(kl_rl_optimum(r, ref, config.beta).policy)
    leaf_star = np.array(tree.leaf_log_probs(np.log(token_tree_optimum(tree, config.beta).policy)))
    return Problems(r, ref, W, bandit_problem(r, ref, config.beta), tree, tree_problem(tree, config.beta), star,
                    leaf_star)


def _kl_rows(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    p = np.exp(log_p)
    return np.where(p > 0, p * (log_p - np.where(p > 0, log_q, 0.0)), 0.0).sum(-1)


def bandit_regret(problems: Problems, log_probs: np.ndarray, beta: float) -> float:
    """``β·E_x KL(π‖π*)`` (contexts uniform); clamped at 0 (a KL: only float64 rounding can make it negative)."""
    return max(0.0, float(beta * _kl_rows(log_probs, problems.bandit_star).mean()))


def tree_regret(problems: Problems, log_probs: np.ndarray, beta: float) -> float:
    """``β·KL(π(y)‖π*(y))`` over leaves, ``log π(y)`` the sum of token log-probs along the path."""
    leaf = np.array(problems.tree.leaf_log_probs(log_probs))
    return max(0.0, float(beta * _kl_rows(leaf, problems.tree_star_leaf)))
