"""Online RL in llm_bridge: TRL parity of the loss on a fixed batch, seeded generation, rewards rise on a toy task for
every online objective, kill-and-resume continues the same run, the example config runs, bad inputs raise."""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("trl")

from llm_fixtures import build_small_llama, build_word_tokenizer, save_tiny, write_jsonl  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl_stubs import trl_grpo_loss, trl_rloo_loss  # noqa: E402

from mdpalign.cli import main  # noqa: E402
from mdpalign.llm_bridge import online_trainer as online_trainer_module  # noqa: E402
from mdpalign.llm_bridge.config import (  # noqa: E402
    OBJECTIVES,
    ONLINE_OBJECTIVES,
    ConfigError,
    FixedPointWarning,
    TrainConfig,
)
from mdpalign.llm_bridge.data import MissingColumnsError  # noqa: E402
from mdpalign.llm_bridge.logps import naive_token_logps  # noqa: E402
from mdpalign.llm_bridge.online import (  # noqa: E402
    RewardFunctionError,
    SeededSampling,
    generate_completions,
    load_reward_funcs,
    mix32,
    mix32_tensor,
    sample_key,
    score_completions,
    tokenize_prompts,
)
from mdpalign.llm_bridge.online_trainer import OnlineTrainer  # noqa: E402
from mdpalign.llm_bridge.training import train  # noqa: E402

WORDS = ["<pad>", "<eos>", "a", "b", "c", "d", "e", "f"]
EOS = 1
PROMPTS = ["a b", "c d", "e a", "b c", "d e", "a c", "b d", "c e"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = dict(use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread start-up dominates on a shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(WORDS, eos="<eos>")


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "out"), **{**COMMON, **kw})


# ----------------------------------------------------------------------------- parity with TRL on a fixed batch

# two prompts × two completions of unequal lengths, some ending in EOS, some truncated at 5 tokens
COMPLETIONS = [[7, 3, EOS], [2, 2, 4, 5, 6], [6, EOS], [3, 7, 7, 2, EOS]]
FIXED_REWARDS = [1.0, 0.25, -0.5, 0.75]


def _fixed_round(tok, tmp_path, monkeypatch, move_seed=5, **kw):
    """An OnlineTrainer whose generation returns COMPLETIONS; its round at the starting policy, then the policy moved
    (as after a PPO epoch) so the ratios leave [1 − ε, 1 + ε]."""
    monkeypatch.setattr(online_trainer_module, "generate_completions", lambda model, prompts, keys, **_: [
        list(c) for c in COMPLETIONS[: len(prompts)]])
    model = build_small_llama(len(WORDS), seed=3, head_scale=4.0)
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a reference different from the policy: the KL term is not zero
        for p in ref.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    rewards = {tuple(c): r for c, r in zip(COMPLETIONS, FIXED_REWARDS, strict=True)}

    def fixed(prompts, completions, completion_ids, **_):
        return [rewards[tuple(c)] for c in completion_ids]

    cfg = _cfg(tmp_path, per_device_train_batch_size=4, num_generations=2, max_completion_length=5, beta=0.2,
               num_iterations=2, epsilon=0.2, **kw)
    ds = tokenize_prompts([{"prompt": "a b"}, {"prompt": "c d e"}], tok)
    trainer = OnlineTrainer(model, cfg, ds, processing_class=tok, reward_funcs=[fixed], ref_model=ref)
    trainer.model.train()
    batch_old = _naive_logps(model, ds, tok)
    batch_ref = _naive_logps(ref, ds, tok)
    rnd = trainer._generate_round([{"index": torch.tensor([0, 1])}], 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(move_seed)))
    return trainer, rnd, batch_old, batch_ref, torch.tensor(FIXED_REWARDS, dtype=torch.float64)


