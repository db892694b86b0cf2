"""benchmarks/conformance_trl.py on two losses: TRL's own DPO code reaches DPO's optimum, and with
label_smoothing=0.1 its ``sigmoid`` loss still lands on the unsmoothed optimum (TRL ignores the option there)."""
import importlib.util
import json
import os

import pytest

pytest.importorskip("trl")

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "conformance_trl.py")


def _script():
    spec = importlib.util.spec_from_file_location("conformance_trl", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_conformance_script_on_two_losses(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    out, js = tmp_path / "c.md", tmp_path / "c.json"
    assert _script().main(["--only", "dpo:sigmoid", "dpo:sigmoid+ls", "--out", str(out), "--json", str(js)]) == 0
    rows = {r["id"]: r for r in json.loads(js.read_text())["rows"]}
    plain = {g["regime"]: g for g in rows["dpo:sigmoid"]["regimes"]}
    for regime in ("bt_all_pairs", "partial_coverage", "two_arm"):
        g = plain[regime]
        assert g["status"] == "reached" and g["distance"] <= g["tolerance"], g
    assert plain["deterministic"]["status"] == "no claim"
    smoothed = {g["regime"]: g for g in rows["dpo:sigmoid+ls"]["regimes"]}
    for regime in ("bt_all_pairs", "two_arm"):
        g = smoothed[regime]
        # the cDPO claim is missed by far more than the certificate, and the fit sits on the UNsmoothed optimum
        assert g["status"] == "missed" and g["distance"] > 1e3 * g["tolerance"], g
        assert g["distance_to"]["kl_rl"] <= g["tolerance"], g
    text = out.read_text()
    assert text.startswith("# TRL ") and "| dpo:sigmoid+ls |" in text and "**missed**" in text
