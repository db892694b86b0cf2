"""The IFT paper's Frozen Lake alignment experiment (arXiv 2405.11870, sec. 5.3, app. B.2), made precise.

The paper states: a lake with one optimal and one sub-optimal trajectory; a two-layer fully
connected policy; an "optimal parameterised policy" trained on the optimal state-action
probabilities; SFT and IFT trained on the optimal trajectory, DPO and ORPO on (optimal,
sub-optimal) as (chosen, rejected); metric = MSE between trained and optimal parameters;
reported order DPO best, then IFT, then ORPO, then SFT. Everything else is our choice, made
explicit here and published in every report:

* pi*: the soft-optimal policy of soft value iteration at temperature ``beta_star`` with a
  uniform reference (every action has positive probability, so finite logits represent it).
* theta_0 (per seed): the MLP from its seeded initialisation, distilled (L-BFGS, to
  convergence) onto the base behaviour policy (uniform by default) at every state. It is the
  common initialisation of every method and the reference pi_ref of DPO/IPO.
* theta* (per seed): theta_0 distilled onto pi* at every state — the paper's "optimal
  parameterised policy". Distillation is SFT with soft targets: sum_s sum_a pi*(a|s) (-log pi(a|s)).
* Methods (Adam, full batch, the same lr and number of steps for all):
  SFT on the optimal trajectory; IFT on it (two passes, fused input (1-lam) onehot(s_t) +
  lam onehot(s_hat_t), s_hat_t where the greedy action at s_{t-1} leads on the deterministic
  lake); DPO, IPO (summed trajectory log-probs) and ORPO on (optimal, sub-optimal); C-RLFT on
  both trajectories with a class-conditioned network (expert / sub-optimal), evaluated under
  the expert class; the oracle: the distillation loss itself, optimised with the same Adam.
* Metrics over training: parameter MSE to theta*; visitation-weighted KL(pi* || pi); value gap
  J(pi_hard*) - J(pi) to the hard optimum; success probability within gymnasium's time limit;
  soft-value gap V*_beta(s0) - V^pi_beta(s0). All exact (linear solves), float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdpalign import metrics
from mdpalign.bench import report as rp
from mdpalign.bench.config import BenchConfigError, FrozenLakeConfig

__all__ = ["run_frozen_lake_bench", "METRICS", "PAPER_ORDER", "build_problem"]

#: The paper's reported order, best first (by its parameter MSE).
PAPER_ORDER = ("dpo", "ift", "orpo", "sft")

#: What is measured over training, in report order.
METRICS = {
    "param_mse": rp.Metric("parameter MSE to θ* (the paper's metric)", lower_is_better=True, log_scale=True),
    "visitation_kl": rp.Metric("visitation-weighted KL(π* ‖ π)", lower_is_better=True, log_scale=True),
    "value_gap": rp.Metric("value gap J(π_opt) − J(π)", lower_is_better=True, log_scale=False),
    "success": rp.Metric("probability of reaching G", lower_is_better=False, log_scale=False),
    "soft_value_gap": rp.Metric("soft-value gap V*_β(s0) − V^π_β(s0)", lower_is_better=True, log_scale=True),
}

METHOD_DATA = {
    "sft": "optimal trajectory",
    "ift": "optimal trajectory",
    "dpo": "(optimal, sub-optimal) as (chosen, rejected)",
    "ipo": "(optimal, sub-optimal) as (chosen, rejected)",
    "orpo": "(optimal, sub-optimal) as (chosen, rejected)",
    "crlft": "both trajectories, labelled expert / sub-optimal",
    "oracle": "π* at every state (the bound)",
}

DTYPE = torch.float64
#: Gradient-norm target of the distillations (theta_0, theta*); their reached KL is reported.
DISTILL_TOL = 1e-6


# --------------------------------------------------------------------------- the problem
@dataclass(frozen=True, eq=False)
class Problem:
    """Everything fixed across seeds and methods: the lake, its trajectories and its targets."""

    two: object  # mdpalign.envs.frozen_lake.TwoPathLake
    pi_star: np.ndarray  # (S, A) soft-optimal policy at beta_star
    v_hard: np.ndarray  # (S,) optimal values
    hard_policy: np.ndarray  # (S,) greedy optimal policy
    soft_j_star: float  # V*_beta(s0)
    d_star: np.ndarray  # (S,) visitation of pi*
    base_policy: np.ndarray  # (S, A) behaviour policy theta_0 is distilled from
    next_state: np.ndarray  # (S, A) deterministic successor (IFT's s_hat)
    horizon: int

    @property
    def lake(self):
        return self.two.lake

    @property
    def mdp(self):
        return self.two.lake.mdp


def _make_lake(config: FrozenLakeConfig):
    """The two-trajectory lake of ``--map``; simple paths are enumerated up to 2 (rows + cols) steps
    (an open map has exponentially many longer ones)."""
    from mdpalign.envs.frozen_lake import InvalidMapError, two_path_lake, two_path_lake_from_map

    try:
        if config.map == "two-path":
            return two_path_lake(config.suboptimal, slippery=config.slippery, gamma=config.gamma)
        if config.map in ("4x4", "8x8"):
            from gymnasium.envs.toy_text.frozen_lake import MAPS

            rows = tuple(MAPS[config.map])
        else:
            rows = config.map_rows
        max_len = 2 * (len(rows) + max(len(r) for r in rows)) if rows else None
        return two_path_lake_from_map(rows, config.suboptimal, slippery=config.slippery, gamma=config.gamma,
                                      max_len=max_len)
    except InvalidMapError as exc:
        raise BenchConfigError(f"--map {config.map!r} cannot be used: {exc}") from None


def build_problem(config: FrozenLakeConfig) -> Problem:
    """The lake and its exact targets (pi*, V*, visitation), all float64."""
    from mdpalign.solve import policy_iteration, soft_value_iteration

    two = _make_lake(config)
    mdp = two.lake.mdp
    soft = soft_value_iteration(mdp, config.beta_star)
    pi_star = np.asarray(soft.policy_probs, dtype=np.float64)
    hard = policy_iteration(mdp)
    S, A = mdp.n_states, mdp.n_actions
    if config.base == "uniform":
        base = np.full((S, A), 1.0 / A)
    else:
        base = np.full((S, A), config.base_epsilon / A)
        base[np.arange(S), hard.policy] += 1.0 - config.base_epsilon
    next_state = np.array([[two.lake.deterministic_step(s, a) for a in range(A)] for s in range(S)], dtype=np.int64)
    return Problem(
        two=two,
        pi_star=pi_star,
        v_hard=np.asarray(hard.values, dtype=np.float64),
        hard_policy=np.asarray(hard.policy, dtype=np.int64),
        soft_j_star=float(mdp.initial @ np.asarray(soft.values, dtype=np.float64)),
        d_star=metrics.visitation(mdp, pi_star),
        base_policy=base,
        next_state=next_state,
        horizon=int(two.lake.max_episode_steps),
    )


# --------------------------------------------------------------------------- data as tensors
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


# --------------------------------------------------------------------------- networks
def _make_net(config: FrozenLakeConfig, n_states: int, seed: int, n_classes: int = 0):
    from mdpalign.policies import MLPPolicy

    return MLPPolicy(n_states, 4, hidden=config.hidden, input="onehot", n_classes=n_classes, seed=seed, dtype=DTYPE)


def _token_logps(net, states, actions, mask, classes=None) -> torch.Tensor:
    """log pi(a_t|s_t) of padded demonstrations (B, T), 0 where masked; ``classes`` (B,): one class per row."""
    from mdpalign.objectives import token_logps_from_logits

    return token_logps_from_logits(net.sequence_logits(states, classes), actions, mask)


def policy_table(net, expert_class: bool = False) -> np.ndarray:
    """The network's policy at every state, (S, A) float64 (class 0 = expert when conditioned)."""
    with torch.no_grad():
        return net.probs(0 if expert_class else None).to(torch.float64).numpy()


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _distillation_loss(net, target: np.ndarray, classes_list=(None,)):
    """SFT with soft targets at every state: (1/S) sum_s sum_a target(a|s) (-log pi(a|s)), averaged over classes.

    Each (s, a) pair is a one-token demonstration of weight target(a|s); minimised exactly at
    pi = target (cross-entropy), so a finite minimiser exists when target > 0.
    """
    from mdpalign.objectives import sft_loss

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