def _naive_logps(model, ds, tok, grad=False):
    """Completion-layout (B, L) log-probs by the textbook full-logits log-softmax, and the (B, L) mask."""
    prompts = [e["prompt_ids"] for e in ds.examples for _ in range(2)]
    width = max(len(c) for c in COMPLETIONS)
    out = torch.zeros(4, width)
    mask = torch.zeros(4, width, dtype=torch.bool)
    rows = []
    with torch.set_grad_enabled(grad):
        for i, (p, c) in enumerate(zip(prompts, COMPLETIONS, strict=True)):
            ids = torch.tensor([p + c])
            lp = naive_token_logps(model(ids).logits, ids)[0, len(p):]
            rows.append(torch.nn.functional.pad(lp, (0, width - len(c))))
            mask[i, : len(c)] = True
    out = torch.stack(rows)
    return out, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_grpo_loss_equals_trl_on_a_fixed_batch(tok, tmp_path, monkeypatch, loss_type, bias_correction):
    """Same completions, rewards, old and reference log-probs: the trainer's loss and gradient equal TRL 1.16's
    ``GRPOTrainer._compute_loss`` (β = 0.2, k3 as a loss, group std scaling, clipping active) to 1e-5."""
    with pytest.warns(FixedPointWarning):
        trainer, rnd, (old, mask), (ref, _), r = _fixed_round(
            tok, tmp_path, monkeypatch, objective="grpo", loss_type=loss_type, scale_rewards="group",
            kl_estimator="k3", kl_placement="loss", use_bias_correction_kl=bias_correction)
    batch = rnd.batches[0]
    # the round's log-probs (chunked LM head at scored positions) are the textbook ones
    torch.testing.assert_close(batch["old_logps"], old, rtol=0, atol=2e-6)
    torch.testing.assert_close(batch["ref_logps"], ref, rtol=0, atol=2e-6)
    # TRL's advantage: (r − group mean) / (unbiased group std + 1e-4)
    g = r.view(2, 2)
    adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)
    torch.testing.assert_close(batch["advantages"][0], adv, rtol=0, atol=1e-12)

    model = trainer.model
    ours, metrics = trainer._loss_online(model, batch, rnd.num_items)
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    lp, _ = _naive_logps(model, trainer.train_dataset, tok, grad=True)
    kw = {"max_completion_length": 5} if loss_type == "dr_grpo" else {}
    expect = trl_grpo_loss(lp, old, ref, adv.float(), mask, loss_type, 0.2, bias_correction,
                           num_items=int(mask.sum()) if loss_type == "dapo" else None, **kw)
    g_trl = torch.autograd.grad(expect, list(model.parameters()))
    assert float(metrics["clip_ratio/region_mean"].mean()) > 0.2  # clipping is active on this batch
    assert ours.item() == pytest.approx(expect.item(), abs=1e-5)
    scale = max(float(torch.cat([x.reshape(-1) for x in g_trl]).abs().max()), 1e-3)
    for a, b in zip(g_ours, g_trl, strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * scale + 1e-7


def test_rloo_loss_equals_trl_on_a_fixed_batch(tok, tmp_path, monkeypatch):
    """TRL 1.16 ``RLOOTrainer``: k1 of the sampling policy summed over the completion in the reward (β = 0.2),
    leave-one-out baseline, sequence-level clipped ratio averaged over completions; loss and gradient to 1e-5."""
    trainer, rnd, (old, mask), (ref, _), r = _fixed_round(tok, tmp_path, monkeypatch, move_seed=2,
                                                          objective="rloo")
    batch = rnd.batches[0]
    shaped = (r - 0.2 * ((old - ref) * mask).sum(1).double()).view(2, 2)
    adv = (shaped - (shaped.sum(1, keepdim=True) - shaped) / 1).reshape(-1)  # leave-one-out over G − 1 = 1
    torch.testing.assert_close(batch["advantages"][0], adv, rtol=0, atol=1e-5)
    model = trainer.model
    ours, metrics = trainer._loss_online(model, batch, rnd.num_items)
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    lp, _ = _naive_logps(model, trainer.train_dataset, tok, grad=True)
    expect = trl_rloo_loss(lp, mask, (old * mask).sum(1), adv.float())
    g_trl = torch.autograd.grad(expect, list(model.parameters()))
    assert float(metrics["clip_ratio/region_mean"].mean()) > 0.2
    assert ours.item() == pytest.approx(expect.item(), abs=1e-5)
    scale = max(float(torch.cat([x.reshape(-1) for x in g_trl]).abs().max()), 1e-3)
    for a, b in zip(g_ours, g_trl, strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * scale + 1e-7


# ----------------------------------------------------------------------------- seeded generation


def test_gumbel_sampling_draws_from_the_tempered_top_p_distribution():
    """40000 keyed draws from fixed logits: each token's frequency within 5 binomial standard errors of
    softmax(z/T) renormalised on the top-p set (Bonferroni over 4 tokens × 2 settings: a false alarm has probability
    below 8·6e-7); tokens outside the top-p set never appear."""
    z = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    n = 40000
    keys = torch.tensor([sample_key(1, 2, i) for i in range(n)])
    for temperature, top_p, support in ((0.7, 1.0, [0, 1, 2, 3]), (1.0, 0.8, [1, 2])):
        drawn = SeededSampling(keys, 0, temperature, top_p)(torch.zeros(n, 0, dtype=torch.long),
                                                             z.expand(n, 4)).argmax(-1)
        freq = torch.bincount(drawn, minlength=4).double() / n
        p = torch.zeros(4, dtype=torch.float64)
        p[support] = torch.softmax(z[0, support].double() / temperature, -1)
        se = torch.sqrt(p * (1 - p) / n).clamp(min=1e-12)
        assert bool(((freq - p).abs() <= 5 * se).all()), (freq, p)
        assert float(freq[[i for i in range(4) if i not in support]].sum()) == 0.0


def test_the_int32_hash_is_the_32_bit_hash():
    """The tensor hash relies on int32 products wrapping modulo 2³²: it must equal the Python-int hash bit for bit."""
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *torch.randint(0, 2**32, (2000,),
                                                                  generator=torch.Generator().manual_seed(0)).tolist()]
    got = mix32_tensor(torch.tensor(values, dtype=torch.int64).sub(2**32 * (torch.tensor(values) >= 2**31))
                       .to(torch.int32)).to(torch.int64) & 0xFFFFFFFF
    assert got.tolist() == [mix32(v) for v in values]


def test_generation_depends_on_the_key_not_on_the_batch():
    model = build_small_llama(len(WORDS), seed=0, head_scale=3.0).eval()
    prompts = [[2, 3], [4], [5, 6, 7]]
    keys = [sample_key(0, 0, i) for i in range(3)]
    kw = dict(max_new_tokens=6, pad_token_id=0, eos_token_ids=[EOS])
    together = generate_completions(model, prompts, keys, **kw)
    alone = [generate_completions(model, [p], [k], **kw)[0] for p, k in zip(prompts, keys, strict=True)]
    assert together == alone
    assert generate_completions(model, prompts, [sample_key(0, 1, i) for i in range(3)], **kw) != together
    for c in together:  # cut after the first EOS, which is kept
        assert EOS not in c[:-1] and (c[-1] == EOS or len(c) == 6)


# ----------------------------------------------------------------------------- the toy task


def _target_token(model, ds) -> int:
    """The non-special token least likely after the prompts at the start: the reward must be learnt."""
    with torch.no_grad():
        p = sum(torch.softmax(model(torch.tensor([e["prompt_ids"]])).logits[0, -1], -1) for e in ds.examples)
    return int(torch.argmin(p[2:])) + 2


@pytest.mark.parametrize("objective", ONLINE_OBJECTIVES)
def test_mean_reward_rises_on_a_toy_task(tok, tmp_path, objective):
    """reward = fraction of a target token in the completion. "Rises": over 40 steps the mean of the per-step mean
    rewards of the last 10 steps exceeds that of the first 10 by more than 3 standard errors of the difference
    (sqrt(s_first²/10 + s_last²/10), the per-step means' sample variances)."""
    model = build_small_llama(len(WORDS), seed=0, head_scale=3.0)
    ds = tokenize_prompts([{"prompt": p} for p in PROMPTS], tok)
    target = _target_token(model, ds)

    def fraction(prompts, completions, completion_ids, **_):
        return [sum(t == target for t in c) / len(c) for c in completion_ids]

    cfg = _cfg(tmp_path, objective=objective, max_steps=40, learning_rate=0.03, lr_scheduler_type="constant",
               beta=0.01, num_generations=4, per_device_train_batch_size=8, max_completion_length=4)
    trainer = OnlineTrainer(model, cfg, ds, processing_class=tok, reward_funcs=[fraction],
                            ref_model=copy.deepcopy(model))
    trainer.train()
    per_step = [h["reward"] for h in trainer.state.log_history if "loss" in h]
    assert len(per_step) == 40
    first, last = np.array(per_step[:10]), np.array(per_step[-10:])
    se = math.sqrt(first.var(ddof=1) / 10 + last.var(ddof=1) / 10)
    assert last.mean() - first.mean() > 3 * max(se, 1e-12), (first, last)
    assert {"rewards/fraction/mean", "completions/mean_length", "clip_ratio/region_mean", "kl"} <= set(
        trainer.state.log_history[0])


# ----------------------------------------------------------------------------- checkpoints


def _save_small(directory) -> str:
    """The word-level tokenizer and a small Llama (not peaked: completions within a group differ) in a directory."""
    build_small_llama(len(WORDS), seed=0, head_scale=3.0).save_pretrained(str(directory))
    build_word_tokenizer(WORDS, eos="<eos>").save_pretrained(str(directory))
    return str(directory)


def test_kill_and_resume_continues_the_same_run(tmp_path):
    """num_iterations 2, a checkpoint at step 3 (inside a generation round), killed there, resumed: steps 4-6 and
    the final weights equal the uninterrupted run's (generation noise from (seed, round, index); the round's batch
    stored in the checkpoint)."""

    class Killed(RuntimeError):
        pass

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Killed

    model_dir = _save_small(tmp_path / "model")
    data = write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": p, "target": "f"} for p in PROMPTS[:4]])
    rewards = os.path.join(ROOT, "examples", "llm", "rewards.py")
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective="grpo", max_steps=6, learning_rate=3e-2,
                per_device_train_batch_size=4, num_generations=2, max_completion_length=4, num_iterations=2,
                reward_funcs=[f"{rewards}:target_word_fraction"], beta=0.1,
                **{**COMMON, "save_strategy": "steps"})
    full = train(dict(base, output_dir=str(tmp_path / "full"), save_steps=100))
    with pytest.raises(Killed):
        train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3), callbacks=[KillAfterCheckpoint()])
    assert os.path.isfile(tmp_path / "cut" / "checkpoint-3" / "online_buffer_rank0.pt")
    resumed = train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3, resume_from_checkpoint="last"))
    assert resumed.global_step == full.global_step == 6
    loss = {h["step"]: h["loss"] for h in full.log_history if "loss" in h}
    loss_r = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert len({round(v, 6) for v in loss.values()}) > 1  # a run that moves, not a constant
    for step in (4, 5, 6):
        assert loss_r[step] == pytest.approx(loss[step], abs=1e-6), step
    # without the stored round the resumed step 4 regenerates from the moved policy: a different run
    shutil.copytree(tmp_path / "cut" / "checkpoint-3", tmp_path / "bare" / "checkpoint-3")
    os.remove(tmp_path / "bare" / "checkpoint-3" / "online_buffer_rank0.pt")
    bare = train(dict(base, output_dir=str(tmp_path / "bare"), save_steps=100, resume_from_checkpoint="last"))
    assert abs({h["step"]: h["loss"] for h in bare.log_history if "loss" in h}[4] - loss[4]) > 1e-6
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    start = load_file(os.path.join(model_dir, "model.safetensors"))
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-4
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6 * max(1.0, moved)


