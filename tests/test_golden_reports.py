"""The default reports give the numbers they gave before the restructure (issue 10: a move, not a rewrite).

tests/golden/*.json are the results.json of `mdpalign bench frozen-lake` and `mdpalign bench bandits` with the
default settings, written by the code after issue 9's fixes and before the restructure of issue 10, minus `timing`
and `versions`. (Issue 9's certified solvers changed π* by 1e-15; the frozen-lake θ* distillation, which stops at
its iteration cap before its gradient target, amplifies that into up to 8% in parameter MSE — every policy-level
number stayed identical. That sensitivity is one more reason the report does not rank by parameter MSE.)
Every number, string and key of the stored copy must be reproduced. Floats are compared at a relative 1e-9
(absolute 1e-12 near zero): a change of any setting, seed or operation order moves them by far more, while a
different CPU's vector kernels could move the last bits of a float64 reduction.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mdpalign.cli import main

GOLDEN = Path(__file__).parent / "golden"
IGNORED = {"timing", "versions", "report"}  # machine-dependent, or the report's own identification marker


def _diffs(expected, actual, path="", out=None):
    out = [] if out is None else out
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected a mapping, got {type(actual).__name__}")
            return out
        for k in expected:
            if k not in actual:
                out.append(f"{path}/{k}: missing")
            else:
                _diffs(expected[k], actual[k], f"{path}/{k}", out)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            out.append(f"{path}: expected a list of {len(expected)}, got {actual!r:.80}")
            return out
        for i, (e, a) in enumerate(zip(expected, actual)):
            _diffs(e, a, f"{path}[{i}]", out)
    elif isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        if not math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{path}: expected {expected!r}, got {actual!r}")
    elif expected != actual:
        out.append(f"{path}: expected {expected!r}, got {actual!r}")
    return out


@pytest.mark.parametrize("bench, golden", [("frozen-lake", "frozen_lake_results.json"),
                                            ("bandits", "bandits_results.json")])
def test_default_report_numbers_unchanged(bench, golden, tmp_path):
    out = tmp_path / "report"
    assert main(["bench", bench, "--out", str(out), "--quiet"]) == 0
    actual = json.loads((out / "results.json").read_text())
    expected = json.loads((GOLDEN / golden).read_text())
    for key in IGNORED:
        expected.pop(key, None)
        actual.pop(key, None)
    extra = sorted(set(actual) - set(expected))
    diffs = _diffs(expected, actual)
    assert not diffs, f"{len(diffs)} differences from tests/golden/{golden}, first: {diffs[:10]}"
    assert not extra, f"results.json has keys the stored copy lacks: {extra} (a new key is fine only if it is " \
                      "documented; add it to IGNORED with the reason)"
