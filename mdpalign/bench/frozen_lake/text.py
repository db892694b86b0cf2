"""The Frozen Lake report's words: the problem record of results.json, the tables, the comparison with the paper
in plain words, and report.md, all computed from the results."""
from __future__ import annotations

from mdpalign import metrics
from mdpalign.bench import report as rp
from mdpalign.bench.config import FrozenLakeConfig
from mdpalign.bench.frozen_lake.problem import METRICS, PAPER_ORDER, Problem
from mdpalign.envs.frozen_lake import ACTION_NAMES, ARROWS

__all__ = ["problem_record", "final_table", "agreement_text", "mse_growth_text", "rankings_table", "report_markdown"]

def _traj_record(t) -> dict:
    return {"states": list(t.states), "actions": list(t.actions), "action_names": [ACTION_NAMES[a] for a in t.actions],
            "final_state": t.final_state, "reaches_goal": t.reaches_goal, "length": len(t)}


def problem_record(problem: Problem, config: FrozenLakeConfig) -> dict:
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


def _draw_trajectory(lake, traj) -> str:
    grid = [list(r) for r in lake.desc]
    for s, a in zip(traj.states, traj.actions):
        r, c = lake.cell(s)
        grid[r][c] = ARROWS[a]
    return "\n".join("".join(r) for r in grid)


def report_markdown(results: dict, problem: Problem, table: str, figures: dict[str, str]) -> str:
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
        ("IFT", f"λ = {cfg['ift_lambda']}, decay {cfg['ift_decay']}, reference-code form (Σ l·v / Σ v, v not "
                f"detached); "
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
        f"- optimal value from S: {pr['v_hard_start']:.4f}; soft-optimal value V*_β(S): "
        f"{pr['soft_value_star_start']:.4f}.",
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