def test_padding_free_checkpointing_and_the_disabled_adapter_do_not_change_the_run(tmp_path):
    """The same two steps (num_iterations 2: the second step trains off-policy on the stored round) with padding-free
    packing, gradient checkpointing, and under LoRA with the reference as the adapter switched off (no second copy)
    vs a frozen copy of the base model: equal step losses (float32 rounding: 1e-6)."""
    model_dir = _save_small(tmp_path / "model")
    data = write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": p, "target": "f"} for p in PROMPTS[:4]])
    base = dict(model_name_or_path=model_dir, dataset_path=data, objective="grpo", max_steps=2, learning_rate=3e-2,
                per_device_train_batch_size=4, num_generations=2, max_completion_length=4, num_iterations=2,
                reward_funcs=[os.path.join(ROOT, "examples", "llm", "rewards.py") + ":target_word_fraction"],
                beta=0.1, **COMMON)

    def losses(name, **kw):
        result = train(dict(base, output_dir=str(tmp_path / name), **kw))
        return [h["loss"] for h in result.log_history if "loss" in h]

    plain = losses("plain")
    assert losses("packed", padding_free=True) == pytest.approx(plain, abs=1e-6)
    assert losses("checkpointed", gradient_checkpointing=True) == pytest.approx(plain, abs=1e-6)
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    disabled = losses("adapter", reference="adapter_disabled", **lora)
    assert disabled == pytest.approx(losses("copy", reference="model", **lora), abs=1e-6)
    assert any(abs(x) > 1e-4 for x in plain + disabled)  # non-trivial losses


