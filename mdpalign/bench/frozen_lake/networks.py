"""The tensors and networks of the Frozen Lake experiment: the two demonstrations as one padded batch, the MLP
policy, its table at every state, and the L-BFGS distillations that give θ₀ and θ*."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mdpalign.bench.config import FrozenLakeConfig
from mdpalign.bench.frozen_lake.problem import Problem
from mdpalign.fit import fit
from mdpalign.objectives import sft_loss, token_logps_from_logits
from mdpalign.policies import MLPPolicy

__all__ = ["Batch", "trajectory_batch", "make_net", "token_logps", "policy_table", "snapshot", "distill",
           "DistillationFit", "Distillations", "DTYPE", "DISTILL_TOL"]

DTYPE = torch.float64


#: Gradient-norm target of the distillations (theta_0, theta*); their reached KL is reported.
DISTILL_TOL = 1e-6


@dataclass(frozen=True)
class Batch:
    """The two demonstrations, padded to one length: row 0 optimal, row 1 sub-optimal."""

    states: torch.Tensor  # (2, T) int64
    actions: torch.Tensor  # (2, T) int64
    mask: torch.Tensor  # (2, T) bool


def trajectory_batch(problem: Problem) -> Batch:
    trajs = (problem.two.optimal, problem.two.suboptimal)
    T = max(len(t) for t in trajs)
    states = torch.zeros((2, T), dtype=torch.int64)
    actions = torch.zeros((2, T), dtype=torch.int64)
    mask = torch.zeros((2, T), dtype=torch.bool)
    for i, t in enumerate(trajs):
        n = len(t)
        states[i, :n] = torch.tensor(t.states)
        actions[i, :n] = torch.tensor(t.actions)
        mask[i, :n] = True
    return Batch(states, actions, mask)


def make_net(config: FrozenLakeConfig, n_states: int, seed: int, n_classes: int = 0):
    return MLPPolicy(n_states, 4, hidden=config.hidden, input="onehot", n_classes=n_classes, seed=seed, dtype=DTYPE)


def token_logps(net, states, actions, mask, classes=None) -> torch.Tensor:
    """log pi(a_t|s_t) of padded demonstrations (B, T), 0 where masked; ``classes`` (B,): one class per row."""
    return token_logps_from_logits(net.sequence_logits(states, classes), actions, mask)


def policy_table(net, expert_class: bool = False) -> np.ndarray:
    """The network's policy at every state, (S, A) float64 (class 0 = expert when conditioned)."""
    with torch.no_grad():
        return net.probs(0 if expert_class else None).to(torch.float64).numpy()


def snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def distillation_loss(net, target: np.ndarray, classes_list=(None,)):
    """SFT with soft targets at every state: (1/S) sum_s sum_a target(a|s) (-log pi(a|s)), averaged over classes.

    Each (s, a) pair is a one-token demonstration of weight target(a|s); minimised exactly at
    pi = target (cross-entropy), so a finite minimiser exists when target > 0.
    """
    S, A = target.shape
    weight = torch.as_tensor(target.reshape(-1), dtype=DTYPE)
    mask = torch.ones((S * A, 1), dtype=torch.bool)

    def loss():
        total = 0.0
        for cls in classes_list:
            # one forward over the S states; the (s, a) tokens are read off the log-prob table
            token_logps = net.log_probs_table(cls).reshape(S * A, 1)
            total = total + (weight * sft_loss(token_logps, mask)).sum() / S
        return total / len(classes_list)

    return loss


@dataclass(frozen=True)
class DistillationFit:
    """Where an L-BFGS distillation stopped."""

    loss: float
    grad_norm: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class Distillations:
    """One network's θ₀ and θ* distillations and how faithfully θ* represents π* (visitation KL)."""

    theta0: DistillationFit
    theta_star: DistillationFit
    theta_star_kl: float


def distill(net, target: np.ndarray, max_iter: int, classes_list=(None,)) -> DistillationFit:
    """Minimise the distillation loss to convergence with L-BFGS; returns what it reached."""
    loss_fn = distillation_loss(net, target, classes_list)
    result = fit(net, loss_fn, method="lbfgs", max_iter=max_iter, tol=DISTILL_TOL)
    return DistillationFit(float(result.loss), float(result.grad_norm), int(result.iterations),
                           bool(result.converged))
