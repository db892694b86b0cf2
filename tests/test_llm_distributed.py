"""Two CPU processes through ``accelerate launch`` (DDP on gloo) give the one-process run with the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from llm_fixtures import COMPLETIONS, PREFERENCES, save_tiny, write_jsonl  # noqa: E402

from mdpalign.llm_bridge.train import train  # noqa: E402

STEPS = 3
CPU_DDP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "accelerate", "cpu_ddp.yaml")


def _run_two_processes(cfg: dict, tmp_path) -> dict:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with socket.socket() as sock:  # a free port: a fixed one collides with other runs on a shared machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # the shipped config: accelerate's multi-process launcher (torchrun) + the run's use_cpu=true = DDP over gloo
    # (`accelerate launch --cpu` alone starts ONE process; several need mpirun)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_DDP, "--main_process_port", str(port),
           "-m", "mdpalign.llm_bridge.train", "--config", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(cfg["output_dir"], "train_result.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _losses(history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_two_process_ddp_equals_one_process(tmp_path, objective):
    model_dir = save_tiny(str(tmp_path / "model"))
    rows = COMPLETIONS if objective == "sft" else PREFERENCES
    data = write_jsonl(str(tmp_path / "data.jsonl"), rows)
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective=objective, max_steps=STEPS,
                learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                disable_tqdm=True, seed=0, beta=0.1)
    # SFT: the token-mean loss needs the token count of *both* processes (num_items_in_batch), uneven lengths here
    one = train(dict(base, output_dir=str(tmp_path / "one"), per_device_train_batch_size=4))
    two = _run_two_processes(dict(base, output_dir=str(tmp_path / "two"), per_device_train_batch_size=2), tmp_path)
    assert two["world_size"] == 2  # really two processes in one DDP group
    l1, l2 = _losses(one.log_history), _losses(two["log_history"])
    assert sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5), (step, l1, l2)
    assert l1[STEPS] < l1[1] - 1e-3  # it trained, so equality is not about an untouched model
