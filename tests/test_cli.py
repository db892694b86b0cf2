"""mdpalign.cli: a user's mistake is one line and exit status 2, Ctrl-C is exit 130, a bug keeps its traceback;
``python -m mdpalign.cli.bench`` answers the same way."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mdpalign.cli.solve as solve_cli
from mdpalign.cli import main
from mdpalign.errors import MdpalignError
from mdpalign.solve import SolverError

ROOT = Path(__file__).resolve().parents[1]


def _raising(exc):
    def command(args):
        raise exc

    return command


def _exit(capsys, code: int) -> str:
    with pytest.raises(SystemExit) as info:
        main(["solve", "frozen-lake"])
    assert info.value.code == code
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    return captured.err


def test_a_library_error_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(solve_cli, "run_frozen_lake", _raising(SolverError("value iteration did not converge\n"
                                                                           "  after 10 iterations")))
    assert _exit(capsys, 2) == "mdpalign solve: error: value iteration did not converge after 10 iterations\n"


def test_an_os_error_on_a_path_is_one_line_naming_the_path(monkeypatch, capsys):
    monkeypatch.setattr(solve_cli, "run_frozen_lake", _raising(PermissionError(13, "Permission denied", "/x/y")))
    assert _exit(capsys, 2) == "mdpalign solve: error: /x/y: Permission denied\n"


def test_ctrl_c_is_exit_130_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(solve_cli, "run_frozen_lake", _raising(KeyboardInterrupt()))
    assert _exit(capsys, 130) == "mdpalign solve: interrupted\n"


@pytest.mark.parametrize("bug", [RuntimeError("bug"), ValueError("bug"), TypeError("bug"), KeyError("bug")])
def test_any_other_exception_is_a_bug_and_keeps_its_traceback(monkeypatch, bug):
    monkeypatch.setattr(solve_cli, "run_frozen_lake", _raising(bug))
    with pytest.raises(type(bug)):
        main(["solve", "frozen-lake"])


def test_mdpalign_traceback_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setattr(solve_cli, "run_frozen_lake", _raising(SolverError("no")))
    monkeypatch.setenv("MDPALIGN_TRACEBACK", "1")
    with pytest.raises(MdpalignError):
        main(["solve", "frozen-lake"])


def test_python_m_bench_cli_answers_like_mdpalign_bench(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mdpalign.cli.bench", "frozen-lake", "--quiet", "--out", "."],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mdpalign bench: error: --out '.' is the current directory")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []
