"""mdpalign.bench.report: the atomic output directory, JSON writing, confidence intervals, figures."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mdpalign.bench import report as rp

KIND = "frozen-lake"


def _write_report(out, files=None, kind=KIND):
    """A previous report, written by the writer itself."""
    with rp.atomic_output_dir(out, kind=kind) as tmp:
        for name, text in (files or {"report.md": "old report", "results.json": "{}"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def _tree(root) -> dict[str, bytes]:
    """Every file under root with its bytes (what must survive a refused or failed write)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "data").mkdir()
    (path / "data" / "raw.csv").write_text("1,2,3")
    return _tree(path)


def test_atomic_output_dir_creates_and_replaces_only_on_success(tmp_path):
    out = tmp_path / "rep"
    with rp.atomic_output_dir(out, kind=KIND) as tmp:
        assert tmp.parent == tmp_path and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with rp.atomic_output_dir(out, kind=KIND) as tmp:
        (tmp / "b.txt").write_text("two")
        assert (out / "a.txt").exists()  # the old report stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["b.txt", rp.MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_the_manifest_marks_the_report_and_has_no_timestamp(tmp_path):
    files = {"report.md": "r", "results.json": "{}", "fig/a.png": "png"}
    _write_report(tmp_path / "one", files)
    _write_report(tmp_path / "two", files)
    manifest = json.loads((tmp_path / "one" / rp.MANIFEST).read_text())
    # exactly the marker and the file list: nothing that changes from run to run
    assert manifest == {"mdpalign_report": {"kind": KIND, "version": 1},
                        "files": sorted([*files, rp.MANIFEST])}
    assert (tmp_path / "one" / rp.MANIFEST).read_bytes() == (tmp_path / "two" / rp.MANIFEST).read_bytes()


@pytest.mark.parametrize("error", [ZeroDivisionError, KeyboardInterrupt])
def test_atomic_output_dir_keeps_the_old_report_on_failure(tmp_path, error):
    out = tmp_path / "rep"
    _write_report(out)
    before = _tree(out)
    with pytest.raises(error):
        with rp.atomic_output_dir(out, kind=KIND) as tmp:
            (tmp / "half.txt").write_text("half")
            raise error()
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary directory left


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_while_moving_the_report_into_place_restores_the_old_one(tmp_path, monkeypatch, error):
    out = tmp_path / "rep"
    _write_report(out)
    before = _tree(out)
    rename = os.rename

    def failing_rename(src, dst):
        if ".tmp-" in os.fspath(src):  # the finished report moving into place
            raise error
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(type(error)):
        with rp.atomic_output_dir(out, kind=KIND) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_failed_write_removes_the_parents_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with rp.atomic_output_dir(tmp_path / "a" / "b" / "rep", kind=KIND):
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_of_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "thesis"
    before = _foreign(out)
    with pytest.raises(rp.ReportError, match="is not an mdpalign report") as exc:
        rp.check_output_dir(out, kind=KIND)
    message = str(exc.value)
    assert "\n" not in message and str(out) in message and "thesis.tex" in message
    assert "force=True" in message and "--" not in message  # Python names, not flags
    cli = str(pytest.raises(rp.ReportError, rp.check_output_dir, out, kind=KIND, cli=True).value)
    assert "--out" in cli and "--force" in cli
    ran = []
    with pytest.raises(rp.ReportError):
        with rp.atomic_output_dir(out, kind=KIND):
            ran.append(1)
    assert ran == [] and _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_a_report_with_added_files_or_of_another_kind_is_refused(tmp_path):
    out = tmp_path / "rep"
    _write_report(out)
    (out / "notes.txt").write_text("my notes on this run")
    before = _tree(out)
    with pytest.raises(rp.ReportError, match="files it did not write: notes.txt"):
        rp.check_output_dir(out, kind=KIND)
    with pytest.raises(rp.ReportError, match="files it did not write: notes.txt"):
        with rp.atomic_output_dir(out, kind=KIND):
            pass
    assert _tree(out) == before
    other = tmp_path / "bandits"
    _write_report(other, kind="bandits")
    with pytest.raises(rp.ReportError, match="holds a bandits report, not a frozen-lake report"):
        rp.check_output_dir(other, kind=KIND)


def test_a_file_a_link_and_a_forged_manifest_are_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(rp.ReportError, match="exists and is not a directory"):
        with rp.atomic_output_dir(f, kind=KIND):
            pass
    assert f.read_text() == "x"
    report = tmp_path / "rep"
    _write_report(report)
    link = tmp_path / "latest"
    link.symlink_to(report)
    with pytest.raises(rp.ReportError, match="symbolic link"):
        rp.check_output_dir(link, kind=KIND)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / rp.MANIFEST).write_text('{"files": "everything"}')
    with pytest.raises(rp.ReportError, match="no valid"):
        rp.check_output_dir(bad, kind=KIND)


