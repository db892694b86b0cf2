"""One runner per method of ``mdpalign bench rlhf``: exact curves (regret to π*, distance to the method's own
proven fixed point), the own fixed point with its certificate, and sampled curves (seeds) for the online methods.

Own fixed points: online methods — the harness's certified fixed point (:func:`~mdpalign.harness.online.
solve_fixed_point`), compared with the answer key of :mod:`mdpalign.proofs` where there is one (Gibbs for the
unbiased methods, ``grpo_optimum`` for GRPO / Dr. GRPO on the bandit); best-of-n / RAFT — ``raft_limit`` (the
start restricted to the argmax class; no finite logits, so the distance is ``Optimum.check``'s violation: the
mass left outside the class, the log-ratio error inside); Nash-MD at a constant step η — the *step's* fixed point
``nash_md_fixed_point`` (it differs from the regularised Nash equilibrium by O(η); both are reported); DPO —
``dpo_optimum``; reward model → RL — ``rlhf_pipeline_optimum`` (zero-mean gauge). Distance: ``Optimum.check``'s
``max_violation`` (nats on log-probabilities where the optimum is finite).
"""
from __future__ import annotations

import numpy as np
import torch

from mdpalign.bench.rlhf.config import ONLINE_METHODS
from mdpalign.bench.rlhf.problem import bandit_regret, tree_regret
from mdpalign.fit import fit, record_iterations
from mdpalign.harness.offline import dpo_loss_closure, tabular_policy
from mdpalign.harness.online import (
    bandit_problem,
    bradley_terry_loss_closure,
    exact_flow,
    method_spec,
    solve_fixed_point,
    split_params,
    train_sampled,
)
from mdpalign.proofs import token_tree_optimum
from mdpalign.proofs.base import optimum_from_target
from mdpalign.proofs.best_of_n import raft_iterates, raft_limit
from mdpalign.proofs.dpo import dpo_optimum
from mdpalign.proofs.grpo import grpo_optimum
from mdpalign.proofs.kl_rl import kl_rl_optimum
from mdpalign.proofs.nash import (
    nash_md_fixed_point,
    nash_md_iterate,
    regularised_nash_optimum,
)
from mdpalign.proofs.rlhf_pipeline import rlhf_pipeline_optimum

__all__ = ["online_spec", "run_method"]

_SPEC = {"reinforce": ("reinforce", "reinforce"), "rloo": ("rloo", "rloo"), "remax": ("remax", "remax"),
         "ppo_clip": ("ppo_clip", "ppo_critic"), "grpo_trl": ("grpo_trl", "grpo_trl"),
         "grpo_bias_corrected": ("grpo_bias_corrected", "grpo_bias_corrected"), "dr_grpo": ("dr_grpo", "dr_grpo")}
_GROUP = ("rloo", "grpo_trl", "grpo_bias_corrected", "dr_grpo")


def online_spec(name: str, where: str, config):
    """The harness MethodSpec of an online method on ``where`` ∈ {"bandit", "tree"}."""
    base = _SPEC[name][0 if where == "bandit" else 1]
    return method_spec(base, **({"group_size": config.group_size} if name in _GROUP else {}))


def _log_probs(problem, spec, params):
    theta, _ = split_params(problem, spec, params)
    return torch.log_softmax(theta, -1).numpy()


def _curves(regret, problems, optimum, log_probs, beta) -> dict:
    """The two curves (:data:`~mdpalign.bench.rlhf.problem.METRICS`) along a run's recorded log-policies: the
    regret to π* and the distance to the method's own fixed point ``optimum``."""
    return {"regret": [regret(problems, lp, beta) for lp in log_probs],
            "own": [float(optimum.check(log_probs=lp, tol=0.0).max_violation) for lp in log_probs]}


