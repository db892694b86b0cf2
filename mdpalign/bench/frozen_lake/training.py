"""The methods of the Frozen Lake experiment and their training: each method's full-batch loss (all maths from
``mdpalign.objectives``), Adam through ``mdpalign.fit.fit`` with the metrics evaluated every K steps, every method
from one seed's θ₀, and the gauge demonstration (same policy, different parameters)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mdpalign import metrics
from mdpalign import objectives as obj
from mdpalign.bench.config import BenchConfigError, FrozenLakeConfig
from mdpalign.bench.frozen_lake.networks import (
    DTYPE,
    Batch,
    Distillations,
    distill,
    distillation_loss,
    make_net,
    policy_table,
    snapshot,
    token_logps,
)
from mdpalign.bench.frozen_lake.problem import METRICS, Problem
from mdpalign.fit import fit

__all__ = ["train_method", "run_seed", "crlft_weights", "GaugeDemo", "gauge_demo"]

def _method_loss(method: str, net, problem: Problem, batch: Batch, config: FrozenLakeConfig, ref: dict):
    """The full-batch training loss of ``method`` as a closure (all math from mdpalign.objectives)."""
    opt = (batch.states[:1], batch.actions[:1], batch.mask[:1])
    sub = (batch.states[1:], batch.actions[1:], batch.mask[1:])

    if method == "sft":
        return lambda: obj.sft_loss(token_logps(net, *opt), opt[2]).sum()
    if method in ("dpo", "ipo"):
        beta, loss_type = (config.dpo_beta, "sigmoid") if method == "dpo" else (config.ipo_tau, "ipo")

        def pref():
            chosen = obj.sequence_logps(token_logps(net, *opt), opt[2])
            rejected = obj.sequence_logps(token_logps(net, *sub), sub[2])
            return obj.dpo_loss(chosen, rejected, ref["chosen"], ref["rejected"], beta=beta,
                                loss_type=loss_type).losses.sum()

        return pref
    if method == "orpo":
        return lambda: obj.orpo_loss(token_logps(net, *opt), opt[2], token_logps(net, *sub), sub[2],
                                     lam=config.orpo_lambda).losses.sum()
    if method == "ift":
        predicted = obj.successor_from_table(torch.as_tensor(problem.next_state))

        def ift():
            two = obj.ift_two_pass(net, opt[0], opt[1], opt[2], config.ift_lambda, predicted_inputs=predicted)
            return obj.ift_loss(two.token_logps, opt[2], decay=config.ift_decay).losses.sum()

        return ift
    if method == "crlft":
        classes = torch.tensor([0, 1])
        weights = crlft_weights(config)

        def crlft():
            tok = token_logps(net, batch.states, batch.actions, batch.mask, classes)
            return obj.crlft_reduce(obj.crlft_loss(tok, batch.mask, weights))

        return crlft
    if method == "oracle":
        return distillation_loss(net, problem.pi_star)
    raise BenchConfigError("unknown method {got}", got=repr(method))  # pragma: no cover - config validates


def crlft_weights(config: FrozenLakeConfig) -> torch.Tensor:
    """(expert, sub-optimal) weights: the constants given, or exp(r_c / beta) with ``crlft_beta``."""
    if config.crlft_beta is None:
        return torch.as_tensor(config.crlft_weights, dtype=DTYPE)
    return obj.crlft_class_weights(config.crlft_weights, config.crlft_beta, dtype=DTYPE)


def _evaluate(net, problem: Problem, config: FrozenLakeConfig, theta_star: dict, expert_class: bool) -> dict:
    mdp = problem.mdp
    pi = policy_table(net, expert_class)
    soft_v = metrics.soft_value(mdp, config.beta_star, None, pi)
    return {
        "param_mse": metrics.parameter_mse(snapshot(net), theta_star),
        "visitation_kl": metrics.visitation_kl(mdp, problem.pi_star, pi, weights=problem.d_star),
        "value_gap": metrics.value_gap(mdp, problem.v_hard, pi),
        "success": metrics.success_probability(mdp, pi, problem.lake.goal_states),
        "soft_value_gap": problem.soft_j_star - float(mdp.initial @ soft_v),
    }


def train_method(method: str, net, problem: Problem, batch: Batch, config: FrozenLakeConfig,
                 theta_star: dict, ref: dict) -> dict[str, list[float]]:
    """Adam from the network's current parameters; metrics at steps 0, K, 2K, ..., ``steps``."""
    loss_fn = _method_loss(method, net, problem, batch, config, ref)
    expert = method == "crlft"
    curves: dict[str, list[float]] = {k: [] for k in METRICS}
    curves["loss"] = []

    def record(point):
        for k, v in _evaluate(net, problem, config, theta_star, expert).items():
            curves[k].append(float(v))
        curves["loss"].append(point.loss)

    fit(net, loss_fn, method="adam", lr=config.lr, steps=config.steps, record_every=config.eval_every,
        on_record=record)
    return curves


