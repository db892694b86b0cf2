"""`mdpalign bench bandits`: which objectives land on the RLHF optimum, and which cannot.

For every objective (SFT, DPO, IPO, ORPO, C-RLFT, and the KL-regularised RL objective itself) and
every data regime, a tabular softmax policy starting at pi_ref is trained by Adam on the exact
population loss (built by :mod:`mdpalign.harness.offline` from the library's objective functions)
and measured over training against

* its **own exact optimum** (:mod:`mdpalign.proofs`): ``Optimum.check(pi).max_violation`` — the
  largest deviation in log-probability differences (nats) on what the optimum pins down, or the
  probability mass left on arms that must vanish; ``nan`` where no closed form is known;
* the **KL-regularised RL optimum** pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x): the regret
  J(pi*) - J(pi) = beta E_mu KL(pi || pi*) (``mdpalign.proofs.kl_rl_gap``).

Data regimes (population data from :mod:`mdpalign.envs.bandits`, exact weights):

* ``bt_all_pairs``: every pair of arms compared, Bradley-Terry labels P(i > j) = sigma(r_i - r_j);
* ``partial_coverage``: ``partial_fraction`` of the pairs, split into two comparison components
  (``connected=False``), BT labels;
* ``deterministic``: every pair, the higher-reward arm always wins;
* ``mixed_quality``: class-labelled demonstrations, expert = pi* (the RLHF optimum), sub-optimal
  = pi_ref, ``expert_fraction`` expert.

How each objective reads a regime: SFT imitates the chosen arms (mixed: every demonstration);
DPO/IPO/ORPO use the pairs (mixed: expert arm over sub-optimal arm, drawn independently, ties
dropped); C-RLFT conditions on the class (chosen = expert, rejected = sub-optimal for pair data)
with OpenChat's weights and is evaluated under the expert class; KL-RL ignores the data.

Seeds draw independent bandits. All seeds train at once as one tabular policy over the stacked
contexts: the losses are sums over contexts and Adam is elementwise, so this is exactly the same
as training each seed alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdpalign.bench import report as rp
from mdpalign.bench.config import BanditsConfig

__all__ = ["run_bandits_bench", "LANDS_TOL"]

#: An objective "lands" on the RLHF optimum when its final regret is below this (nats times beta).
LANDS_TOL = 1e-3

REGIME_TITLES = {
    "bt_all_pairs": "all pairs, Bradley–Terry labels",
    "partial_coverage": "partial coverage (two components), BT",
    "deterministic": "all pairs, deterministic labels",
    "mixed_quality": "mixed-quality class-labelled demonstrations",
}


# --------------------------------------------------------------------------- data
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
    from mdpalign.envs.bandits import random_contextual_bandit

    return random_contextual_bandit(config.contexts, config.arms, seed=seed, reward_scale=config.reward_scale)


def seed_data(config: BanditsConfig, regime: str, seed: int) -> SeedData:
    from mdpalign.envs import bandits as eb
    from mdpalign.proofs import kl_rl_optimum, pair_table
    from mdpalign.proofs.crlft import crlft_table

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


# --------------------------------------------------------------------------- optima
def own_optimum(objective: str, data: SeedData, config: BanditsConfig):
    """The objective's exact optimum for one seed (``None`` where no closed form is known)."""
    from mdpalign import proofs

    try:
        if objective == "sft":
            return proofs.sft_optimum(data.D)
        if objective == "dpo":
            return proofs.dpo_optimum(data.ref, data.W, config.beta)
        if objective == "ipo":
            return proofs.ipo_optimum(data.ref, data.W, config.beta)
        if objective == "orpo":
            return proofs.orpo_optimum(data.W, config.orpo_lambda)
        if objective == "crlft":
            return proofs.crlft_optimum(data.D3, config.crlft_weights, conditioned=True)
        if objective == "kl_rl":
            return proofs.kl_rl_optimum(data.rewards, data.ref, config.beta)
    except proofs.NoClosedFormError:
        return None
    raise ValueError(f"unknown objective {objective!r}")  # pragma: no cover - config validates


