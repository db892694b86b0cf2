"""`mdpalign solve frozen-lake`: JSON output equals the solver, arrows drawn per non-terminal cell."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mdpalign.cli import main
from mdpalign.envs.frozen_lake import ARROWS, frozen_lake
from mdpalign.solve import finite_horizon, policy_iteration, soft_value_iteration


def run_json(capsys, *argv) -> dict:
    assert main(["solve", "frozen-lake", *argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # exactly one JSON object
    return json.loads(out[0])


def test_json_matches_solver(capsys):
    data = run_json(capsys, "--map", "8x8", "--gamma", "0.99")
    lake = frozen_lake("8x8", True, 0.99)
    sol = policy_iteration(lake.mdp)
    assert data["start_value"] == pytest.approx(sol.values[lake.start_state], abs=1e-12)
    assert data["error_bound"] <= 1e-10
    np.testing.assert_allclose(data["values"], sol.values, atol=1e-12)
    assert len(data["policy"]) == 64
    for key in ("method", "gamma", "horizon", "iterations", "elapsed"):
        assert key in data
    assert data["method"] == "policy_iteration" and data["gamma"] == 0.99 and data["horizon"] is None


def test_json_horizon_and_soft_and_custom_map(capsys):
    data = run_json(capsys, "--map", "SFFF,FHFH,FFFH,HFFG", "--gamma", "1", "--horizon", "100")
    lake = frozen_lake("4x4", True, 1.0)
    fh = finite_horizon(lake.mdp, 100)
    assert data["start_value"] == pytest.approx(fh.values[0, 0], abs=1e-12)
    assert data["policy"] == fh.policy[0].tolist()
    data = run_json(capsys, "--method", "soft", "--beta", "0.05", "--no-slippery")
    soft = soft_value_iteration(frozen_lake("4x4", False, 0.99).mdp, 0.05)
    assert data["start_value"] == pytest.approx(soft.values[0], abs=1e-9)
    assert data["slippery"] is False


@pytest.mark.parametrize("method", ["pi", "vi", "lp"])
def test_text_output_draws_one_arrow_per_nonterminal_cell(capsys, method):
    assert main(["solve", "frozen-lake", "--map", "8x8", "--gamma", "1", "--method", method]) == 0
    out = capsys.readouterr().out
    lake = frozen_lake("8x8", True, 1.0)
    grid = out.strip().splitlines()[-8:]
    assert [len(row) for row in grid] == [8] * 8
    arrows = sum(c in ARROWS for row in grid for c in row)
    assert arrows == int((~lake.mdp.terminal).sum())
    for row, desc in zip(grid, lake.desc):
        for c, d in zip(row, desc):
            assert (c in "HG") == (d in "HG") and (c == d if d in "HG" else True)
    assert "start value   1.0000000000" in out


@pytest.mark.parametrize("argv", [
    ["--gamma", "1.5"], ["--gamma", "abc"], ["--method", "dp"], ["--method", "soft"],
    ["--beta", "0.1"], ["--method", "soft", "--beta", "-1"], ["--horizon", "-3"],
    ["--map", "16x16"], ["--map", "SFX,FFG"], ["--map", "SHG,HHH"],
    ["--method", "soft", "--beta", "1", "--horizon", "5"],
])
def test_bad_options_are_argparse_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["solve", "frozen-lake", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _exit_2(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["solve", "frozen-lake", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    return err


def test_a_horizon_too_long_for_memory_is_refused_before_allocating(capsys):
    H = 10**9
    err = _exit_2(capsys, "--map", "8x8", "--horizon", str(H))
    m = re.search(r"--horizon 1000000000 needs about ([\d.]+) (GiB|TiB|PiB)", err)
    assert m, err
    need = float(m[1]) * 1024 ** {"GiB": 3, "TiB": 4, "PiB": 5}[m[2]]
    # at least the two float64 tables backward induction holds at once, values (H+1) x 64 and Q-values
    # H x 64 x 4; the message rounds to 3 significant digits (relative error < 5e-3)
    assert need >= 8 * ((H + 1) * 64 + H * 64 * 4) * (1 - 5e-3)


def test_the_horizon_memory_check_suggests_a_horizon_that_fits(capsys, monkeypatch):
    import mdpalign.cli.solve as solve_cli

    monkeypatch.setattr(solve_cli, "_available_memory", lambda: 100_000)
    # 4x4 has 16 states x 4 actions: 200 steps hold at least 8 * 200 * 16 * (1 + 4) = 128 000 bytes
    err = _exit_2(capsys, "--horizon", "200")
    fits = int(re.search(r"use --horizon (\d+) or less", err)[1])
    assert 0 < fits < 200
    assert main(["solve", "frozen-lake", "--horizon", str(fits), "--json"]) == 0  # the suggestion is honest
    assert json.loads(capsys.readouterr().out)["horizon"] == fits


def test_a_one_column_map_is_solved(capsys):
    # S above F above G, deterministic: DOWN twice, reward 1 on entering G at the second step -> value gamma
    data = run_json(capsys, "--map", "S,F,G", "--no-slippery", "--gamma", "0.9")
    assert data["start_value"] == pytest.approx(0.9, abs=1e-12)
    assert data["policy"][:2] == [1, 1]  # DOWN, DOWN
