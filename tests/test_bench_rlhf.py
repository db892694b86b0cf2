"""``mdpalign bench rlhf``: determinism, the report's final numbers against the proofs (recomputed here from the
answer keys, with tolerances derived from the reported final distances), and refusals."""
import json
import math

import numpy as np
import pytest

from mdpalign.bench.config import BenchConfigError
from mdpalign.bench.report import ReportError, run_time_line
from mdpalign.bench.rlhf.config import RlhfConfig
from mdpalign.bench.rlhf.run import run_rlhf
from mdpalign.cli import main as cli_main
from mdpalign.proofs.grpo import grpo_optimum
from mdpalign.proofs.kl_rl import kl_rl_optimum


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every method, the default exact schedule, a short sampled phase (the sampled curves are tested for shape)."""
    out = tmp_path_factory.mktemp("rlhf") / "report"
    return run_rlhf(RlhfConfig(out=str(out), sampled_steps=20, seeds=2, quiet=True))


def _kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


def _regret_tol(d, log_own, log_star, beta):
    """|β·KL(π‖π*) − β·KL(π'‖π*)| for |log π − log π'| <= d: ``β·((e^d − 1)·max|log π' − log π*| + d)``."""
    return beta * ((math.expm1(d)) * float(np.abs(log_own - log_star).max()) + d) + 1e-12


def test_final_regrets_match_the_proofs(full):
    res = full.results
    cfg = res["config"]
    r = np.array(res["problems"]["bandit"]["rewards"])
    ref = np.array(res["problems"]["bandit"]["ref_policy"])
    beta, G = cfg["beta"], cfg["group_size"]
    star = kl_rl_optimum(r, ref, beta).policy
    keys = {"reinforce": star, "rloo": star, "remax": star, "ppo_clip": star, "dpo": star, "rm_pipeline": star,
            "grpo_trl": grpo_optimum(r, ref, beta, G, kl="k3_loss_is").policy,
            "dr_grpo": kl_rl_optimum(r, ref, beta * G / (G - 1)).policy}
    bandit = res["runs"]["bandit"]
    for name, key in keys.items():
        f = bandit[name]["final"]
        d = f["exact_own"]
        assert d < 0.05, (name, d)  # trained close to its own fixed point
        expected = beta * _kl(key, star)
        tol = _regret_tol(d, np.log(key), np.log(star), beta)
        assert abs(f["exact_regret"] - expected) <= tol, (name, f["exact_regret"], expected, tol)
        assert abs(bandit[name]["own_fixed_point"]["regret"] - expected) <= 1e-8, name
    assert bandit["grpo_trl"]["own_fixed_point"]["regret"] > 1e-2  # GRPO's std: not the KL-regularised optimum
    # RAFT: the mass outside the argmax class decays as (1 − q_0)^(n^t); the report's distance is at most that
    n, T = cfg["raft_n"], cfg["raft_rounds"]
    q0 = np.where(r == r.max(1, keepdims=True), ref, 0.0).sum(1)
    assert bandit["best_of_n_raft"]["final"]["exact_own"] <= float(((1 - q0) ** (n ** T)).max()) + 1e-15
    # Nash-MD: converges to its constant-step fixed point, which misses the regularised Nash equilibrium by O(η)
    nash = bandit["nash_md"]
    assert nash["final"]["exact_own"] < 1e-8 and nash["own_fixed_point"]["proof_gap"] > 1e-4


def test_tree_runs_land_on_the_soft_optimum_or_their_certified_point(full):
    tree = full.results["runs"]["tree"]
    for name in ("reinforce", "rloo", "remax", "ppo_clip"):
        f = tree[name]["final"]
        own = tree[name]["own_fixed_point"]
        assert own["proof_gap"] <= own["log_prob_bound"]  # the harness's point is the soft optimum (certified)
        assert f["exact_regret"] < 1e-8 and f["exact_own"] < 1e-4
    for name in ("grpo_trl", "grpo_bias_corrected", "dr_grpo"):
        assert tree[name]["own_fixed_point"]["regret"] > 1e-3


def test_report_files_and_sampled_intervals(full):
    out = full.out
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "exact_bandit.png", "exact_tree.png", "sampled_bandit.png"} <= names
    res = json.loads((out / "results.json").read_text())
    s = res["runs"]["bandit"]["rloo"]["final"]["sampled_regret"]
    assert len(s["per_seed"]) == 2 and s["ci95"] >= 0 and math.isfinite(s["mean"])
    md = (out / "report.md").read_text()
    assert "| RLOO | bandit |" in md
    # the shared runner's timing: in results.json, as the report's last line and in the summary
    assert md.rstrip().endswith(run_time_line(res["timing"])) and res["timing"] == full.results["timing"]
    assert full.summary.endswith(f"report: {out / 'report.md'} ({res['timing']['wall_s']:.1f} s wall, "
                                 f"{res['timing']['cpu_s']:.1f} s CPU)")


def test_deterministic(tmp_path):
    kw = {"exact_steps": 40, "sampled_steps": 20, "seeds": 2, "quiet": True,
          "methods": ("rloo", "ppo_clip", "best_of_n_raft")}
    a = run_rlhf(RlhfConfig(out=str(tmp_path / "a"), **kw))
    b = run_rlhf(RlhfConfig(out=str(tmp_path / "b"), **kw))
    ra, rb = (json.loads((x.out / "results.json").read_text()) for x in (a, b))
    ra.pop("timing"), rb.pop("timing")
    assert ra == rb
    for png in ("exact_bandit.png", "sampled_tree.png"):
        assert (a.out / png).read_bytes() == (b.out / png).read_bytes()


@pytest.mark.parametrize("kw, match", [
    ({"beta": -1.0}, r"^beta must be a positive finite number; got -1\.0$"),
    ({"methods": ("ppo2",)}, r"^unknown methods 'ppo2' in methods; "),
    ({"nash_eta": 4.0}, r"^nash_eta × beta must be <= 1 .*; got 4\.0 × 0\.5$"),
    ({"group_size": 1}, r"^group_size must be at least 2; got 1$"),
    ({"eval_every": 300}, r"^eval_every \(300\) is larger than exact_steps \(400\) or sampled_steps \(200\)$"),
    ({"arms": 16, "group_size": 4}, r"^problem too large for exact mode: keep arms\^group_size·contexts <= 4096 "),
    ({"bandit_seed": -1}, r"^bandit_seed must be an integer"),
])
def test_bad_settings_are_refused_naming_the_field(kw, match):
    """From Python the message names the config field, never a command-line flag."""
    with pytest.raises(BenchConfigError, match=match) as err:
        RlhfConfig(**kw)
    assert "--" not in str(err.value)


@pytest.mark.parametrize("argv, match", [
    (["--beta", "-1"], "argument --beta: "),  # refused by the flag's type, before the config
    (["--group-size", "1"], "error: --group-size must be at least 2; got 1"),
    (["--eval-every", "300"], "error: --eval-every (300) is larger than --exact-steps (400) or --sampled-steps (200)"),
    (["--methods", "ppo2"], "error: unknown methods 'ppo2' in --methods; "),
    (["--beta", "3"], "error: --nash-eta × --beta must be <= 1"),
])
def test_bad_flags_are_refused_naming_the_flag(argv, match, tmp_path, capsys):
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "rlhf", *argv, "--out", str(out), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and match in err.strip().splitlines()[-1]
    assert not out.exists()


def test_foreign_output_directory_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError):
        run_rlhf(RlhfConfig(out=str(out), quiet=True))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "rlhf", "--out", str(out), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "rlhf", "--beta", "0", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()