def _expert_rows(probs: np.ndarray, objective: str) -> np.ndarray:
    """The policy the RLHF comparison is about: C-RLFT's expert class, else the policy itself."""
    return probs[0::2] if objective == "crlft" else probs


def rlhf_regret(data: SeedData, probs: np.ndarray | None, beta: float, log_probs: np.ndarray | None = None) -> float:
    """J(pi*) - J(pi) = beta * sum_x mu(x) KL(pi(.|x) || pi*(.|x))."""
    from mdpalign.proofs import kl_rl_gap

    with np.errstate(invalid="ignore"):  # 0 * log 0 terms are dropped by kl_rl_gap itself
        gap = kl_rl_gap(data.rewards, data.ref, beta, probs, log_probs=log_probs)
    return float(data.mu @ gap)


#: ``Optimum.check`` violation below which the RLHF optimum counts as one of an objective's optima.
IN_SET_TOL = 1e-8


@dataclass(frozen=True)
class OptimumSummary:
    """One bandit's exact optimum of an objective, seen from the RLHF optimum: its kind (None: no closed form),
    whether it is attained, the RLHF regret of its representative, whether the RLHF optimum is one of its optima."""

    kind: str
    attained: bool | None
    regret_of_optimum: float
    rlhf_in_set: bool | None


def optimum_summary(opt, data: SeedData, objective: str, beta: float) -> OptimumSummary:
    """What kind of optimum; the regret of its representative; whether the RLHF optimum is among its optima.

    For C-RLFT the RLHF optimum is placed in the expert class and the sub-optimal class is left at
    the optimum's own value, so only the expert class is tested.
    """
    from mdpalign.proofs import kl_rl_optimum

    if opt is None:
        return OptimumSummary("no closed form", None, float("nan"), None)
    fill = np.repeat(data.ref, 2, axis=0) if objective == "crlft" else data.ref
    rep = opt.representative(fill=fill)
    pi_rlhf = kl_rl_optimum(data.rewards, data.ref, beta).policy
    candidate = rep.copy()
    if objective == "crlft":
        candidate[0::2] = pi_rlhf
    else:
        candidate = pi_rlhf
    return OptimumSummary(opt.kind, bool(opt.attained), max(0.0, rlhf_regret(data, _expert_rows(rep, objective), beta)),
                          bool(opt.check(probs=candidate).max_violation <= IN_SET_TOL))


# --------------------------------------------------------------------------- training
def _stacked(datas: list[SeedData]) -> SeedData:
    return SeedData(*(np.concatenate([getattr(d, f) for d in datas]) for f in SeedData.__dataclass_fields__))


def _loss(objective: str, policy, data: SeedData, config: BanditsConfig):
    from mdpalign.harness import offline as h

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
    from mdpalign.fit import fit
    from mdpalign.policies import TabularPolicy

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
        regret.append([rlhf_regret(d, None, config.beta, _expert_rows(lp[k * rows:(k + 1) * rows], objective))
                       for k, d in enumerate(datas)])
        losses.append(point.loss)

    fit(policy, loss_fn, method="adam", lr=config.lr, steps=config.steps, record_every=config.eval_every,
        on_record=record)
    return {"own_optimum": np.array(own).T, "rlhf_regret": np.array(regret).T, "loss": np.array(losses)}


# --------------------------------------------------------------------------- the run
def run_bandits_bench(config: BanditsConfig) -> rp.BenchResult:
    """Run every (objective, regime) and write report.md, results.json and figures into ``config.out`` atomically
    (:func:`mdpalign.bench.report.run_report`: ``ReportError`` before any work if ``config.out`` is taken)."""
    return rp.run_report(config, lambda progress: _experiment(config, progress),
                         total=len(config.regimes) * len(config.objectives))


