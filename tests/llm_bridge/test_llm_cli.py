"""`mdpalign train` / `python -m mdpalign.llm_bridge`: a mistake in the config, its paths or its values is one
line and exit status 2, found before any model, tokenizer or data is loaded (no model is needed for that: none is
built here, and nothing touches the network)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from mdpalign.cli import main  # noqa: E402
from mdpalign.llm_bridge.config import ConfigError, TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is supported where a GPU is")


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mdpalign train: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _base(tmp_path, **paths) -> list[str]:
    argv = ["--use_cpu", "true", "--report_to", "none", "--output_dir", str(tmp_path / "run")]
    for key, value in paths.items():
        argv += [f"--{key}", str(value)]
    return argv


def test_a_missing_config_file(tmp_path, capsys):
    assert "config file not found: " in _error(capsys, "--config", str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("text, message", [
    ("objective: [dpo\n", "not valid YAML"),
    ("- objective\n- dpo\n", "expected a mapping"),
    ("objectiv: dpo\n", "unknown keys ['objectiv']"),
    ("beta: [1, 2]\n", "beta must be float, got list [1, 2]"),
    ("max_steps: 1.5\n", "max_steps must be int, got float 1.5"),
    ("use_peft: 3\n", "use_peft must be bool, got int 3"),
    ("objective: ppo\n", "unknown objective 'ppo'"),
])
def test_a_bad_config_file_names_the_file_and_the_problem(tmp_path, capsys, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    line = _error(capsys, "--config", str(config), *_base(tmp_path))
    assert message in line
    if message != "unknown objective 'ppo'":
        assert str(config) in line


def test_an_unknown_option(tmp_path, capsys):
    assert "unknown options ['--bogus', '1']" in _error(capsys, *_base(tmp_path), "--bogus", "1")


def test_missing_model_dataset_and_checkpoint_paths(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()  # exists; never loaded, since the next path is checked first
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    assert "model_name_or_path" in _error(capsys, *_base(tmp_path, model_name_or_path=tmp_path / "nope",
                                                         dataset_path=data))
    assert "dataset_path" in _error(capsys, *_base(tmp_path, model_name_or_path=model,
                                                   dataset_path=tmp_path / "nope.jsonl"))
    line = _error(capsys, *_base(tmp_path, model_name_or_path=model, dataset_path=data,
                                 resume_from_checkpoint=tmp_path / "checkpoint-9"))
    assert "resume_from_checkpoint" in line and "checkpoint-9" in line
    assert "is a file" in _error(capsys, *_base(tmp_path, model_name_or_path=data, dataset_path=data))


@NO_GPU
def test_bf16_without_a_gpu_says_what_to_change(capsys):
    # the shipped example (bf16: true); TrainingArguments refuses it before the hub model is looked up
    line = _error(capsys, "--config", str(ROOT / "examples" / "llm" / "run.yaml"))
    assert "bf16" in line and "--bf16 false" in line and "--use_cpu true" in line
    with pytest.raises(ConfigError, match="--bf16 false") as exc:
        TrainConfig(output_dir="unused", bf16=True)
    assert isinstance(exc.value, ValueError)  # callers' `except ValueError` keeps working


def test_training_arguments_checks_become_config_errors(tmp_path, capsys):
    line = _error(capsys, *_base(tmp_path), "--save_strategy", "steps", "--load_best_model_at_end", "true")
    assert line.startswith("mdpalign train: error: TrainingArguments: ") and "load_best_model_at_end" in line


def test_python_m_llm_bridge_answers_like_mdpalign_train(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mdpalign.llm_bridge", "--config", "missing.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "mdpalign train: error: config file not found: missing.yaml"
