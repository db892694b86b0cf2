"""mdpalign.bench.report: the atomic output directory, JSON writing, confidence intervals, figures."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mdpalign.bench import report as rp


def test_atomic_output_dir_creates_and_replaces_only_on_success(tmp_path):
    out = tmp_path / "rep"
    with rp.atomic_output_dir(out) as tmp:
        assert tmp.parent == tmp_path and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with rp.atomic_output_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
        assert (out / "a.txt").exists()  # the old report stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_atomic_output_dir_keeps_the_old_report_on_failure(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with rp.atomic_output_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            1 / 0
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_atomic_output_dir_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(rp.ReportError, match="not a directory"):
        with rp.atomic_output_dir(f):
            pass


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