def _experiment(config: BanditsConfig, progress) -> rp.Report:
    from mdpalign.fit import record_iterations

    seeds = [config.seed + i for i in range(config.seeds)]
    curves: dict = {}
    optima: dict = {}
    for regime in config.regimes:
        datas = [seed_data(config, regime, s) for s in seeds]
        curves[regime], optima[regime] = {}, {}
        for objective in config.objectives:
            opts = [own_optimum(objective, d, config) for d in datas]
            summaries = [optimum_summary(o, d, objective, config.beta) for o, d in zip(opts, datas)]
            optima[regime][objective] = {
                "kind": summaries[0].kind,
                "attained": [s.attained for s in summaries],
                "regret_of_optimum": [s.regret_of_optimum for s in summaries],
                "rlhf_in_set": [s.rlhf_in_set for s in summaries],
            }
            curves[regime][objective] = train_objective(objective, datas, config, opts)
            progress.update(1)
    final = {}
    for regime in config.regimes:
        final[regime] = {}
        for objective in config.objectives:
            entry = {k: rp.MeanCI.of(curves[regime][objective][k][:, -1]) for k in ("own_optimum", "rlhf_regret")}
            in_set = optima[regime][objective]["rlhf_in_set"]
            entry["lands_on_rlhf_optimum"] = bool(np.all(np.array(entry["rlhf_regret"].per_seed) < LANDS_TOL))
            # True: the RLHF optimum is one of the objective's exact optima for every bandit
            entry["rlhf_optimum_among_optima"] = None if None in in_set else bool(all(in_set))
            final[regime][objective] = entry
    results = rp.plain({
        "experiment": "bandits",
        "config": config.record(),
        "versions": rp.environment_versions(),
        "seeds": seeds,
        "steps": record_iterations(config.steps, config.eval_every),
        "lands_tol": LANDS_TOL,
        "curves": {r: {o: {k: v.tolist() for k, v in c.items()} for o, c in cs.items()} for r, cs in curves.items()},
        "optima": optima,
        "final": final,
    })
    table = final_table(results)
    return rp.Report(results, _write_figures, lambda res, figures: _report_markdown(res, table, figures),
                     summary=table)


def final_table(results: dict) -> str:
    rows = []
    for regime, by_obj in results["final"].items():
        for objective, e in by_obj.items():
            opt = results["optima"][regime][objective]
            reg_opt = np.array(opt["regret_of_optimum"], dtype=float)
            rows.append([
                regime, objective, opt["kind"],
                "—" if np.isnan(reg_opt).any() else
                ("0" if reg_opt.mean() < 1e-12 else rp.format_number(float(reg_opt.mean()))),
                rp.format_mean_ci(e["own_optimum"]), rp.format_mean_ci(e["rlhf_regret"]), classify(e, opt["kind"]),
            ])
    return rp.markdown_table(
        ["regime", "objective", "own optimum", "regret of own optimum", "distance to own optimum",
         "RLHF regret (final)", "verdict"], rows)


def classify(entry: dict, kind: str) -> str:
    """One word for the table: lands / cannot / undetermined / open (no closed form, not there)."""
    if entry["lands_on_rlhf_optimum"]:
        return "lands"
    if entry["rlhf_optimum_among_optima"] is False:
        return "cannot"
    if entry["rlhf_optimum_among_optima"] and kind == "PinnedDifferences":
        return "undetermined"
    if entry["rlhf_optimum_among_optima"]:
        return "not yet"  # its unique optimum is the RLHF optimum but training has not reached it
    return "open"


