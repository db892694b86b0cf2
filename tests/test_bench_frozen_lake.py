"""`mdpalign bench frozen-lake`: a tiny real run, determinism, atomic output, bad options, pipeline sanity."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from mdpalign.bench import frozen_lake as fl
from mdpalign.bench import report as rp
from mdpalign.bench.config import FROZEN_LAKE_METHODS, BenchConfigError, FrozenLakeConfig
from mdpalign.bench.frozen_lake import figures as fl_figures
from mdpalign.bench.frozen_lake import problem as fl_problem
from mdpalign.bench.frozen_lake import training as fl_training
from mdpalign.cli.bench import main as bench_main

TINY = ["--seeds", "2", "--steps", "30", "--eval-every", "10", "--quiet"]


def _load(path):
    data = json.loads((path / "results.json").read_text())
    data.pop("timing")
    return data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fl") / "report"
    assert bench_main(["frozen-lake", *TINY, "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_report_json_and_figures(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"report.md", "results.json", "overview.png", rp.MANIFEST} <= names
    assert set(json.loads((tiny_run / rp.MANIFEST).read_text())["files"]) == names  # it lists every file
    for k in fl.METRICS:
        assert f"{k}.png" in names
        assert (tiny_run / f"{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tiny_run / "report.md").read_text()
    for m in FROZEN_LAKE_METHODS:
        assert f"| {m} |" in report
    # every embedded figure is a relative link to a file that exists
    for line in report.splitlines():
        if line.startswith("!["):
            target = line[line.index("(") + 1: line.index(")")]
            assert (tiny_run / target).is_file(), target
    # the drawn map and both trajectories are in the report
    assert "SFFG" in report and "→→→G" in report


def test_results_json_has_every_metric_for_every_method_and_step(tiny_run):
    data = json.loads((tiny_run / "results.json").read_text())
    assert data["steps"] == [0, 10, 20, 30]
    assert data["seeds"] == [0, 1]
    assert set(data["curves"]) == set(FROZEN_LAKE_METHODS)
    for m in FROZEN_LAKE_METHODS:
        for k in fl.METRICS:
            values = np.array(data["curves"][m][k])
            assert values.shape == (2, 4), (m, k)
            assert np.all(np.isfinite(values)), (m, k)
            assert data["final"][m][k]["per_seed"] == values[:, -1].tolist()
    assert data["config"]["steps"] == 30 and data["config"]["methods"] == list(FROZEN_LAKE_METHODS)
    assert {"python", "numpy", "torch", "gymnasium"} <= set(data["versions"])
    assert data["timing"]["wall_s"] > 0


def test_all_methods_start_from_the_same_theta0(tiny_run):
    data = json.loads((tiny_run / "results.json").read_text())
    plain = [m for m in FROZEN_LAKE_METHODS if m != "crlft"]
    for k in fl.METRICS:
        start = np.array([np.array(data["curves"][m][k])[:, 0] for m in plain])
        np.testing.assert_array_equal(start, np.broadcast_to(start[0], start.shape))


def test_the_oracle_gets_closest_to_pi_star(tiny_run):
    """Pipeline sanity: distilling onto pi* must beat every method trained on two trajectories."""
    data = json.loads((tiny_run / "results.json").read_text())
    kl = {m: np.array(data["curves"][m]["visitation_kl"]) for m in FROZEN_LAKE_METHODS}
    for m in FROZEN_LAKE_METHODS:
        if m != "oracle":
            assert np.all(kl["oracle"][:, -1] < kl[m][:, -1]), m
    assert np.all(kl["oracle"][:, -1] < 0.2 * kl["oracle"][:, 0])
    assert data["rankings"]["visitation_kl"][0] == "oracle"
    # theta* reproduces pi*: the reference of the paper's metric is a faithful parameterisation
    for per_seed in data["distillation"].values():
        for net in per_seed.values():
            assert net["theta_star_kl"] < 1e-4


def test_sft_learns_the_demonstrated_path(tiny_run):
    data = json.loads((tiny_run / "results.json").read_text())
    success = np.array(data["curves"]["sft"]["success"])
    assert np.all(success[:, -1] > 0.9) and np.all(success[:, 0] < 0.5)


def test_rankings_and_paper_comparison_follow_the_numbers(tiny_run):
    data = json.loads((tiny_run / "results.json").read_text())
    for k, metric in fl.METRICS.items():
        lower = metric.lower_is_better
        means = [data["final"][m][k]["mean"] for m in data["rankings"][k]]
        assert means == sorted(means, reverse=not lower), k
        agree = data["paper_agreement"][k]
        assert agree["paper_order"] == ["dpo", "ift", "orpo", "sft"]
        for pair in agree["pairs"]:
            a, b = data["final"][pair["better"]][k]["mean"], data["final"][pair["worse"]][k]["mean"]
            assert pair["agrees"] == ((a < b) if lower else (a > b))
        assert agree["exact"] == (agree["agreeing_pairs"] == agree["n_pairs"])


def test_same_seed_gives_the_same_results(tiny_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)  # a previous report: the new run replaces it
    (out / "results.json").write_text("{}")
    assert bench_main(["frozen-lake", *TINY, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    assert (out / rp.MANIFEST).read_bytes() == (tiny_run / rp.MANIFEST).read_bytes()
    assert _load(out) == _load(tiny_run)
    a = (out / "results.json").read_text().splitlines()
    b = (tiny_run / "results.json").read_text().splitlines()
    differing = [x for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and all("_s" in line for line in differing)  # only the timing fields


def test_an_interrupted_run_leaves_no_report_and_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "report"
    with rp.atomic_output_dir(out, kind="frozen-lake") as tmp:  # a previous report
        (tmp / "results.json").write_text("previous")
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt("interrupted inside the training loop")

    monkeypatch.setattr(fl_training, "train_method", boom)
    config = FrozenLakeConfig(seeds=1, steps=5, eval_every=5, methods=("sft",), out=str(out), quiet=True,
                              distill_max_iter=5)
    with pytest.raises(KeyboardInterrupt):
        fl.run_frozen_lake_bench(config)
    assert calls == [1]
    assert (out / "results.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary directory left

    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        fl.run_frozen_lake_bench(dataclasses.replace(config, out=str(fresh)))
    assert not fresh.exists()


def test_a_failure_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "report"
    with rp.atomic_output_dir(out, kind="frozen-lake") as tmp:  # a previous report
        (tmp / "report.md").write_text("previous")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fl_figures, "write_figures", broken)
    config = FrozenLakeConfig(seeds=1, steps=2, eval_every=2, methods=("sft",), out=str(out), quiet=True,
                              distill_max_iter=5)
    with pytest.raises(RuntimeError, match="disk full"):
        fl.run_frozen_lake_bench(config)
    assert sorted(p.name for p in out.iterdir()) == [rp.MANIFEST, "report.md"]
    assert (out / "report.md").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def _work_must_not_start(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the experiment started although its output path is unusable")

    monkeypatch.setattr(fl_problem, "build_problem", started)


def _one_line_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        bench_main(["frozen-lake", *TINY, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mdpalign bench: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_out_holding_other_files_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    _work_must_not_start(monkeypatch)
    err = _one_line_error(capsys, "--out", str(out))
    assert "thesis.tex" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "three years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # the Python API applies the same check, naming fields rather than flags
    with pytest.raises(rp.ReportError, match="force=True") as exc:
        fl.run_frozen_lake_bench(FrozenLakeConfig(out=str(out), quiet=True))
    assert "--" not in str(exc.value)


@pytest.mark.parametrize("out", [".", "", "{cwd}", "{cwd}/.."])
def test_out_naming_the_working_directory_is_refused_before_any_work(out, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "code.py").write_text("print('mine')")
    monkeypatch.chdir(work)
    _work_must_not_start(monkeypatch)
    _one_line_error(capsys, "--out", out.format(cwd=work), "--force")
    assert [p.name for p in work.iterdir()] == ["code.py"] and [p.name for p in tmp_path.iterdir()] == ["work"]


@pytest.mark.parametrize("out, named", [("{file}/report", "{file} is a file"), ("/proc/report", "/proc")])
def test_out_that_cannot_be_created_is_named_before_any_work(out, named, tmp_path, monkeypatch, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    _work_must_not_start(monkeypatch)
    err = _one_line_error(capsys, "--out", out.format(file=f))
    assert named.format(file=f) in err


def test_a_seed_torch_cannot_take_is_a_config_error(tmp_path, capsys):
    err = _one_line_error(capsys, "--seed", str(2**63), "--out", str(tmp_path / "r"))
    assert "--seed" in err
    with pytest.raises(BenchConfigError, match="seed"):
        FrozenLakeConfig(seed=-1)


@pytest.mark.parametrize("argv, message", [
    (["--map", "SFG"], "has only one trajectory"),
    (["--map", "SFFG,FHHF,FFFF,HFFH", "--suboptimal", "hole", "--methods", "sft,rlhf"], "unknown methods 'rlhf'"),
    (["--map", "SFHG"], "no path"),
    (["--map", "SFFF,FFFF,FFFG"], "shortest"),
    (["--eval-every", "50", "--steps", "20"], "--eval-every"),
    (["--gamma", "1.0"], "--gamma"),
])
def test_bad_options_give_clear_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["frozen-lake", "--quiet", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "-3"], ["--seeds", "0"], ["--steps", "ten"],
                                  ["--suboptimal", "shorter"]])
def test_argparse_rejects_non_positive_or_malformed_numbers(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["frozen-lake", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_config_validation_without_the_cli():
    with pytest.raises(BenchConfigError, match="positive integer"):
        FrozenLakeConfig(steps=0)
    with pytest.raises(BenchConfigError, match="listed|twice"):
        FrozenLakeConfig(methods=("sft", "sft"))
    with pytest.raises(BenchConfigError, match="crlft_weights"):
        FrozenLakeConfig(crlft_weights=(1.0, -0.1))
    assert FrozenLakeConfig(methods=("oracle", "sft")).methods == ("sft", "oracle")  # report order


def test_crlft_exponential_weights_and_a_method_subset(tmp_path):
    config = FrozenLakeConfig(seeds=1, steps=4, eval_every=2, methods=("crlft", "sft"), crlft_beta=0.5,
                              distill_max_iter=10, out=str(tmp_path / "r"), quiet=True)
    res = fl.run_frozen_lake_bench(config).results
    np.testing.assert_allclose(res["crlft_class_weights"], [np.exp(1.0 / 0.5), np.exp(0.1 / 0.5)], rtol=1e-12)
    assert set(res["curves"]) == {"sft", "crlft"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "exp(r_c/β)" in report and "nothing to compare" in report
    with pytest.raises(BenchConfigError, match="crlft_beta") as exc:
        FrozenLakeConfig(crlft_beta=-1.0)
    assert "--" not in str(exc.value)  # built from Python: the field's name; the CLI shows the flag
    assert "--crlft-beta must be a positive" in exc.value.render(lambda field: "--" + field.replace("_", "-"))


def test_config_errors_name_fields_from_python_and_flags_on_the_command_line(tmp_path, capsys):
    with pytest.raises(BenchConfigError) as exc:
        FrozenLakeConfig(eval_every=50, steps=20)
    assert str(exc.value) == "eval_every (50) is larger than steps (20)"
    err = _one_line_error(capsys, "--eval-every", "50", "--steps", "20", "--out", str(tmp_path / "r"))
    assert err.strip().endswith("error: --eval-every (50) is larger than --steps (20)")
    with pytest.raises(BenchConfigError, match="unknown methods 'rlhf' in methods;"):
        FrozenLakeConfig(methods=("sft", "rlhf"))
    # the parts survive pickling (e.g. an error sent back from a worker process)
    import pickle

    again = pickle.loads(pickle.dumps(exc.value))
    assert str(again) == str(exc.value) and again.fields == ("eval_every", "steps")


@pytest.mark.parametrize("rows", [("SFFF", "FHFH", "FFFH", "HFFG"), ("SFFF", "FFFF", "FFFG"),
                                  ("SFFG", "FHHF", "FFFF", "HFFH"), ("SFHG", "FFFF"), ("SFFFF", "FHFHF", "FFFFG"),
                                  ("SHFG", "FFFH")])
def test_shortest_path_count_agrees_with_the_enumeration(rows):
    from mdpalign.envs.frozen_lake import frozen_lake, simple_trajectories

    lake = frozen_lake(list(rows), slippery=False)
    to_goal = [t for t in simple_trajectories(lake) if t.reaches_goal]
    best = len(to_goal[0])
    assert fl_problem.shortest_path_count(lake) == (sum(len(t) == best for t in to_goal), best)


@pytest.mark.parametrize("name, n, steps", [("8x8", 107, 14), ("4x4", 3, 6)])
def test_gymnasium_maps_are_refused_before_their_paths_are_enumerated(name, n, steps, tmp_path, monkeypatch, capsys):
    """gymnasium's maps have many shortest S→G paths; enumerating every simple path of the 8x8 one (up to 32 steps)
    ran for minutes before two_path_lake_from_map refused it. Now the count comes first."""
    import importlib

    envs_fl = importlib.import_module("mdpalign.envs.frozen_lake")  # the module (mdpalign.envs.frozen_lake is
    # also the name of a function re-exported by mdpalign.envs)

    def enumerated(*args, **kwargs):
        raise AssertionError("the simple paths were enumerated before the map was refused")

    monkeypatch.setattr(envs_fl, "simple_trajectories", enumerated)
    err = _one_line_error(capsys, "--map", name, "--out", str(tmp_path / "r"))
    assert f"--map '{name}' cannot be used" in err and f"has {n} shortest S→G paths of {steps} steps" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(BenchConfigError, match=f"^map '{name}' cannot be used"):  # from Python: the field
        fl.run_frozen_lake_bench(FrozenLakeConfig(map=name, out=str(tmp_path / "p"), quiet=True))