def test_force_moves_anything_else_aside_and_deletes_nothing(tmp_path, caplog):
    out = tmp_path / "thesis"
    first = _foreign(out)
    with caplog.at_level("WARNING", logger="mdpalign.bench.report"):
        with rp.atomic_output_dir(out, kind=KIND, force=True) as tmp:
            (tmp / "report.md").write_text("new")
    assert (out / "report.md").read_text() == "new"
    assert _tree(tmp_path / "thesis.replaced-1") == first
    assert "thesis.replaced-1" in caplog.text and "nothing was deleted" in caplog.text
    # once more: the report now there is ours (replaced), the next foreign thing goes to replaced-2
    with rp.atomic_output_dir(out, kind=KIND, force=True) as tmp:
        (tmp / "report.md").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis", "thesis.replaced-1"]
    (out / "mine.txt").write_text("added by hand")
    with rp.atomic_output_dir(out, kind=KIND, force=True) as tmp:
        (tmp / "report.md").write_text("newest")
    assert (tmp_path / "thesis.replaced-2" / "mine.txt").read_text() == "added by hand"
    f = tmp_path / "file"
    f.write_text("x")
    with rp.atomic_output_dir(f, kind=KIND, force=True) as tmp:
        (tmp / "report.md").write_text("r")
    assert (tmp_path / "file.replaced-1").read_text() == "x" and (f / "report.md").is_file()


def test_a_change_while_the_experiment_ran_is_caught_before_the_move(tmp_path):
    out = tmp_path / "rep"
    with pytest.raises(rp.ReportError, match="not an mdpalign report"):
        with rp.atomic_output_dir(out, kind=KIND) as tmp:
            (tmp / "report.md").write_text("r")
            out.mkdir()  # someone else writes there meanwhile
            (out / "theirs.txt").write_text("theirs")
    assert _tree(out) == {"theirs.txt": b"theirs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


@pytest.mark.parametrize("target, why", [
    ("", "is empty"), (" ", "is empty"), (".", "is the current directory"), ("{cwd}", "is the current directory"),
    ("..", "contains the current directory"), ("sub/..", "is the current directory"),
    ("{home}", "is the home directory"), ("/", "is the root directory"),
])
def test_paths_that_must_never_be_replaced_are_refused_even_with_force(tmp_path, monkeypatch, target, why):
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    (cwd / "sub").mkdir()
    (cwd / "code.py").write_text("print(1)")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    before = _tree(tmp_path)
    target = target.format(cwd=cwd, home=home)
    for force in (False, True):
        with pytest.raises(rp.ReportError, match=why):
            rp.check_output_dir(target, kind=KIND, force=force)
        with pytest.raises(rp.ReportError, match=why):
            with rp.atomic_output_dir(target, kind=KIND, force=force):
                pass
    assert _tree(tmp_path) == before and sorted(p.name for p in cwd.iterdir()) == ["code.py", "sub"]


def test_an_unusable_parent_is_named_before_any_work(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(rp.ReportError, match=f"{f} is a file, not a directory"):
        rp.check_output_dir(f / "deeper" / "report", kind=KIND)
    with pytest.raises(rp.ReportError, match=r"cannot write into /proc"):
        rp.check_output_dir("/proc/report", kind=KIND)
    # a missing parent is fine (created when the report is written); the check itself leaves nothing
    assert rp.check_output_dir(tmp_path / "a" / "b", kind=KIND) == tmp_path / "a" / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_parent_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(rp.ReportError, match=f"cannot write into {ro}"):
            rp.check_output_dir(ro / "report", kind=KIND)
    finally:
        ro.chmod(0o700)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_mean_ci_is_the_student_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    mean, half = rp.mean_ci(x)
    # t_{0.975, 4} = 2.7764451051977987 (tables); s = sqrt(sum (x - 5)^2 / 4) = sqrt((16 + 9 + 1 + 4 + 36) / 4)
    assert mean == 5.0
    assert half == pytest.approx(2.7764451051977987 * math.sqrt(66 / 4) / math.sqrt(5), rel=1e-12)
    m2, h2 = rp.mean_ci(np.stack([x, 2 * x], axis=1))
    np.testing.assert_allclose(m2, [5.0, 10.0])
    np.testing.assert_allclose(h2, [half, 2 * half])
    _, h1 = rp.mean_ci(np.array([3.0]))
    assert math.isnan(h1)


def test_write_json_is_strict_sorted_and_converts_numpy(tmp_path):
    path = tmp_path / "r.json"
    rp.write_json(path, {"b": np.float64(1.5), "a": np.arange(3), "c": float("nan"), "d": (np.bool_(True), None)})
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [0, 1, 2], "b": 1.5, "c": "nan", "d": [True, None]}
    with pytest.raises(TypeError, match="cannot write"):
        rp.write_json(path, {"x": object()})


def test_rank_and_table():
    assert rp.rank({"a": 2.0, "b": 1.0, "c": 3.0}) == ["b", "a", "c"]
    assert rp.rank({"a": 2.0, "b": 1.0, "c": 3.0}, higher_is_better=True) == ["c", "a", "b"]
    assert rp.markdown_table(["x", "y"], [[1, 2]]) == "| x | y |\n|---|---|\n| 1 | 2 |"
    assert rp.format_number(0.000123456) == "1.23e-04"
    assert rp.format_number(0.5) == "0.5"


def test_plot_curves_writes_a_png_and_checks_shapes(tmp_path):
    steps = [0, 1, 2]
    rp.plot_curves(tmp_path / "f.png", steps, {"m": np.array([[1.0, 0.5, 0.2], [1.1, 0.6, 0.1]])},
                   title="t", ylabel="y", logy=True)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="expected"):
        rp.plot_curves(tmp_path / "g.png", steps, {"m": np.ones((2, 4))}, title="t", ylabel="y")