def verdict_text(results: dict) -> str:
    """Per regime: which objectives end on the RLHF optimum, which cannot (their own optimum is elsewhere)."""
    lines = []
    for regime, by_obj in results["final"].items():
        cls = {o: classify(e, results["optima"][regime][o]["kind"]) for o, e in by_obj.items()}
        group = lambda c: ", ".join(o.upper() for o, v in cls.items() if v == c)  # noqa: E731
        parts = [f"on the RLHF optimum: {group('lands') or 'none'}"]
        if group("cannot"):
            parts.append(f"cannot get there (the RLHF optimum is not one of their exact optima): {group('cannot')}")
        if group("undetermined"):
            parts.append(f"the RLHF optimum is one of their optima, but the data leave the free directions "
                         f"where the initialisation put them: {group('undetermined')}")
        if group("not yet"):
            parts.append(f"their optimum is the RLHF optimum, not reached in {results['config']['steps']} steps: "
                         f"{group('not yet')}")
        if group("open"):
            parts.append(f"no closed form, measured off the RLHF optimum: {group('open')}")
        lines.append(f"- **{REGIME_TITLES[regime]}** — " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _write_figures(tmp: Path, results: dict) -> dict[str, str]:
    plt = rp.pyplot()
    steps = results["steps"]
    regimes = list(results["curves"])
    names = {}
    for key, title, fname in (("rlhf_regret", "RLHF regret J(π*) − J(π)", "rlhf_regret.png"),
                              ("own_optimum", "distance to the objective's own exact optimum", "own_optimum.png")):
        n = len(regimes)
        cols = min(n, 2)
        rws = math.ceil(n / cols)
        fig, axes = plt.subplots(rws, cols, figsize=(6.2 * cols, 3.8 * rws), dpi=90, squeeze=False)
        for ax, regime in zip(axes.flat, regimes):
            cs = {o: np.array(c[key], dtype=float) for o, c in results["curves"][regime].items()}
            cs = {o: np.maximum(v, 1e-12) for o, v in cs.items() if np.all(np.isfinite(v))}
            if cs:
                rp.plot_curves(None, steps, cs, title=REGIME_TITLES[regime], ylabel=key, logy=True, ax=ax)
            if key == "rlhf_regret":
                ax.axhline(results["lands_tol"], color="k", lw=0.8, ls=":")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{title}: mean and 95% CI over {len(results['seeds'])} bandits", fontsize=11)
        rp.save_figure(fig, tmp / fname)
        names[key] = fname
    return names


def _report_markdown(results: dict, table: str, figures: dict[str, str]) -> str:
    cfg = results["config"]
    t = results["timing"]
    return "\n".join([
        "# Bandits: each objective vs its own exact optimum and vs the RLHF optimum",
        "",
        "Generated by `mdpalign bench bandits`. A tabular softmax policy starts at π_ref and is trained with Adam "
        "on the exact population loss of each objective (the library's loss functions via "
        "`mdpalign.harness.offline`). RLHF optimum: π*(y|x) = π_ref(y|x)·exp(r(x,y)/β)/Z(x); RLHF regret "
        "J(π*) − J(π) = β·E_μ KL(π‖π*). Distance to the own optimum: `Optimum.check(π).max_violation` (nats on "
        "pinned log-probability differences, probability mass on arms that must vanish; — where no closed form "
        "is known).",
        "",
        f"Settings: {cfg['seeds']} random bandits (seeds {results['seeds'][0]}…{results['seeds'][-1]}), "
        f"{cfg['contexts']} contexts × {cfg['arms']} arms, rewards {cfg['reward_scale']}·N(0,1), "
        f"π_ref ~ Dirichlet(1); β = {cfg['beta']} (DPO's β, IPO's τ, the KL weight); ORPO λ = {cfg['orpo_lambda']}; "
        f"C-RLFT weights {cfg['crlft_weights']} (class-conditioned, evaluated under the expert class); "
        f"partial coverage {cfg['partial_fraction']} of the pairs in two components; mixed quality: expert = π*, "
        f"sub-optimal = π_ref, expert fraction {cfg['expert_fraction']}; Adam lr {cfg['lr']}, {cfg['steps']} "
        f"full-batch steps. 'lands' means a final regret below {results['lands_tol']:g} for every bandit; "
        "'cannot': the RLHF optimum is not among the objective's exact optima (`Optimum.check` of π*); "
        "'undetermined': it is, but so are others (partial coverage), and training keeps the free directions "
        "where π_ref put them; 'open': no closed form is known and training did not reach π*.",
        "",
        "## Who lands on the RLHF optimum",
        "",
        verdict_text(results),
        "",
        f"![RLHF regret]({figures['rlhf_regret']})",
        "",
        "## Final values (mean ± 95% t-interval over bandits)",
        "",
        "'regret of own optimum' is the RLHF regret of the objective's exact optimum (a representative with the "
        "free mass split like π_ref where the optimum is not unique): zero means the objective's optimum is the "
        "RLHF optimum.",
        "",
        table,
        "",
        f"![own optimum]({figures['own_optimum']})",
        "",
        rp.run_time_line(t),
        "",
    ])