# ----------------------------------------------------------------------------- rewards


def test_reward_functions_and_a_reward_model_are_weighted_and_named(tmp_path):
    """A reward model trained by ``objective: reward`` (2 steps, from a causal LM) scores a completion exactly as
    ``mdpalign eval reward`` scores that response (the training tokenisation: prompt + response + eos)."""
    from mdpalign.llm_bridge.evaluate import evaluate_reward

    model_dir = save_tiny(str(tmp_path / "lm"))
    pairs = [{"prompt": "the cat sat on the", "chosen": " mat", "rejected": " moon and the log"},
             {"prompt": "one two three", "chosen": " four five", "rejected": " ten nine"}]
    data = write_jsonl(str(tmp_path / "pairs.jsonl"), pairs)
    train(dict(model_name_or_path=model_dir, dataset_path=data, objective="reward", output_dir=str(tmp_path / "rm"),
               max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, **COMMON))
    funcs = load_reward_funcs([f"{ROOT}/examples/llm/rewards.py:length_penalty", str(tmp_path / "rm")])
    assert [f.name for f in funcs] == ["length_penalty", "rm"]
    prompts = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    ids = [[4, 5], [6], [7, 8, 9], [1]]
    total, table = score_completions(funcs, [2.0, 0.5], prompts, completions, ids, {})
    report = evaluate_reward(str(tmp_path / "rm"), data)
    scores = torch.tensor(report.chosen_scores + report.rejected_scores)
    torch.testing.assert_close(table[:, 1].float(), scores, rtol=0, atol=1e-5)
    lengths = torch.tensor([-len(i) / 32 for i in ids], dtype=torch.float64)
    torch.testing.assert_close(total, 2.0 * lengths + 0.5 * table[:, 1], rtol=0, atol=1e-12)
    with pytest.raises(RewardFunctionError, match="not a reward model"):
        load_reward_funcs([model_dir])


