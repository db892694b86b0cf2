"""`mdpalign bench bandits`: outputs, determinism, and the theory it is meant to show (THEORY.md, Bandits)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mdpalign.bench import bandits as bb
from mdpalign.bench import report as rp
from mdpalign.bench.bandits import data as bb_data
from mdpalign.bench.config import BANDIT_OBJECTIVES, BANDIT_REGIMES, BanditsConfig, BenchConfigError
from mdpalign.cli.bench import main as bench_main

TINY = ["--seeds", "2", "--steps", "40", "--eval-every", "20", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bandits") / "report"
    assert bench_main(["bandits", *TINY, "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_report_json_and_figures(tiny):
    names = {p.name for p in tiny.iterdir()}
    assert {"report.md", "results.json", "rlhf_regret.png", "own_optimum.png"} <= names
    report = (tiny / "report.md").read_text()
    for line in report.splitlines():
        if line.startswith("!["):
            assert (tiny / line[line.index("(") + 1: line.index(")")]).is_file()
    data = json.loads((tiny / "results.json").read_text())
    assert data["steps"] == [0, 20, 40]
    for regime in BANDIT_REGIMES:
        for objective in BANDIT_OBJECTIVES:
            c = data["curves"][regime][objective]
            assert np.array(c["rlhf_regret"]).shape == (2, 3)
            assert np.array(c["own_optimum"], dtype=float).shape == (2, 3)
            assert np.all(np.array(c["rlhf_regret"]) >= -1e-12)
            assert f"| {regime} | {objective} |" in report


def test_same_seed_same_results(tiny, tmp_path):
    out = tmp_path / "again"
    assert bench_main(["bandits", *TINY, "--out", str(out)]) == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tiny / "results.json").read_text())
    a.pop("timing"), b.pop("timing")
    assert a == b


def test_all_objectives_start_at_pi_ref(tiny):
    data = json.loads((tiny / "results.json").read_text())
    for regime in BANDIT_REGIMES:
        start = {o: np.array(data["curves"][regime][o]["rlhf_regret"])[:, 0] for o in BANDIT_OBJECTIVES}
        for o in BANDIT_OBJECTIVES:
            np.testing.assert_allclose(start[o], start["kl_rl"], rtol=1e-12)


def test_exact_optima_say_who_can_reach_the_rlhf_optimum():
    """THEORY.md: BT all pairs -> DPO's optimum is pi*; IPO's and SFT's are not; partial coverage leaves
    DPO's optimum a set that contains pi*; deterministic labels have no finite DPO optimum; C-RLFT's expert
    class is pi* when the experts are pi*."""
    config = BanditsConfig(seeds=1)

    def summary(objective, regime, seed=3):
        data = bb.seed_data(config, regime, seed)
        return bb.optimum_summary(bb.own_optimum(objective, data, config), data, objective, config.beta)

    s = summary("dpo", "bt_all_pairs")
    assert s.kind == "UniqueOptimum" and s.rlhf_in_set and s.regret_of_optimum < 1e-12
    for objective in ("sft", "ipo"):
        s = summary(objective, "bt_all_pairs")
        assert not s.rlhf_in_set and s.regret_of_optimum > 1e-3
    s = summary("dpo", "partial_coverage")
    assert s.kind == "PinnedDifferences" and s.rlhf_in_set
    s = summary("dpo", "deterministic")
    assert s.kind == "NoFiniteOptimum" and not s.attained and not s.rlhf_in_set
    s = summary("crlft", "mixed_quality")
    assert s.rlhf_in_set and s.regret_of_optimum < 1e-12
    assert summary("kl_rl", "deterministic").rlhf_in_set


def test_training_lands_where_the_closed_forms_say(tmp_path):
    config = BanditsConfig(seeds=2, steps=300, eval_every=100, regimes=("bt_all_pairs",),
                           objectives=("sft", "dpo", "ipo", "kl_rl"), out=str(tmp_path / "r"), quiet=True)
    res = bb.run_bandits_bench(config).results
    final = res["final"]["bt_all_pairs"]
    assert final["dpo"]["lands_on_rlhf_optimum"] and final["kl_rl"]["lands_on_rlhf_optimum"]
    for objective in ("sft", "ipo"):
        assert not final[objective]["lands_on_rlhf_optimum"]
        # ... and they do reach their own optimum, whose regret is what they end with
        assert final[objective]["own_optimum"]["mean"] < 1e-6
        np.testing.assert_allclose(final[objective]["rlhf_regret"]["per_seed"],
                                   res["optima"]["bt_all_pairs"][objective]["regret_of_optimum"], rtol=1e-5)
    assert "on the RLHF optimum: DPO, KL_RL" in (tmp_path / "r" / "report.md").read_text()


def test_stacking_seeds_equals_training_each_alone():
    """All seeds train as one tabular policy; Adam is elementwise, so nothing couples them."""
    config = BanditsConfig(seeds=2, steps=30, eval_every=10)
    datas = [bb.seed_data(config, "deterministic", s) for s in (0, 1)]
    opts = [bb.own_optimum("dpo", d, config) for d in datas]
    together = bb.train_objective("dpo", datas, config, opts)
    for k in range(2):
        alone = bb.train_objective("dpo", [datas[k]], config, [opts[k]])
        np.testing.assert_allclose(together["rlhf_regret"][k], alone["rlhf_regret"][0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("argv, message", [
    (["--objectives", "sft,ppo"], "unknown objectives 'ppo'"),
    (["--regimes", "everything"], "unknown regimes"),
    (["--arms", "1"], "--arms"),
    (["--eval-every", "50", "--steps", "10"], "--eval-every"),
])
def test_bad_options(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench_main(["bandits", "--quiet", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_config_errors_without_cli():
    with pytest.raises(BenchConfigError, match="beta"):
        BanditsConfig(beta=0.0)
    with pytest.raises(BenchConfigError, match="expert_fraction"):
        BanditsConfig(expert_fraction=1.0)


def test_progress_bar_on_a_terminal_and_not_with_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rp, "_isatty", lambda stream=None: True)
    small = dict(seeds=1, steps=2, eval_every=1, regimes=("deterministic",), objectives=("sft",))
    bb.run_bandits_bench(BanditsConfig(**small, out=str(tmp_path / "a")))
    assert "bandits: 100%" in capsys.readouterr().err
    bb.run_bandits_bench(BanditsConfig(**small, out=str(tmp_path / "b"), quiet=True))
    assert "bandits" not in capsys.readouterr().err


def test_out_holding_other_files_is_refused_before_any_work_and_force_moves_them_aside(tmp_path, monkeypatch,
                                                                                       capsys, caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    small = ["--seeds", "1", "--steps", "2", "--eval-every", "1", "--regimes", "deterministic", "--objectives", "sft",
             "--quiet", "--out", str(out)]
    seed_data = bb_data.seed_data

    def started(*args, **kwargs):
        raise AssertionError("the experiment started")

    monkeypatch.setattr(bb_data, "seed_data", started)
    with pytest.raises(SystemExit) as exc:
        bench_main(["bandits", *small])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.md" in err and "--force" in err
    with pytest.raises(rp.ReportError, match="force=True"):
        bb.run_bandits_bench(BanditsConfig(out=str(out)))
    assert [p.name for p in out.iterdir()] == ["notes.md"]

    monkeypatch.setattr(bb_data, "seed_data", seed_data)
    with caplog.at_level("WARNING", logger="mdpalign.bench.report"):
        assert bench_main(["bandits", *small, "--force"]) == 0
    assert (tmp_path / "mine.replaced-1" / "notes.md").read_text() == "mine"
    assert (out / "report.md").is_file() and "mine.replaced-1" in caplog.text
    assert bench_main(["bandits", *small]) == 0  # the report there now is ours: replaced without --force
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mine.replaced-1"]


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_seeds_numpy_or_torch_cannot_take_are_refused(seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["bandits", "--quiet", "--seeds", "1", "--steps", "1", "--eval-every", "1", "--seed", seed,
                    "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(BenchConfigError, match="seed"):
        BanditsConfig(seed=int(seed))
