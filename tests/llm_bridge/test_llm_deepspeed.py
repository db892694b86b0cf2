"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo) give the one-process run with the same global batch.

Needs deepspeed, which is not a dependency of mdpalign (``pip install deepspeed==0.19.8 --no-build-isolation``):
skipped without it. Each case launches ``tests/support/deepspeed_probe.py`` (``mdpalign train`` plus a record of
what DeepSpeed did in each process) with ``configs/accelerate/cpu_deepspeed_zero{2,3}.yaml``.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("deepspeed")
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(ROOT, "tests", "support", "deepspeed_probe.py")
STEPS = 3
# 3 rows per LM-head chunk: the two processes then need different numbers of chunks, the case where ZeRO-3 (which
# all-gathers the head's weight on every call) hangs unless every process calls the head equally often
CHUNK = 3
ZERO_OPTIMIZER = {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}
CASES = {
    "sft": dict(objective="sft"),
    "dpo-model": dict(objective="dpo", reference="model"),
    "dpo-precomputed": dict(objective="dpo", reference="precomputed"),
}


def _launch(stage: int, cfg: dict, tmp_path) -> tuple[dict, list[dict]]:
    """Two processes under DeepSpeed ZeRO-``stage``; returns train_result.json and each process's probe record."""
    config = os.path.join(ROOT, "configs", "accelerate", f"cpu_deepspeed_zero{stage}.yaml")
    # CPU even where a GPU is visible: this is the CPU check
    result = launch_two_processes(cfg, tmp_path, config, [PROBE], CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    probes = []
    for name in sorted(glob.glob(os.path.join(cfg["output_dir"], "probe_rank*.json"))):
        with open(name, encoding="utf-8") as fh:
            probes.append(json.load(fh))
    return result, probes


def _tolerance(losses: dict[int, float]) -> float:
    """16 fp32 rounding steps of the largest loss. The two runs add the same fp32 numbers in another order (two
    half-batch gradients all-reduced vs one batch; other chunk boundaries), which moves a loss by a few units in the
    last place per step (measured: at most 1 ulp for SFT, 12 ulp of the much smaller step-3 DPO loss = 1e-8)."""
    return 16 * float(np.finfo(np.float32).eps) * max(1.0, max(abs(v) for v in losses.values()))


def _weights(directory: str) -> dict:
    return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_deepspeed_equals_one_process(tmp_path, stage, case):
    model_dir = save_tiny(str(tmp_path / "model"))
    rows = COMPLETIONS if CASES[case]["objective"] == "sft" else PREFERENCES
    data = write_jsonl(str(tmp_path / "data.jsonl"), rows)
    base = dict(model_name_or_path=model_dir, dataset_path=data, max_steps=STEPS, learning_rate=3e-3, logging_steps=1,
                save_strategy="no", report_to="none", disable_tqdm=True, seed=0, beta=0.1, logps_chunk_size=CHUNK,
                **CASES[case])
    one = train(dict(base, output_dir=str(tmp_path / "one"), use_cpu=True, per_device_train_batch_size=4))
    # global batch 4 = 2 processes x 1 example x 2 accumulation steps (SFT: the token count of all four micro-batches
    # normalises each one; DeepSpeed must not divide by the accumulation steps again)
    two, probes = _launch(stage, dict(base, output_dir=str(tmp_path / "two"), use_cpu=False, ddp_backend="gloo",
                                      per_device_train_batch_size=1, gradient_accumulation_steps=2), tmp_path)

    assert two["world_size"] == 2 and len(probes) == 2  # one DeepSpeed group of two processes, not two runs of one
    for probe in probes:
        assert probe["optimizer"] == ZERO_OPTIMIZER[stage], probe
        assert probe["head_zero3"] == (stage == 3), probe
        if stage == 3:  # the head's weight is a shard between calls, gathered by ZeRO-3's hooks when called
            assert probe["head_local_numel"] == 0 and probe["head_numel"] > 0, probe
    if stage == 3:
        calls = [p["head_call_rows"] for p in probes]
        assert len(calls[0]) == len(calls[1])  # forward + backward recompute: the same number of gathers per process
        assert 0 in calls[0] + calls[1]  # ... which took empty calls: the processes needed different chunk counts

    l1, l2 = step_losses(one.log_history), step_losses(two["log_history"])
    assert sorted(l2) == list(range(1, STEPS + 1))
    tol = _tolerance(l1)
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=tol), (step, tol, l1, l2)
    assert l1[STEPS] < l1[1] - 1e-3  # it trained, so equality is not about an untouched model

    # save_model wrote the trained weights (ZeRO-3: gathered from the shards) as one loadable file. Compared in L2
    # relative to how far training moved them: Adam divides each coordinate's gradient by its own running RMS, so
    # where a gradient is near 0 fp32 noise becomes a step of order lr (measured: 1.3e-5 relative with Adam, 2e-7
    # with SGD); a stale, untrained or half-gathered save is off by order 1
    w0, w1, w2 = _weights(model_dir), _weights(one.output_dir), _weights(str(tmp_path / "two"))
    assert sorted(w1) == sorted(w2)
    diff = sum(float((w1[k] - w2[k]).double().square().sum()) for k in w1) ** 0.5
    moved = sum(float((w1[k] - w0[k]).double().square().sum()) for k in w1) ** 0.5
    assert diff <= 1e-3 * moved, (diff, moved)
