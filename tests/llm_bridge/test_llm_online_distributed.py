"""Online RL across processes: a two-process ``accelerate launch`` (DDP on gloo, ``configs/accelerate/cpu_ddp.yaml``)
equals one process with the same global batch — generation included, since each completion's sampling noise is a
function of (seed, round, its index in the step's global batch), not of the process that draws it."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from llm_fixtures import build_small_llama, build_word_tokenizer, launch_two_processes, step_losses, write_jsonl  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mdpalign.llm_bridge.config import FixedPointWarning  # noqa: E402
from mdpalign.llm_bridge.training import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_DDP = os.path.join(ROOT, "configs", "accelerate", "cpu_ddp.yaml")
WORDS = ["<pad>", "<eos>", "a", "b", "c", "d", "e", "f"]
STEPS = 4


@pytest.mark.slow
def test_two_process_grpo_equals_one_process(tmp_path):
    """grpo with the normalisations that need every process: dapo (the step's token count over both processes and
    both accumulation micro-batches), scale_rewards batch (the std of the whole step's rewards), and num_iterations 2
    (old log-probs reused). Per-step losses and the final weights to 1e-5."""
    model_dir = str(tmp_path / "model")
    build_small_llama(len(WORDS), seed=0, head_scale=3.0).save_pretrained(model_dir)
    build_word_tokenizer(WORDS, eos="<eos>").save_pretrained(model_dir)
    prompts = ["a b", "c d", "e a", "b c", "d e", "a c", "b d", "c e"]
    data = write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": p, "target": "f"} for p in prompts])
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective="grpo", max_steps=STEPS, learning_rate=3e-2,
                num_generations=2, max_completion_length=4, gradient_accumulation_steps=2, num_iterations=2,
                loss_type="dapo", scale_rewards="batch", beta=0.1,
                reward_funcs=[os.path.join(ROOT, "examples", "llm", "rewards.py") + ":target_word_fraction"],
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    with pytest.warns(FixedPointWarning):
        one = train(dict(base, output_dir=str(tmp_path / "one"), per_device_train_batch_size=4))
    two = launch_two_processes(dict(base, output_dir=str(tmp_path / "two"), per_device_train_batch_size=2), tmp_path,
                               CPU_DDP, ["-m", "mdpalign.llm_bridge"])
    assert two["world_size"] == 2
    l1, l2 = step_losses(one.log_history), step_losses(two["log_history"])
    assert sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5), (step, l1, l2)
    r1 = [h["reward"] for h in one.log_history if "reward" in h]
    r2 = [h["reward"] for h in two["log_history"] if "reward" in h]
    assert r1 == pytest.approx(r2, abs=1e-12)  # the same completions were drawn
    a, b = (load_file(os.path.join(tmp_path / d, "model.safetensors")) for d in ("one", "two"))
    start = load_file(os.path.join(model_dir, "model.safetensors"))
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-3  # it trained
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5 * max(1.0, moved)
    assert len({round(v, 8) for v in l1.values()}) > 1
    assert torch.isfinite(torch.tensor(list(l1.values()))).all()