def test_bad_rewards_raise_naming_the_function_and_the_prompt():
    prompts, completions, ids = ["first prompt", "second prompt"], ["x", "y"], [[1], [2]]

    def short(prompts, completions, **_):
        return [1.0]

    def nan_on_second(prompts, completions, **_):
        return [0.0 if p == "first prompt" else float("nan") for p in prompts]

    def raises_on_second(prompts, completions, **_):
        if "second prompt" in prompts:
            raise KeyError("boom")
        return [0.0] * len(prompts)

    def none(prompts, completions, **_):
        return [None, 1.0]

    cases = [(short, r"'short' returned 1 rewards for 2 completions"),
             (nan_on_second, r"'nan_on_second' returned nan for completion 1 \('y'\) of prompt 'second prompt'"),
             (raises_on_second, r"'raises_on_second' raised KeyError: 'boom' .*of prompt 'second prompt'"),
             (none, r"'none' returned None for completion 0")]
    for fn, match in cases:
        with pytest.raises(RewardFunctionError, match=match):
            score_completions(load_reward_funcs([fn]), None, prompts, completions, ids, {})
    for spec, match in [("nonexistent_module_xyz:f", "importing nonexistent_module_xyz failed"),
                        ("json:no_such_function", "json has no function 'no_such_function'"),
                        ("no_colon", "expected 'module:function'"),
                        ("missing/file.py:f", "no such file missing/file.py")]:
        with pytest.raises(RewardFunctionError, match=match):
            load_reward_funcs([spec])
    with pytest.raises(RewardFunctionError, match="needs at least one reward"):
        load_reward_funcs([])


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kw, match", [
    ({"objective": "grpo", "num_generations": 1}, "num_generations must be an integer >= 2"),
    ({"objective": "rloo", "per_device_train_batch_size": 3}, "must be a multiple of num_generations"),
    ({"objective": "grpo", "use_vllm": True}, "use_vllm: true needs vllm"),
    ({"objective": "grpo", "reference": "precomputed"}, "precomputed cannot score completions"),
    ({"objective": "grpo", "reference": "adapter_disabled"}, "needs use_peft"),
    ({"objective": "rloo", "loss_type": "dapo"}, "loss_type 'dapo' applies to objective grpo"),
    ({"objective": "grpo", "loss_type": "sigmoid"}, "unknown loss_type 'sigmoid'"),
    ({"objective": "reinforce", "scale_rewards": "group"}, "scale_rewards applies to objective grpo"),
    ({"objective": "grpo", "use_bias_correction_kl": True}, "use_bias_correction_kl applies to kl_placement: loss"),
    ({"objective": "grpo", "kl_estimator": "k4"}, "unknown kl_estimator 'k4'"),
    ({"objective": "grpo", "kl_placement": "advantage"}, "unknown kl_placement 'advantage'"),
    ({"objective": "grpo", "scale_rewards": "std"}, "unknown scale_rewards 'std'"),
    ({"objective": "grpo", "temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"objective": "grpo", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"objective": "grpo", "epsilon": 1.0}, r"epsilon must be in \[0, 1\)"),
    ({"objective": "grpo", "num_iterations": 0}, "num_iterations must be >= 1"),
    ({"objective": "grpo", "beta": -0.1}, "beta must be a finite number >= 0"),
    ({"objective": "grpo", "max_length": 64, "max_completion_length": 64}, "must exceed max_completion_length"),
    ({"objective": "grpo", "reward_funcs": ["a:b"], "reward_weights": [1.0, 2.0]}, "reward_weights has 2 entries"),
    ({"objective": "grpo", "eval_strategy": "steps"}, "evaluation is not implemented"),
])
def test_bad_online_config_raises(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, **{"per_device_train_batch_size": 8, **kw})