# ----------------------------------------------------------------------------- the shared runner
class _Config:
    REPORT_KIND = "bandits"

    def __init__(self, out, quiet=True, force=False):
        self.out, self.quiet, self.force = str(out), quiet, force


def _experiment(calls):
    def experiment(progress):
        calls.append("ran")
        progress.update(1)
        results = rp.plain({"value": rp.MeanCI.of(np.array([1.0, 3.0])), "one": rp.MeanCI.of(np.array([2.0]))})
        return rp.Report(results, lambda tmp, res: (tmp / "f.png").write_bytes(b"png") and {"f": "f.png"},
                         lambda res, figures: f"mean {res['value']['mean']}, {rp.run_time_line(res['timing'])}",
                         summary="table")
    return experiment


def test_run_report_writes_results_report_and_figures_in_one_atomic_move(tmp_path):
    calls = []
    out = tmp_path / "r"
    result = rp.run_report(_Config(out), _experiment(calls), total=1)
    assert calls == ["ran"] and result.out == out
    assert sorted(p.name for p in out.iterdir()) == ["f.png", rp.MANIFEST, "report.md", "results.json"]
    data = json.loads((out / "results.json").read_text())
    # two seeds: s = sqrt(2), t_{0.975, 1} = tan(0.475 pi) (Cauchy quantile), half = t s / sqrt(2) = t
    assert data["value"] == {"mean": 2.0, "ci95": pytest.approx(math.tan(0.475 * math.pi), rel=1e-12),
                             "per_seed": [1.0, 3.0]}
    assert data["one"]["ci95"] == "nan"  # one seed: no interval, and strict JSON on disk
    assert math.isnan(result.results["one"]["ci95"])  # ... while the returned results keep the float
    assert data["timing"]["wall_s"] > 0 and data["timing"]["cpu_s"] >= 0
    assert (out / "report.md").read_text().startswith("mean 2.0, Run time: ")
    assert result.summary.startswith("table\n\nreport: ") and str(out / "report.md") in result.summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_run_report_refuses_a_foreign_out_before_the_experiment_starts(tmp_path):
    calls = []
    before = _foreign(tmp_path / "mine")
    with pytest.raises(rp.ReportError, match="force=True"):
        rp.run_report(_Config(tmp_path / "mine"), _experiment(calls), total=1)
    assert calls == [] and _tree(tmp_path / "mine") == before


def test_run_report_shows_progress_only_on_a_terminal_without_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rp, "_isatty", lambda stream=None: True)
    rp.run_report(_Config(tmp_path / "a", quiet=False), _experiment([]), total=1)
    assert "bandits: 100%" in capsys.readouterr().err
    rp.run_report(_Config(tmp_path / "b", quiet=True), _experiment([]), total=1)
    assert "bandits" not in capsys.readouterr().err


def test_format_mean_ci():
    assert rp.format_mean_ci({"mean": 0.123456, "ci95": 0.0123}) == "0.123 ± 0.012"
    assert rp.format_mean_ci({"mean": 0.999912, "ci95": float("nan")}, fixed_digits=4) == "0.9999"
    assert rp.format_mean_ci({"mean": float("nan"), "ci95": float("nan")}) == "—"


def test_metric_is_a_named_record():
    m = rp.Metric("KL", lower_is_better=True, log_scale=False)
    assert (m.title, m.lower_is_better, m.log_scale) == ("KL", True, False) and tuple(m) == ("KL", True, False)