def _proof_key(name, where, problems, config):
    """(answer key, what it is) for an online method, or (None, why not)."""
    if where == "tree":
        if name in ("grpo_trl", "grpo_bias_corrected", "dr_grpo"):
            return None, "harness-certified only (no closed form for group methods on trees)"
        return token_tree_optimum(problems.tree, config.beta), "soft-optimal token policy (= π*)"
    r, ref, b, G = problems.rewards, problems.ref, config.beta, config.group_size
    if name in ("grpo_trl", "grpo_bias_corrected"):
        return grpo_optimum(r, ref, b, G, kl="k3_loss_is"), "π ∝ π_ref·exp(P_G(y|π)/β) (grpo_optimum, k3·ρ)"
    if name == "dr_grpo":
        return grpo_optimum(r, ref, b, G, scale_rewards="none", kl="k3_loss_is"), "Gibbs at β·G/(G−1)"
    return kl_rl_optimum(r, ref, b), "Gibbs π_ref·exp(r/β)/Z (= π*)"


def _online(name, where, problems, config):
    problem = problems.bandit if where == "bandit" else problems.tree_problem
    spec = online_spec(name, where, config)
    regret = bandit_regret if where == "bandit" else tree_regret
    res = solve_fixed_point(problem, spec)
    used = problem.used_states.numpy()
    own = optimum_from_target(name, None, log_target=res.log_probs.numpy(), constrained=used)
    key, key_what = _proof_key(name, where, problems, config)
    key_gap = None if key is None else float(key.check(log_probs=res.log_probs.numpy(), tol=0.0).max_violation)

    def curves(params_rows):
        return _curves(regret, problems, own, [_log_probs(problem, spec, p) for p in params_rows], config.beta)

    flow = exact_flow(problem, spec, steps=config.exact_steps, lr=config.exact_lr, record_every=config.eval_every)
    seeds = []
    for k in range(config.seeds):
        run = train_sampled(problem, spec, steps=config.sampled_steps, seed=config.seed + k, lr=config.sampled_lr,
                            n_prompts=config.n_prompts, record_every=config.eval_every)
        seeds.append(curves(run.params))
    return {
        "spec": {"method": spec.name, "group_size": spec.group_size, "kl_estimator": spec.kl_estimator,
                 "kl_placement": spec.kl_placement, "loss_type": spec.loss_type, "advantage": spec.advantage,
                 "scale_rewards": spec.scale_rewards, "epochs": spec.epochs, "reference": spec.reference},
        "x": flow.steps, "x_label": "step",
        "exact": curves(flow.params),
        "sampled": {"x": run.steps, **{key: [c[key] for c in seeds] for key in ("regret", "own")}},
        "own_fixed_point": {"what": "certified fixed point of the exact expected-update field",
                            "log_prob_bound": res.certificate.log_prob_bound,
                            "regret": regret(problems, res.log_probs.numpy(), config.beta),
                            "proof": key_what, "proof_gap": key_gap},
    }


def _raft(problems, config):
    its = raft_iterates(problems.rewards, problems.ref, config.raft_n, config.raft_rounds)
    lim = raft_limit(problems.rewards, problems.ref)
    with np.errstate(divide="ignore"):
        lps = [np.log(p) for p in its]
    own = [float(lim.check(probs=p, tol=0.0).max_violation) for p in its]
    regret = [bandit_regret(problems, lp, config.beta) if np.isfinite(lp).all() else float("inf") for lp in lps]
    return {"x": list(range(config.raft_rounds + 1)), "x_label": "RAFT round (best-of-n, then exact SFT)",
            "exact": {"regret": regret, "own": own},
            "own_fixed_point": {"what": "raft_limit: π_ref restricted to the argmax-reward class "
                                        f"(n = {config.raft_n})",
                                "regret": float("inf"), "proof": "raft_limit (proofs.best_of_n)", "proof_gap": None}}


