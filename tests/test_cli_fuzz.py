"""Fuzzing the ``solve`` and ``bench`` command lines: random flags with values drawn from pools that mix good and
bad ones. Every run must end with exit status 0 (and then a report exists) or 2 (and then one ``error:`` line);
any other exception — a traceback — fails the test.

The CLI runs in-process (``mdpalign.cli.main``) so that an example costs milliseconds when it is refused and
about a second when it runs: steps, seeds, methods and the network are tiny, and the benchmarks' figures are
replaced by a stub (matplotlib is tested in test_bench_report.py; here it would be 80% of the time).
"""
from __future__ import annotations

import collections
import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.cli import main

BAD_NUMBERS = ["0", "-1", "nan", "inf", "x", ""]

# flag: (good values, bad values); a flag without a value is (True,)
SOLVE = {
    "--map": (["4x4", "8x8", "SFFF,FHFH,FFFH,HFFG", "SG", "S,F,G", "SFFG,FHHF"],
              ["S", "G", "", ",", "16x16", "SFX", "SH,HG", "sffg", "SS,GG", "SFG,FF"]),
    "--no-slippery": ([True], []),
    "--gamma": (["0", "0.5", "0.99", "1"], ["1.5", "-0.1", "nan", "inf", "abc", ""]),
    "--horizon": (["0", "1", "5"], ["-1", "x", "1000000000", "1e3", "3.5"]),
    "--method": (["pi", "vi", "lp", "soft"], ["dp", ""]),
    "--beta": (["0.05", "1", "1e-3"], BAD_NUMBERS),
    "--tol": (["1e-10", "1e-3"], BAD_NUMBERS),
    "--json": ([True], []),
}

# never 8x8 or larger open maps in the bench pool: picking their two trajectories enumerates every simple path
# (minutes on 8x8; see the report of this change)
BENCH_COMMON = {
    "--seeds": (["1", "2"], ["0", "-1", "x", "1.5"]),
    "--steps": (["1", "2"], ["0", "x"]),
    "--eval-every": (["1"], ["2", "3", "0"]),  # 2 and 3 are bad only with fewer --steps
    "--lr": (["0.01", "0.5"], [*BAD_NUMBERS, "1e300"]),
    "--seed": (["0", "7"], ["-1", "x", str(2**63)]),
    "--force": ([True], []),
}
FROZEN_LAKE = {
    **BENCH_COMMON,
    "--map": (["two-path", "SFFG,FHHF,FFFF,HFFH", "SFFG,FHHF"],
              ["4x4", "SFG", "SFHG", "SFFF,FFFF,FFFG", "", "XYZ", "SG", "S,G", "16x16"]),
    "--slippery": ([True], []),
    "--no-slippery": ([True], []),
    "--suboptimal": (["longer", "hole"], ["shorter", ""]),
    "--methods": (["sft", "dpo,ipo", "orpo,ift,crlft,oracle", "SFT"], ["", "rlhf", "sft,sft", ",,"]),
    "--gamma": (["0.95", "0.5"], ["1.0", *BAD_NUMBERS]),
    "--beta-star": (["0.05", "1"], BAD_NUMBERS),
    "--hidden": (["2"], ["0", "x"]),
    "--crlft-beta": (["0.5"], BAD_NUMBERS),
}
BANDITS = {
    **BENCH_COMMON,
    "--arms": (["2", "3"], ["1", "0", "x"]),
    "--contexts": (["1", "2"], ["0", "x"]),
    "--beta": (["0.5", "5"], [*BAD_NUMBERS, "1e300"]),
    "--objectives": (["sft", "dpo,kl_rl", "ipo,orpo,crlft"], ["ppo", "", "SFT,sft"]),
    "--regimes": (["deterministic", "partial_coverage,mixed_quality", "bt_all_pairs"], ["everything", ""]),
}
# {tmp}: a fresh directory; {file}: a file in it; {foreign}: a directory of someone else's files in it
OUTS = (["{tmp}/report", "{tmp}/a/b/report", "{foreign}", "{file}"], ["{file}/report", "", ".", "/proc/report", "/"])
# flags that bound the run time: always present (their values may still be bad)
REQUIRED = {"frozen-lake": ("--seeds", "--steps", "--eval-every", "--methods", "--hidden"),
            "bandits": ("--seeds", "--steps", "--eval-every", "--objectives", "--regimes", "--arms", "--contexts")}