def run_seed(seed: int, problem: Problem, batch: Batch, config: FrozenLakeConfig, progress=None) -> dict:
    """All methods from one seed's theta_0. Returns curves per method and the distillation records."""
    S = problem.mdp.n_states
    out = {"curves": {}, "distillation": {}}
    nets = {}
    for conditioned in (False, True) if "crlft" in config.methods else (False,):
        net = make_net(config, S, seed, n_classes=2 if conditioned else 0)
        classes_list = (0, 1) if conditioned else (None,)
        base = distill(net, problem.base_policy, config.distill_max_iter, classes_list)
        theta0 = snapshot(net)
        star = distill(net, problem.pi_star, config.distill_max_iter, (0,) if conditioned else (None,))
        theta_star = snapshot(net)
        key = "class_conditioned" if conditioned else "plain"
        out["distillation"][key] = Distillations(
            base, star, metrics.visitation_kl(problem.mdp, problem.pi_star, policy_table(net, conditioned),
                                              weights=problem.d_star))
        nets[conditioned] = (net, theta0, theta_star)
    net, theta0, _ = nets[False]
    net.load_state_dict(theta0)
    with torch.no_grad():
        ref = {
            "chosen": _seq_logps(net, batch, 0),
            "rejected": _seq_logps(net, batch, 1),
        }
    for method in config.methods:
        net, theta0, theta_star = nets[method == "crlft"]
        net.load_state_dict(theta0)
        out["curves"][method] = train_method(method, net, problem, batch, config, theta_star, ref)
        if progress is not None:
            progress.update(1)
    return out


def _seq_logps(net, batch: Batch, row: int) -> torch.Tensor:
    sl = slice(row, row + 1)
    return obj.sequence_logps(token_logps(net, batch.states[sl], batch.actions[sl], batch.mask[sl]), batch.mask[sl])


@dataclass(frozen=True)
class GaugeDemo:
    """θ* with its output bias shifted: the same policy (KL ~ 0) at a non-zero parameter MSE."""

    shift: float
    parameter: str
    param_mse: float
    visitation_kl: float


def gauge_demo(problem: Problem, config: FrozenLakeConfig) -> GaugeDemo:
    """Shift every output logit of theta* by 1 (the last layer's bias): same policy, non-zero parameter MSE."""
    net = make_net(config, problem.mdp.n_states, config.seed)
    distill(net, problem.pi_star, config.distill_max_iter)
    theta_star = snapshot(net)
    pi_before = policy_table(net)
    bias_key = [k for k, v in theta_star.items() if v.ndim == 1 and v.shape[0] == 4][-1]
    shifted = dict(theta_star)
    shifted[bias_key] = theta_star[bias_key] + 1.0
    net.load_state_dict(shifted)
    pi_after = policy_table(net)
    return GaugeDemo(1.0, bias_key, metrics.parameter_mse(shifted, theta_star),
                     metrics.visitation_kl(problem.mdp, pi_before, pi_after, weights=problem.d_star))
