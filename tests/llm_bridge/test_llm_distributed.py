"""Two CPU processes through ``accelerate launch`` give the one-process run with the same global batch:
DDP on gloo with the shipped ``cpu_ddp.yaml``, and FSDP2 with the shipped ``fsdp.yaml`` (two processes, fp32; run
through ``tests/support/fsdp_cpu_launch.py``, since accelerate enables FSDP only on accelerators)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from llm_fixtures import (  # noqa: E402
    COMPLETIONS,
    PREFERENCES,
    launch_two_processes,
    save_tiny,
    step_losses,
    write_jsonl,
)
from safetensors.torch import load_file  # noqa: E402

from mdpalign.llm_bridge.training import train  # noqa: E402

STEPS = 3
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(os.path.dirname(TESTS), "configs", "accelerate")
CPU_DDP = os.path.join(CONFIGS, "cpu_ddp.yaml")
FSDP_CPU_LAUNCH = os.path.join(TESTS, "support", "fsdp_cpu_launch.py")


def _run_two_processes(cfg: dict, tmp_path, accelerate_config: str = CPU_DDP, entry: list[str] | None = None) -> dict:
    # the shipped config: accelerate's multi-process launcher (torchrun) + the run's use_cpu=true = DDP over gloo
    # (`accelerate launch --cpu` alone starts ONE process; several need mpirun)
    return launch_two_processes(cfg, tmp_path, accelerate_config, entry or ["-m", "mdpalign.llm_bridge"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo", "reward"])
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
    l1, l2 = step_losses(one.log_history), step_losses(two["log_history"])
    assert sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5), (step, l1, l2)
    assert l1[STEPS] < l1[1] - 1e-3  # it trained, so equality is not about an untouched model


def _cpu_fsdp_config(tmp_path, state_dict_type: str | None = None) -> str:
    """The shipped fsdp.yaml with two processes in fp32 (CPU has no bf16 autocast worth testing here)."""
    with open(os.path.join(CONFIGS, "fsdp.yaml"), encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    cfg.update(num_processes=2, mixed_precision="no")
    if state_dict_type:
        cfg["fsdp_config"]["fsdp_state_dict_type"] = state_dict_type
    path = tmp_path / "cpu_fsdp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _weights(directory: str) -> dict[str, torch.Tensor]:
    names = [f for f in ("adapter_model.safetensors", "model.safetensors")
             if os.path.isfile(os.path.join(directory, f))]
    assert names, f"no weights saved in {directory}: {sorted(os.listdir(directory))}"
    return load_file(os.path.join(directory, names[0]))


@pytest.mark.slow
@pytest.mark.parametrize("objective, extra", [
    ("sft", {}), ("dpo", {"reference": "model"}), ("dpo", {"reference": "precomputed"}), ("orpo", {}), ("ift", {}),
    # no LoRA dropout: its RNG is per process
    ("dpo", {"reference": "adapter_disabled", "use_peft": True, "lora_r": 4, "lora_dropout": 0.0}),
    ("reward", {"center_rewards_coefficient": 0.01}),
], ids=["sft", "dpo-model", "dpo-precomputed", "orpo", "ift", "dpo-peft", "reward"])
def test_two_process_fsdp2_equals_one_process(tmp_path, objective, extra):
    """FSDP2 shards every parameter; the losses, and the full weights it saves, are the one-process run's.

    DPO runs its live reference model sharded too (prepared in evaluation mode); IFT builds its fused input
    embeddings inside the sharded forward (a lookup outside it would read one shard of the table). The IFT run
    uses SHARDED_STATE_DICT, for which transformers' save_model alone writes no weights."""
    model_dir = save_tiny(str(tmp_path / "model"))
    rows = PREFERENCES if objective in ("dpo", "orpo", "reward") else COMPLETIONS
    data = write_jsonl(str(tmp_path / "data.jsonl"), rows)
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective=objective, max_steps=STEPS,
                learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                disable_tqdm=True, seed=0, beta=0.1, ift_lambda=0.3, ift_decay=0.9, **extra)
    # ORPO's NLL is a token mean per micro-batch (TRL's reduction), so two processes of 2 equal one process with two
    # accumulated micro-batches of 2, not one batch of 4 (uneven lengths)
    single = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2) if objective == "orpo" else \
        dict(per_device_train_batch_size=4)
    one = train(dict(base, output_dir=str(tmp_path / "one"), **single))
    two = _run_two_processes(dict(base, output_dir=str(tmp_path / "two"), per_device_train_batch_size=2), tmp_path,
                             _cpu_fsdp_config(tmp_path, "SHARDED_STATE_DICT" if objective == "ift" else None),
                             [FSDP_CPU_LAUNCH])
    assert two["world_size"] == 2
    l1, l2 = step_losses(one.log_history), step_losses(two["log_history"])
    assert sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5), (step, l1, l2)
    assert l1[STEPS] < l1[1] - 1e-3
    w1, w2 = _weights(one.output_dir), _weights(str(tmp_path / "two"))
    assert set(w2) == set(w1)
    for name, w in w1.items():
        torch.testing.assert_close(w2[name], w, atol=1e-5, rtol=1e-4, msg=name)
    if extra.get("use_peft"):  # the adapter moved away from its zero-initialised B
        assert any(w.abs().max() > 1e-4 for n, w in w1.items() if "lora_B" in n)
    else:
        initial = _weights(model_dir)
        # saved weights are the trained ones (a reward model's new score head is in no initial checkpoint)
        assert any(not torch.equal(w1[n], initial[n]) for n in w1 if n in initial)


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_the_same_run(tmp_path):
    """Resuming a two-process FSDP2 run from its step-2 checkpoint (model, optimizer, scheduler, RNG) repeats steps
    3 and 4 of the uninterrupted run. The resumed run is pointed at a *different* initial model, so only weights
    restored from the checkpoint can give the same losses."""
    model_dir = save_tiny(str(tmp_path / "model"))
    data = write_jsonl(str(tmp_path / "data.jsonl"), COMPLETIONS)
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective="sft", max_steps=4, learning_rate=3e-3,
                logging_steps=1, save_strategy="steps", save_steps=2, report_to="none", use_cpu=True,
                disable_tqdm=True, seed=0, per_device_train_batch_size=2)
    launch = dict(accelerate_config=_cpu_fsdp_config(tmp_path), entry=[FSDP_CPU_LAUNCH])
    full = _run_two_processes(dict(base, output_dir=str(tmp_path / "full")), tmp_path, **launch)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "optimizer.bin").is_file()
    other = save_tiny(str(tmp_path / "other"), seed=1)
    resumed = _run_two_processes(dict(base, model_name_or_path=other, output_dir=str(tmp_path / "resumed"),
                                      resume_from_checkpoint=str(checkpoint)), tmp_path, **launch)
    lf, lr = step_losses(full["log_history"]), step_losses(resumed["log_history"])
    assert resumed["global_step"] == 4 and sorted(lr) == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's state
    for step in (3, 4):
        assert lr[step] == pytest.approx(lf[step], abs=1e-6), (lf, lr)
    assert lf[4] < lf[2] - 1e-3  # training moved between checkpoint and end