@pytest.mark.parametrize("kw, match", [
    ({"kl_estimator": "k3"}, "k3 in the reward has no fixed point"),
    ({"kl_estimator": "k2"}, "k2 in the reward has no fixed point"),
    ({"kl_placement": "loss", "max_completion_length": 1}, "k1 as a loss has expected gradient 0"),
    ({"kl_placement": "loss", "kl_estimator": "k3", "max_completion_length": 1}, "k3 as a loss has the gradient"),
    ({"kl_placement": "loss", "kl_estimator": "k3", "use_bias_correction_kl": True}, "a KL loss is per token"),
    ({"scale_rewards": "group"}, "divides by a reward std"),
    ({"scale_rewards": "batch"}, "divides by a reward std"),
    ({"loss_type": "grpo"}, "divides each completion's loss by its length"),
])
def test_combinations_off_the_optimum_warn_once_naming_the_proof(tmp_path, kw, match):
    with pytest.warns(FixedPointWarning) as record:
        _cfg(tmp_path, objective="grpo", **kw)
    assert len(record) == 1
    assert re.search(match, str(record[0].message))
    assert "tests/harness/test_harness_online.py::" in str(record[0].message) or "arXiv" in str(record[0].message)


def test_defaults_converge_and_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FixedPointWarning)
        for objective in ONLINE_OBJECTIVES:
            cfg = _cfg(tmp_path, objective=objective, per_device_train_batch_size=8)
            assert (cfg.kl_estimator, cfg.kl_placement, cfg.scale_rewards) == ("k1", "reward", "none")
            assert cfg.loss_type == ("dr_grpo" if objective == "grpo" else "seq_sum")
            assert cfg.reference == "model"
        # k3·rho as a loss on one-token completions lands on the optimum too (without GRPO's group mean, which
        # would scale the reward's gradient and not the KL's): no warning
        _cfg(tmp_path, objective="reinforce", kl_placement="loss", kl_estimator="k3", use_bias_correction_kl=True,
             max_completion_length=1)
    assert set(ONLINE_OBJECTIVES) <= set(OBJECTIVES) and set(OnlineTrainer.LOSSES) == set(OBJECTIVES)
    assert _cfg(tmp_path, objective="dpo").loss_type == "sigmoid"
    assert _cfg(tmp_path, objective="grpo", use_peft=True).reference == "adapter_disabled"