def _nash(problems, config):
    r = problems.rewards
    P = 1.0 / (1.0 + np.exp(-(r[:, :, None] - r[:, None, :])))
    tau, eta = config.beta, config.nash_eta
    fixed, _ = nash_md_fixed_point(P, problems.ref, tau, eta)
    step_opt = optimum_from_target("nash_md_step", fixed)
    star = regularised_nash_optimum(P, problems.ref, tau)
    x = record_iterations(config.exact_steps, config.eval_every)
    pi = problems.ref.copy()
    rows = [pi]
    for k in range(1, config.exact_steps + 1):
        pi = nash_md_iterate(P, problems.ref, tau, eta, pi)
        if k in x:
            rows.append(pi)
    return {"x": x, "x_label": "Nash-MD step (constant η)",
            "exact": {"regret": [bandit_regret(problems, np.log(p), config.beta) for p in rows],
                      "own": [float(step_opt.check(probs=p, tol=0.0).max_violation) for p in rows]},
            "own_fixed_point": {"what": f"nash_md_fixed_point at constant η = {eta} (τ = β = {tau})",
                                "regret": bandit_regret(problems, np.log(fixed), config.beta),
                                "proof": "the step's fixed point; the regularised Nash π* is O(η) away",
                                "proof_gap": float(star.check(probs=fixed, tol=0.0).max_violation)}}


def _dpo(problems, config):
    X, K = problems.ref.shape
    pol = tabular_policy(X, K, init_scale=0.0)
    with torch.no_grad():
        pol.logits.copy_(torch.as_tensor(np.log(problems.ref)))
    loss = dpo_loss_closure(pol, problems.ref, problems.wins, config.beta)
    opt_ = dpo_optimum(problems.ref, problems.wins, config.beta)
    sgd = torch.optim.SGD(pol.parameters(), lr=config.dpo_lr * X * K * (K - 1))  # W sums to 1: per-pair scale
    x = record_iterations(config.exact_steps, config.eval_every)
    rows = []
    for k in range(config.exact_steps + 1):
        if k in x:
            rows.append(pol.log_probs_table().detach().numpy().copy())
        if k == config.exact_steps:
            break
        sgd.zero_grad()
        loss().backward()
        sgd.step()
    return {"x": x, "x_label": "full-batch SGD step on the exact DPO loss",
            "exact": _curves(bandit_regret, problems, opt_, rows, config.beta),
            "own_fixed_point": {"what": "dpo_optimum (BT all pairs: the RLHF optimum itself)",
                                "regret": bandit_regret(problems, np.log(opt_.policy), config.beta),
                                "proof": "dpo_optimum", "proof_gap": None}}


def _pipeline(problems, config):
    X, K = problems.ref.shape
    scores = torch.zeros(X, K, dtype=torch.float64, requires_grad=True)
    fit(scores, bradley_terry_loss_closure(scores, problems.wins), method="lbfgs", tol=1e-10, max_iter=500,
        require_convergence=False)
    s = scores.detach().numpy()
    s = s - s.mean(axis=1, keepdims=True)  # the zero-mean gauge gradient descent from 0 keeps (all pairs: 1 component)
    problem = bandit_problem(s, problems.ref, config.beta)
    spec = method_spec("reinforce")
    own = rlhf_pipeline_optimum(problems.wins, problems.ref, config.beta)
    flow = exact_flow(problem, spec, steps=config.exact_steps, lr=config.exact_lr, record_every=config.eval_every)
    lps = [_log_probs(problem, spec, p) for p in flow.params]
    return {"x": flow.steps, "x_label": "RL step (REINFORCE, exact) on the fitted reward model",
            "exact": _curves(bandit_regret, problems, own, lps, config.beta),
            "own_fixed_point": {"what": "rlhf_pipeline_optimum (BT MLE, zero-mean gauge, then Gibbs on it)",
                                "regret": bandit_regret(problems, np.log(own.policy), config.beta),
                                "proof": "rlhf_pipeline_optimum", "proof_gap": None}}


def run_method(name: str, where: str, problems, config) -> dict:
    """The results of one method on one problem (module docstring)."""
    if name in ONLINE_METHODS:
        return _online(name, where, problems, config)
    return {"best_of_n_raft": _raft, "nash_md": _nash, "dpo": _dpo, "rm_pipeline": _pipeline}[name](problems, config)