def _value(good_bad) -> st.SearchStrategy:
    """A good value 7 times in 8: with ~10 flags a fair share of the mixes runs the whole experiment."""
    good, bad = good_bad
    if not bad:
        return st.sampled_from(good)
    return st.integers(0, 7).flatmap(lambda i: st.sampled_from(bad if i == 0 else good))


def _options(pool: dict, required=()):
    return st.fixed_dictionaries({k: _value(pool[k]) for k in required},
                                 optional={k: _value(v) for k, v in pool.items() if k not in required})


def _argv(options: dict) -> list[str]:
    argv = []
    for flag, value in options.items():
        argv += [flag] if value is True else [flag, value]
    return argv


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text
    assert code in (0, 2), (argv, code, text)
    if code == 2:
        assert "error:" in err.getvalue(), (argv, text)
    return code, text


@pytest.fixture(scope="module")
def no_figures():
    from mdpalign.bench.bandits import figures as bandits_figures
    from mdpalign.bench.frozen_lake import figures as frozen_lake_figures

    with pytest.MonkeyPatch.context() as mp:
        for module in (frozen_lake_figures, bandits_figures):
            mp.setattr(module, "write_figures", lambda tmp, results: collections.defaultdict(lambda: "none.png"))
        yield


def _consistent_solve(options: dict) -> dict:
    """--beta goes with --method soft only, --horizon without it: most mixes obey, so that they reach the solver."""
    options = dict(options)
    if options.get("--method") == "soft":
        options.setdefault("--beta", "0.05")
        options.pop("--horizon", None)
    else:
        options.pop("--beta", None)
    return options


@pytest.fixture(scope="module")
def two_gib_machine():
    """The horizon check sees 2 GiB free on every machine: a long --horizon is refused everywhere (on a large
    machine it would be accepted and run for hours), the short ones in the pool run everywhere."""
    import mdpalign.cli.solve as solve_cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(solve_cli, "_available_memory", lambda: 2 * 1024**3)
        yield


@settings(max_examples=120)
@given(options=_options(SOLVE), consistent=st.integers(0, 7))
def test_solve_answers_every_option_mix_with_0_or_2(options, consistent, two_gib_machine):
    _run(["solve", "frozen-lake", *_argv(_consistent_solve(options) if consistent else options)])


@pytest.mark.parametrize("experiment, pool, examples", [("frozen-lake", FROZEN_LAKE, 20), ("bandits", BANDITS, 40)])
def test_bench_answers_every_option_mix_with_0_or_2(experiment, pool, examples, no_figures):
    @settings(max_examples=examples)
    @given(options=_options(pool, REQUIRED[experiment]), out=_value(OUTS))
    def check(options, out):
        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
            tmp = Path(tmp)
            mp.chdir(tmp)
            (tmp / "file").write_text("someone's file")
            (tmp / "foreign").mkdir()
            (tmp / "foreign" / "notes.txt").write_text("someone's notes")
            target = out.format(tmp=tmp, file=tmp / "file", foreign=tmp / "foreign")
            code, text = _run(["bench", experiment, "--quiet", "--out", target, *_argv(options)])
            # nothing of someone else's is ever lost: kept in place, or moved aside with --force
            kept = [tmp / "file", *(tmp.glob("file.replaced-*"))]
            assert [p.read_text() for p in kept if p.is_file()] == ["someone's file"]
            notes = [tmp / "foreign" / "notes.txt", *(tmp.glob("foreign.replaced-*/notes.txt"))]
            assert [p.read_text() for p in notes if p.is_file()] == ["someone's notes"]
            if code == 0:
                assert (Path(target) / "results.json").is_file()
            leftovers = [p.name for p in tmp.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
            assert leftovers == [], (options, out, text)

    check()