def test_exit_without_finalization_keeps_what_a_normal_exit_keeps(tmp_path):
    """The multi-process CLI ends with ``exit_without_finalization``: the ``atexit`` handlers still run (trackers
    finish there), buffered output still arrives, the exit code is the one given, and finalization, where gloo's
    threads can abort a finished run, is skipped (an object's ``__del__`` that a normal exit runs does not run)."""
    marker = tmp_path / "atexit_ran"
    script = f"""
import atexit, sys
from mdpalign.llm_bridge.training import exit_without_finalization

class Finalised:
    # the stream bound now: module teardown (which transformers' imports make run before this object goes) may
    # already have set this module's global `sys` to None
    def __del__(self, write=sys.stderr.write):
        write("finalised")

kept = Finalised()
atexit.register(lambda: open({str(marker)!r}, "w").write("yes"))
sys.stdout.write("buffered, no newline")
if sys.argv[1] == "skip":
    exit_without_finalization(3)
"""
    normal = subprocess.run([sys.executable, "-c", script, "normal"], capture_output=True, text=True, timeout=60)
    assert normal.returncode == 0 and "finalised" in normal.stderr  # the check below can fail
    marker.unlink()
    skipped = subprocess.run([sys.executable, "-c", script, "skip"], capture_output=True, text=True, timeout=60)
    assert skipped.returncode == 3
    assert skipped.stdout == "buffered, no newline"
    assert marker.read_text() == "yes"
    assert "finalised" not in skipped.stderr