def _distill(net, target: np.ndarray, max_iter: int, classes_list=(None,)) -> DistillationFit:
    """Minimise the distillation loss to convergence with L-BFGS; returns what it reached."""
    from mdpalign.fit import fit

    loss_fn = _distillation_loss(net, target, classes_list)
    result = fit(net, loss_fn, method="lbfgs", max_iter=max_iter, tol=DISTILL_TOL)
    return DistillationFit(float(result.loss), float(result.grad_norm), int(result.iterations),
                           bool(result.converged))


# --------------------------------------------------------------------------- methods
def _method_loss(method: str, net, problem: Problem, batch: Batch, config: FrozenLakeConfig, ref: dict):
    """The full-batch training loss of ``method`` as a closure (all math from mdpalign.objectives)."""
    from mdpalign import objectives as obj

    opt = (batch.states[:1], batch.actions[:1], batch.mask[:1])
    sub = (batch.states[1:], batch.actions[1:], batch.mask[1:])

    if method == "sft":
        return lambda: obj.sft_loss(_token_logps(net, *opt), opt[2]).sum()
    if method in ("dpo", "ipo"):
        beta, loss_type = (config.dpo_beta, "sigmoid") if method == "dpo" else (config.ipo_tau, "ipo")

        def pref():
            chosen = obj.sequence_logps(_token_logps(net, *opt), opt[2])
            rejected = obj.sequence_logps(_token_logps(net, *sub), sub[2])
            return obj.dpo_loss(chosen, rejected, ref["chosen"], ref["rejected"], beta=beta,
                                loss_type=loss_type).losses.sum()

        return pref
    if method == "orpo":
        return lambda: obj.orpo_loss(_token_logps(net, *opt), opt[2], _token_logps(net, *sub), sub[2],
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
            tok = _token_logps(net, batch.states, batch.actions, batch.mask, classes)
            return obj.crlft_reduce(obj.crlft_loss(tok, batch.mask, weights))

        return crlft
    if method == "oracle":
        return _distillation_loss(net, problem.pi_star)
    raise BenchConfigError(f"unknown method {method!r}")  # pragma: no cover - config validates


def crlft_weights(config: FrozenLakeConfig) -> torch.Tensor:
    """(expert, sub-optimal) weights: the constants given, or exp(r_c / beta) with ``crlft_beta``."""
    from mdpalign.objectives import crlft_class_weights

    if config.crlft_beta is None:
        return torch.as_tensor(config.crlft_weights, dtype=DTYPE)
    return crlft_class_weights(config.crlft_weights, config.crlft_beta, dtype=DTYPE)


def _evaluate(net, problem: Problem, config: FrozenLakeConfig, theta_star: dict, expert_class: bool) -> dict:
    mdp = problem.mdp
    pi = policy_table(net, expert_class)
    soft_v = metrics.soft_value(mdp, config.beta_star, None, pi)
    return {
        "param_mse": metrics.parameter_mse(_snapshot(net), theta_star),
        "visitation_kl": metrics.visitation_kl(mdp, problem.pi_star, pi, weights=problem.d_star),
        "value_gap": metrics.value_gap(mdp, problem.v_hard, pi),
        "success": metrics.success_probability(mdp, pi, problem.lake.goal_states),
        "soft_value_gap": problem.soft_j_star - float(mdp.initial @ soft_v),
    }


def train_method(method: str, net, problem: Problem, batch: Batch, config: FrozenLakeConfig,
                 theta_star: dict, ref: dict) -> dict[str, list[float]]:
    """Adam from the network's current parameters; metrics at steps 0, K, 2K, ..., ``steps``."""
    from mdpalign.fit import fit

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
        net = _make_net(config, S, seed, n_classes=2 if conditioned else 0)
        classes_list = (0, 1) if conditioned else (None,)
        base = _distill(net, problem.base_policy, config.distill_max_iter, classes_list)
        theta0 = _snapshot(net)
        star = _distill(net, problem.pi_star, config.distill_max_iter, (0,) if conditioned else (None,))
        theta_star = _snapshot(net)
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
    from mdpalign.objectives import sequence_logps

    sl = slice(row, row + 1)
    return sequence_logps(_token_logps(net, batch.states[sl], batch.actions[sl], batch.mask[sl]), batch.mask[sl])


# --------------------------------------------------------------------------- summary
def summarise(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Final means, CIs, rankings per metric and the comparison with the paper's order."""
    final: dict = {}
    for m in methods:
        final[m] = {}
        for k in METRICS:
            final[m][k] = rp.MeanCI.of(curves[m][k][:, -1])
    rankings = {k: rp.rank({m: final[m][k].mean for m in methods}, higher_is_better=not metric.lower_is_better)
                for k, metric in METRICS.items()}
    return {"final": final, "rankings": rankings, "paper": paper_agreement(curves, methods),
            "rankings_over_training": rankings_over_training(curves, methods),
            "param_mse_vs_kl": param_mse_vs_kl(curves, methods)}


def checkpoint_indices(n_points: int) -> list[int]:
    """Evaluation indices at about 10%, 25%, 50% and 100% of training (step 0 excluded), distinct."""
    last = n_points - 1
    idx = sorted({max(1, round(f * last)) for f in (0.1, 0.25, 0.5, 1.0)})
    return [i for i in idx if 1 <= i <= last]


def rankings_over_training(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Ranking of the methods by each metric's seed-mean at a few checkpoints: {metric: {index: order}}."""
    n_points = curves[methods[0]]["param_mse"].shape[1]
    out = {}
    for k, metric in METRICS.items():
        out[k] = {str(j): rp.rank({m: float(curves[m][k][:, j].mean()) for m in methods},
                                  higher_is_better=not metric.lower_is_better)
                  for j in checkpoint_indices(n_points)}
    return out


def param_mse_vs_kl(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Where each method's mean parameter MSE is smallest, and how it and the KL move from there to the end."""
    out = {}
    for m in methods:
        mse = curves[m]["param_mse"].mean(axis=0)
        kl = curves[m]["visitation_kl"].mean(axis=0)
        j = int(np.argmin(mse))
        out[m] = {"min_index": j, "param_mse_min": float(mse[j]), "param_mse_final": float(mse[-1]),
                  "kl_at_min": float(kl[j]), "kl_final": float(kl[-1])}
    return out


def paper_agreement(curves: dict[str, dict[str, np.ndarray]], methods) -> dict:
    """Compare each metric's final order of the paper's four methods with DPO < IFT < ORPO < SFT.

    For every pair (a, b) that the paper puts a before b we record whether our mean agrees and
    whether the paired difference over seeds is separated from 0 at 95% (t-interval of the
    per-seed differences: all methods of one seed share theta_0).
    """
    present = [m for m in PAPER_ORDER if m in methods]
    out = {}
    for k, metric in METRICS.items():
        lower = metric.lower_is_better
        sign = 1.0 if lower else -1.0
        finals = {m: curves[m][k][:, -1] for m in present}
        pairs = []
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                diff = sign * (finals[a] - finals[b])  # < 0: a better, as the paper says
                mean, half = rp.mean_ci(diff)
                pairs.append({
                    "better": a, "worse": b,
                    "agrees": bool(mean < 0),
                    "separated": bool(np.isfinite(half) and abs(mean) > half),
                })
        order = rp.rank({m: float(finals[m].mean()) for m in present}, higher_is_better=not lower)
        # Share of evaluation steps at which the full paper order holds (rankings change with training).
        # Step 0 is theta_0 for every method (all tied), so it is left out.
        n_points = curves[present[0]][k].shape[1] - 1 if present else 0
        holds = 0
        for j in range(1, n_points + 1):
            at = {m: float(curves[m][k][:, j].mean()) for m in present}
            holds += rp.rank(at, higher_is_better=not lower) == present
        out[k] = {
            "order": order,
            "paper_order": present,
            "pairs": pairs,
            "agreeing_pairs": sum(p["agrees"] for p in pairs),
            "n_pairs": len(pairs),
            "exact": order == present,
            "fraction_of_steps_with_paper_order": (holds / n_points) if n_points else float("nan"),
        }
    return out


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class GaugeDemo:
    """θ* with its output bias shifted: the same policy (KL ~ 0) at a non-zero parameter MSE."""

    shift: float
    parameter: str
    param_mse: float
    visitation_kl: float


def _gauge_demo(problem: Problem, config: FrozenLakeConfig) -> GaugeDemo:
    """Shift every output logit of theta* by 1 (the last layer's bias): same policy, non-zero parameter MSE."""
    net = _make_net(config, problem.mdp.n_states, config.seed)
    _distill(net, problem.pi_star, config.distill_max_iter)
    theta_star = _snapshot(net)
    pi_before = policy_table(net)
    bias_key = [k for k, v in theta_star.items() if v.ndim == 1 and v.shape[0] == 4][-1]
    shifted = dict(theta_star)
    shifted[bias_key] = theta_star[bias_key] + 1.0
    net.load_state_dict(shifted)
    pi_after = policy_table(net)
    return GaugeDemo(1.0, bias_key, metrics.parameter_mse(shifted, theta_star),
                     metrics.visitation_kl(problem.mdp, pi_before, pi_after, weights=problem.d_star))


def run_frozen_lake_bench(config: FrozenLakeConfig) -> rp.BenchResult:
    """Run the experiment and write report.md, results.json and figures into ``config.out`` atomically
    (:func:`mdpalign.bench.report.run_report`: ``ReportError`` before any work if ``config.out`` is taken)."""
    return rp.run_report(config, lambda progress: _experiment(config, progress),
                         total=config.seeds * len(config.methods))


def _experiment(config: FrozenLakeConfig, progress) -> rp.Report:
    """Every seed and method, then the statistics; the report as plain data."""
    from mdpalign.fit import record_iterations

    problem = build_problem(config)
    batch = trajectory_batch(problem)
    seeds = [config.seed + i for i in range(config.seeds)]
    per_seed = []
    for seed in seeds:
        progress.set_postfix_str(f"seed {seed}")
        per_seed.append(run_seed(seed, problem, batch, config, progress))
    curves = {m: {k: np.array([r["curves"][m][k] for r in per_seed]) for k in list(METRICS) + ["loss"]}
              for m in config.methods}
    summary = summarise(curves, config.methods)
    results = rp.plain({
        "experiment": "frozen-lake",
        "config": config.record(),
        "versions": rp.environment_versions(),
        "problem": _problem_record(problem, config),
        "seeds": seeds,
        "steps": record_iterations(config.steps, config.eval_every),
        "curves": {m: {k: v.tolist() for k, v in curves[m].items()} for m in config.methods},
        "distillation": {str(s): r["distillation"] for s, r in zip(seeds, per_seed)},
        "final": summary["final"],
        "rankings": summary["rankings"],
        "rankings_over_training": summary["rankings_over_training"],
        "param_mse_vs_kl": summary["param_mse_vs_kl"],
        "paper_agreement": summary["paper"],
        "gauge_demo": _gauge_demo(problem, config),
        "crlft_class_weights": crlft_weights(config).tolist(),
    })
    table = final_table(results)
    return rp.Report(results, _write_figures, lambda res, figures: _report_markdown(res, problem, table, figures),
                     summary=table + "\n\n" + agreement_text(results))


def _traj_record(t) -> dict:
    from mdpalign.envs.frozen_lake import ACTION_NAMES

    return {"states": list(t.states), "actions": list(t.actions), "action_names": [ACTION_NAMES[a] for a in t.actions],
            "final_state": t.final_state, "reaches_goal": t.reaches_goal, "length": len(t)}


def _problem_record(problem: Problem, config: FrozenLakeConfig) -> dict:
    lake = problem.lake
    mdp = problem.mdp
    return {
        "map": list(lake.desc),
        "slippery": lake.slippery,
        "gamma": mdp.gamma,
        "horizon": problem.horizon,
        "optimal": _traj_record(problem.two.optimal),
        "suboptimal": _traj_record(problem.two.suboptimal),
        "suboptimal_kind": problem.two.suboptimal_kind,
        "pi_star": problem.pi_star,
        "v_hard_start": float(mdp.initial @ problem.v_hard),
        "soft_value_star_start": problem.soft_j_star,
        "pi_star_success": metrics.success_probability(mdp, problem.pi_star, lake.goal_states),
        "pi_star_value_gap": metrics.value_gap(mdp, problem.v_hard, problem.pi_star),
        "hard_policy": problem.hard_policy,
    }


def final_table(results: dict) -> str:
    """Final values (mean ± 95% CI over seeds) with each method's rank per metric in brackets."""
    methods = list(results["final"])
    headers = ["method"] + [k for k in METRICS]
    rows = []
    for m in methods:
        row = [m]
        for k in METRICS:
            r = results["rankings"][k].index(m) + 1
            # probabilities near 1 need more digits than 3 significant ones
            row.append(f"{rp.format_mean_ci(results['final'][m][k], 4 if k == 'success' else None)} ({r})")
        rows.append(row)
    return rp.markdown_table(headers, rows)


def agreement_text(results: dict) -> str:
    """Plain-words comparison of each metric's ranking with the paper's, computed from the numbers."""
    agree = results["paper_agreement"]
    lines = []
    paper = " < ".join(m.upper() for m in PAPER_ORDER)
    lines.append(f"The paper reports (best first, by parameter MSE): {paper}.")
    if not agree or len(next(iter(agree.values()))["paper_order"]) < 2:
        lines.append("Fewer than two of the paper's methods (DPO, IFT, ORPO, SFT) were run: nothing to compare.")
        return "\n".join(lines)
    for k, a in agree.items():
        title = METRICS[k].title
        order = (" < " if METRICS[k].lower_is_better else " > ").join(m.upper() for m in a["order"])
        verdict = "agrees with the paper's order" if a["exact"] else \
            f"agrees on {a['agreeing_pairs']} of {a['n_pairs']} pairs"
        unsep = [f"{p['better'].upper()}/{p['worse'].upper()}" for p in a["pairs"] if not p["separated"]]
        tail = f"; not separated at 95% over seeds: {', '.join(unsep)}" if unsep else ""
        frac = a["fraction_of_steps_with_paper_order"]
        lines.append(f"- {title}: ours {order} — {verdict}{tail}; the paper's full order holds at "
                     f"{100 * frac:.0f}% of the evaluated steps.")
    return "\n".join(lines)


def mse_growth_text(results: dict) -> str:
    """Which methods end further from theta* than they were during training, and what their KL did meanwhile."""
    steps = results["steps"]
    parts = []
    for m, r in results["param_mse_vs_kl"].items():
        if r["min_index"] < len(steps) - 1 and r["param_mse_final"] > r["param_mse_min"] * 1.01:
            kl_move = "fell" if r["kl_final"] < r["kl_at_min"] else "rose"
            parts.append(f"{m.upper()} (parameter MSE {rp.format_number(r['param_mse_min'])} at step "
                         f"{steps[r['min_index']]} → {rp.format_number(r['param_mse_final'])} at the end, while its "
                         f"KL {kl_move} from {rp.format_number(r['kl_at_min'])} to {rp.format_number(r['kl_final'])})")
    if not parts:
        return "In this run no method's parameter MSE rose after its minimum."
    return "Measured here: " + "; ".join(parts) + "."


def rankings_table(results: dict) -> str:
    steps = results["steps"]
    ro = results["rankings_over_training"]
    idx = list(next(iter(ro.values())).keys())
    rows = []
    for k, by_index in ro.items():
        sep = " < " if METRICS[k].lower_is_better else " > "
        rows.append([k] + [sep.join(m.upper() for m in by_index[j]) for j in idx])
    return rp.markdown_table(["metric"] + [f"step {steps[int(j)]}" for j in idx], rows)


def _write_figures(tmp: Path, results: dict) -> dict[str, str]:
    plt = rp.pyplot()
    steps = results["steps"]
    methods = list(results["curves"])
    names = {}
    for k, metric in METRICS.items():
        curves = {m: np.array(results["curves"][m][k]) for m in methods}
        name = f"{k}.png"
        rp.plot_curves(tmp / name, steps, curves, title=metric.title, ylabel=k,
                       logy=metric.log_scale and _positive(curves))
        names[k] = name
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), dpi=80)
    for ax, (k, metric) in zip(axes.flat, METRICS.items()):
        curves = {m: np.array(results["curves"][m][k]) for m in methods}
        rp.plot_curves(None, steps, curves, title=metric.title, ylabel=k,
                       logy=metric.log_scale and _positive(curves), ax=ax)
    axes.flat[-1].axis("off")
    cfg = results["config"]
    fig.suptitle(f"Frozen Lake ({cfg['map']}, {'slippery' if cfg['slippery'] else 'deterministic'}, "
                 f"rejected = {cfg['suboptimal']}): mean and 95% CI over {cfg['seeds']} seeds", fontsize=11)
    rp.save_figure(fig, tmp / "overview.png")
    names["overview"] = "overview.png"
    return names


def _positive(curves: dict[str, np.ndarray]) -> bool:
    return all(np.all(v > 0) for v in curves.values())


def _draw_trajectory(lake, traj) -> str:
    from mdpalign.envs.frozen_lake import ARROWS

    grid = [list(r) for r in lake.desc]
    for s, a in zip(traj.states, traj.actions):
        r, c = lake.cell(s)
        grid[r][c] = ARROWS[a]
    return "\n".join("".join(r) for r in grid)


def _report_markdown(results: dict, problem: Problem, table: str, figures: dict[str, str]) -> str:
    cfg = results["config"]
    pr = results["problem"]
    lake = problem.lake
    d = results["distillation"]
    kl_star = [v["plain"]["theta_star_kl"] for v in d.values()]
    grad0 = max(v[k]["theta0"]["grad_norm"] for v in d.values() for k in v)
    grad_star = max(v[k]["theta_star"]["grad_norm"] for v in d.values() for k in v)
    g = results["gauge_demo"]
    settings = [
        ("map", f"`{cfg['map']}` → {'/'.join(pr['map'])} ({'slippery' if cfg['slippery'] else 'deterministic'})"),
        ("discount γ", cfg["gamma"]),
        ("π*", f"soft value iteration, β* = {cfg['beta_star']}, uniform reference; "
               f"success {pr['pi_star_success']:.4f}, value gap to the hard optimum {pr['pi_star_value_gap']:.4f}"),
        ("policy network", f"MLPPolicy: one-hot state → {cfg['hidden']} hidden → 4 logits, float64"),
        ("θ₀ (init and π_ref)", f"seeded init distilled onto the {cfg['base']} policy at every state (L-BFGS; "
                                f"final gradient norm ≤ {grad0:.1e})"),
        ("θ*", "θ₀ distilled onto π* at every state: SFT with soft targets Σ_s Σ_a π*(a|s)(−log π(a|s)), "
               f"L-BFGS ≤ {cfg['distill_max_iter']} iterations (final gradient norm ≤ {grad_star:.1e}); "
               f"visitation KL(π*‖π_θ*) ≤ {max(kl_star):.1e} over seeds"),
        ("optimiser", f"Adam, lr {cfg['lr']}, full batch, {cfg['steps']} steps for every method, "
                      f"evaluated every {cfg['eval_every']}"),
        ("seeds", f"{cfg['seeds']} (network initialisations {results['seeds'][0]}…{results['seeds'][-1]})"),
        ("SFT", "sum of −log π(a_t|s_t) over the optimal trajectory"),
        ("DPO", f"β = {cfg['dpo_beta']}, trajectory log-prob = sum over its (state, action) tokens, π_ref = θ₀"),
        ("IPO", f"τ = {cfg['ipo_tau']} (summed log-probs, no length normalisation), π_ref = θ₀"),
        ("ORPO", f"λ = {cfg['orpo_lambda']}, NLL and log-odds on length-averaged log-probs of the trajectories"),
        ("IFT", f"λ = {cfg['ift_lambda']}, decay {cfg['ift_decay']}, reference-code form (Σ l·v / Σ v, v not detached); "
                "ŝ_t = where the greedy action at s_{t−1} leads on the deterministic lake"),
        ("C-RLFT", "class-conditioned MLP (one-hot class input), " + (
            f"weights expert {cfg['crlft_weights'][0]}, sub-optimal {cfg['crlft_weights'][1]} (OpenChat's constants)"
            if cfg["crlft_beta"] is None else
            f"weights exp(r_c/β) = {', '.join(f'{w:.4g}' for w in results['crlft_class_weights'])} for class rewards "
            f"{cfg['crlft_weights']} and β = {cfg['crlft_beta']}") + ", token-sum NLL, "
                   "evaluated under the expert class; its θ₀/θ* are the same distillations for that network"),
        ("oracle", "the θ* distillation loss itself, optimised with the same Adam (the bound)"),
    ]
    timing = results["timing"]
    lines = [
        "# Frozen Lake alignment experiment (IFT paper, arXiv 2405.11870, sec. 5.3)",
        "",
        "Generated by `mdpalign bench frozen-lake`. The paper gives only the shape of this experiment; every "
        "choice below is ours and is recorded in full in `results.json` (with library versions).",
        "",
        "## The lake and the two demonstrations",
        "",
        "| map | optimal (chosen) | sub-optimal (rejected) | π* greedy |",
        "|---|---|---|---|",
        "| " + " | ".join("<pre>" + s.replace("\n", "<br>") + "</pre>" for s in (
            "\n".join(lake.desc), _draw_trajectory(lake, problem.two.optimal),
            _draw_trajectory(lake, problem.two.suboptimal), lake.render_policy(problem.pi_star))) + " |",
        "",
        f"- optimal: {len(problem.two.optimal)} steps, actions {', '.join(pr['optimal']['action_names'])}, "
        f"reaches the goal (return γ^{len(problem.two.optimal) - 1}).",
        f"- sub-optimal ({pr['suboptimal_kind']}): {len(problem.two.suboptimal)} steps, actions "
        f"{', '.join(pr['suboptimal']['action_names'])}, "
        + ("reaches the goal." if pr["suboptimal"]["reaches_goal"] else "ends in a hole."),
        f"- optimal value from S: {pr['v_hard_start']:.4f}; soft-optimal value V*_β(S): {pr['soft_value_star_start']:.4f}.",
        "",
        "## Settings",
        "",
        rp.markdown_table(["setting", "value"], settings),
        "",
        "## Results after training",
        "",
        f"Mean ± 95% t-interval over {cfg['seeds']} seeds at step {cfg['steps']}; rank per metric in brackets "
        "(1 = best; success: higher is better, everything else lower).",
        "",
        table,
        "",
        "## Do our rankings agree with the paper's?",
        "",
        agreement_text(results),
        "",
        "Why parameter MSE can disagree with the policy-level metrics: adding the same constant to every logit "
        f"of a state leaves the policy unchanged but moves the parameters. Shifting θ*'s output bias by "
        f"{g['shift']:g} gives a parameter MSE of {rp.format_number(g['param_mse'])} to θ* while the policy's KL to "
        f"π* is {rp.format_number(g['visitation_kl'])}. The network is also over-parameterised: many θ give π*, and "
        "θ* is just the one distillation from θ₀ finds. And with deterministic demonstrations (SFT, ORPO, C-RLFT's "
        "expert class, DPO's growing margin) the losses keep pushing logits outward, so the distance to any "
        "fixed θ* can grow with training while the policy's value keeps improving. Rank methods by the "
        "KL, the value gap and the soft-value gap; the parameter MSE is reported because the paper uses it.",
        "",
        mse_growth_text(results),
        "",
        "Rankings change with training length (best first, seed means):",
        "",
        rankings_table(results),
        "",
        "## Curves",
        "",
        f"![overview]({figures['overview']})",
        "",
    ]
    for k in METRICS:
        lines.append(f"![{k}]({figures[k]})")
    lines += [
        "",
        "## Metrics",
        "",
        "- `param_mse`: mean over all network parameters of (θ − θ*)² (the paper's metric).",
        "- `visitation_kl`: Σ_s d_π*(s) KL(π*(·|s) ‖ π(·|s)), d_π* the normalised discounted visitation of π* "
        "(non-terminal states).",
        "- `value_gap`: J(π_opt) − J(π) from S, exact, π_opt the hard optimum.",
        "- `success`: probability of ever reaching G from S, exact (an absorbing-chain solve; the trained "
        "policies are softmax policies, so they terminate with probability 1).",
        "- `soft_value_gap`: V*_β(S) − V^π_β(S) at β = β*, the KL-regularised values (uniform reference); "
        "= β Σ_t γ^t E[KL(π ‖ π*)] along π's own visits.",
        "",
        rp.run_time_line(timing),
        "",
    ]
    return "\n".join(lines)
