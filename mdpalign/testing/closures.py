"""Exact population losses of a :class:`~mdpalign.testing.regimes.Problem`, built from the USER's loss function.

The counterpart of the ``*_loss_closure`` builders of :mod:`mdpalign.harness.offline`, which build the same
population losses from the library's objectives: here the per-example function is the one being checked, so every
fit exercises the user's code. Each closure is ``sum_rows weight * fn(row tensors)`` over the regime's exact data
(weights are the population probabilities, not samples); the caller fits it with
:func:`mdpalign.harness.offline.fit_tabular` and certifies the result with
:func:`mdpalign.harness.offline.certified_logit_error`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mdpalign.policies import TabularPolicy
from mdpalign.testing.adapters import call_loss
from mdpalign.testing.regimes import Problem

__all__ = ["population_loss"]

_f64 = torch.float64


def _rows(W: np.ndarray):
    x, i, j = np.nonzero(W > 0)
    t = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return t(x), t(i), t(j), torch.as_tensor(W[x, i, j], dtype=_f64)


def _preference(fn, problem: Problem, policy: TabularPolicy):
    x, i, j, w = _rows(problem.W)
    log_ref = torch.as_tensor(np.log(problem.ref_policy), dtype=_f64)
    rc, rr = log_ref[x, i], log_ref[x, j]

    def loss():
        lp = policy.log_probs(x)
        pc, pr = lp.gather(1, i[:, None]).squeeze(1), lp.gather(1, j[:, None]).squeeze(1)
        return (w * call_loss(fn, "preference", (pc, pr, rc, rr), problem.beta)).sum()

    return loss


def _reward_model(fn, problem: Problem, policy: TabularPolicy):
    # the score table is the policy's raw logits table: one free score per (context, response)
    x, i, j, w = _rows(problem.W)
    return lambda: (w * call_loss(fn, "reward_model", (policy.logits[x, i], policy.logits[x, j]), None)).sum()


def _demonstration(fn, problem: Problem, policy: TabularPolicy):
    if problem.tree is not None:
        p = problem.tree.leaf_token_paths()
        keep = np.flatnonzero(problem.demos > 0)
        states, actions = (torch.as_tensor(np.array(a)[keep]) for a in (p.states, p.actions))
        mask = torch.as_tensor(np.array(p.mask)[keep])
        w = torch.as_tensor(problem.demos[keep], dtype=_f64)
    else:
        xs, ys = np.nonzero(problem.demos > 0)
        states, actions = torch.as_tensor(xs)[:, None], torch.as_tensor(ys)[:, None]
        mask = torch.ones_like(states, dtype=torch.bool)
        w = torch.as_tensor(problem.demos[xs, ys], dtype=_f64)
    return lambda: (w * call_loss(fn, "demonstration", (policy.token_logps(states, actions), mask),
                                  problem.beta)).sum()


def _class_weighted(fn, problem: Problem, policy: TabularPolicy):
    D = problem.demos
    X, C, K = D.shape
    x, c, y = np.nonzero(D > 0)
    s = x * C + c if problem.regime == "conditioned" else x
    states, actions = torch.as_tensor(s)[:, None], torch.as_tensor(y)[:, None]
    mass = torch.as_tensor(D[x, c, y], dtype=_f64)
    wc = torch.as_tensor(problem.class_weights[c], dtype=_f64)
    mask = torch.ones_like(states, dtype=torch.bool)
    return lambda: (mass * call_loss(fn, "class_weighted", (policy.token_logps(states, actions), mask, wc),
                                     problem.beta)).sum()


_BUILDERS = {"preference": _preference, "reward_model": _reward_model, "demonstration": _demonstration,
             "class_weighted": _class_weighted}


def population_loss(fn: Callable, problem: Problem, policy: TabularPolicy) -> Callable[[], torch.Tensor]:
    """The exact population loss of ``problem`` as a closure over ``policy``'s logits, through ``fn``."""
    return _BUILDERS[problem.kind](fn, problem, policy)
