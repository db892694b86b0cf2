""""Try it without a download": ``examples/llm/make_tiny_model.py`` builds a tiny model, and every
``examples/llm/*.yaml`` trains with it on a CPU with the override the README gives (``--model_name_or_path DIR
--use_cpu true``), here at 2 steps, in-process; the README shows each of those commands."""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")

from mdpalign.cli.llm import run_command  # noqa: E402
from mdpalign.llm_bridge.evaluate import evaluate_reward  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "llm"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
# one metric that only its objective logs: the run went through that objective's loss
METRIC = {"sft": "nll", "dpo": "rewards/margins", "orpo": "log_odds_ratio", "ift": "ift/weight_mean",
          "crlft": "weights", "reward": "accuracy", "grpo": "rewards/target_word_fraction/mean"}
STEPS = 2


def _load_example_script():
    spec = importlib.util.spec_from_file_location("make_tiny_model", EXAMPLES / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _load_example_script().make_tiny_model(str(tmp_path_factory.mktemp("examples") / "tiny-model"))


def test_make_tiny_model_refuses_a_folder_that_is_not_empty(tiny, capsys):
    before = sorted(os.listdir(tiny))
    with pytest.raises(SystemExit) as exc:
        _load_example_script().main(["--out", tiny])
    assert exc.value.code == 2 and "exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tiny)) == before  # nothing overwritten


def test_the_examples_cover_every_offline_objective():
    objectives = {yaml.safe_load(path.read_text())["objective"] for path in CONFIGS}
    assert {"sft", "dpo", "orpo", "ift", "crlft", "reward"} <= objectives


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_example_trains_with_the_tiny_model_on_a_cpu(tiny, tmp_path, monkeypatch, config):
    monkeypatch.chdir(ROOT)  # the examples name their data relative to the repository root, as the README runs them
    out = tmp_path / "run"
    argv = ["--config", str(config.relative_to(ROOT)), "--model_name_or_path", tiny, "--use_cpu", "true",
            "--max_steps", str(STEPS), "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true",
            "--logging_steps", "1"]
    assert run_command(argv) == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["global_step"] == STEPS
    logs = [h for h in result["log_history"] if "loss" in h]
    assert len(logs) == STEPS and all(math.isfinite(h["loss"]) for h in logs)
    objective = yaml.safe_load(config.read_text())["objective"]
    if objective in METRIC:
        assert all(METRIC[objective] in h for h in logs), (objective, logs[0])
    if objective == "reward":  # and the README's eval command reads what it saved
        data = str(EXAMPLES / "rated_preferences.jsonl")
        report = evaluate_reward(str(out), data)
        assert report.kind == "reward_model" and report.n == 6 and set(report.subsets) == {"math", "facts"}


def test_the_readme_shows_each_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Try it without a download", 1)[1].split("\n## ", 1)[0]
    assert "python examples/llm/make_tiny_model.py --out tiny-model" in section
    for config in CONFIGS:
        command = f"mdpalign train --config examples/llm/{config.name} --model_name_or_path tiny-model --use_cpu true"
        assert command in section, command