def test_prompt_data_errors(tok):
    with pytest.raises(MissingColumnsError, match="needs a 'prompt' column"):
        tokenize_prompts([{"text": "a"}], tok)
    with pytest.raises(Exception, match="example 0: 'prompt' must be a string or a list"):
        tokenize_prompts([{"prompt": 3}], tok)
    with pytest.raises(Exception, match="example 0: the prompt '' has no tokens"):
        tokenize_prompts([{"prompt": ""}], tok)
    ds = tokenize_prompts([{"prompt": "a b c d e", "target": "x"}], tok, max_prompt_length=2)
    assert ds.examples[0]["prompt_ids"] == [5, 6] and ds.examples[0]["columns"] == {"target": "x"}


# ----------------------------------------------------------------------------- the example and the command line


def test_the_grpo_example_runs_from_the_command_line(tmp_path, capsys):
    """examples/llm/grpo.yaml with a tiny local model, a few steps, through ``mdpalign train``."""
    model_dir = save_tiny(str(tmp_path / "model"))
    out = tmp_path / "run"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example names its files relative to the repository root
    try:
        code = main(["train", "--config", "examples/llm/grpo.yaml", "--model_name_or_path", model_dir,
                     "--output_dir", str(out), "--max_steps", "2", "--save_steps", "2", "--use_cpu", "true",
                     "--max_completion_length", "4"])
    finally:
        os.chdir(cwd)
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["global_step"] == 2
    result = json.loads((out / "train_result.json").read_text())
    logged = result["log_history"][0]
    assert {"rewards/target_word_fraction/mean", "rewards/length_penalty/mean", "reward"} <= set(logged)
    assert os.path.isfile(out / "model.safetensors")


def test_a_bad_reward_function_in_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    model_dir = save_tiny(str(tmp_path / "model"))
    data = write_jsonl(str(tmp_path / "p.jsonl"), [{"prompt": "hello"}] * 4)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--objective", "grpo", "--model_name_or_path", model_dir, "--dataset_path", data,
              "--output_dir", str(tmp_path / "o"), "--use_cpu", "true", "--per_device_train_batch_size", "8",
              "--reward_funcs", "no_such_module_abc:f"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_module_abc" in err and "Traceback" not in err
