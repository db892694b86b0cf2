"""Training on the bandits: a tabular policy from π_ref, Adam through ``mdpalign.fit.fit`` on the exact
population loss (:mod:`mdpalign.harness.offline`), every seed at once."""
from __future__ import annotations

import numpy as np
import torch

from mdpalign.bench.bandits.data import SeedData
from mdpalign.bench.bandits.optima import expert_rows, rlhf_regret
from mdpalign.bench.config import BanditsConfig
from mdpalign.fit import fit
from mdpalign.harness import offline as h
from mdpalign.policies import TabularPolicy

__all__ = ["train_objective"]

def _stacked(datas: list[SeedData]) -> SeedData:
    return SeedData(*(np.concatenate([getattr(d, f) for d in datas]) for f in SeedData.__dataclass_fields__))


def _loss(objective: str, policy, data: SeedData, config: BanditsConfig):
    if objective == "sft":
        return h.sft_loss_closure(policy, data.D)
    if objective == "dpo":
        return h.dpo_loss_closure(policy, data.ref, data.W, config.beta)
    if objective == "ipo":
        return h.dpo_loss_closure(policy, data.ref, data.W, config.beta, loss_type="ipo")
    if objective == "orpo":
        return h.orpo_loss_closure(policy, data.W, config.orpo_lambda)
    if objective == "crlft":
        return h.crlft_loss_closure(policy, data.D3, config.crlft_weights, conditioned=True)
    if objective == "kl_rl":
        # the stacked contexts carry every seed's mu (each summing to 1): weight them explicitly
        return h.kl_rl_loss_closure(policy, data.ref, data.rewards, config.beta,
                                       context_probs=data.mu / data.mu.sum())
    raise ValueError(f"unknown objective {objective!r}")  # pragma: no cover


def train_objective(objective: str, datas: list[SeedData], config: BanditsConfig, opts: list) -> dict[str, np.ndarray]:
    """Adam from pi_ref on all seeds at once; curves (seeds, n_evals) of own-optimum violation and regret."""
    data = _stacked(datas)
    X = datas[0].ref.shape[0]
    log_ref = np.log(data.ref)
    if objective == "crlft":
        log_ref = np.repeat(log_ref, 2, axis=0)  # state x*2 + c; both classes start at pi_ref
    policy = TabularPolicy(*log_ref.shape, dtype=torch.float64, logits=torch.as_tensor(log_ref))
    loss_fn = _loss(objective, policy, data, config)
    rows = 2 * X if objective == "crlft" else X
    own, regret, losses = [], [], []

    def record(point):
        with torch.no_grad():
            lp = policy.log_probs_table().numpy()
        own.append([float("nan") if o is None else o.check(log_probs=lp[k * rows:(k + 1) * rows]).max_violation
                    for k, o in enumerate(opts)])
        regret.append([rlhf_regret(d, None, config.beta, expert_rows(lp[k * rows:(k + 1) * rows], objective))
                       for k, d in enumerate(datas)])
        losses.append(point.loss)

    fit(policy, loss_fn, method="adam", lr=config.lr, steps=config.steps, record_every=config.eval_every,
        on_record=record)
    return {"own_optimum": np.array(own).T, "rlhf_regret": np.array(regret).T, "loss": np.array(losses)}
