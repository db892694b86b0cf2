"""MdpalignTrainer: parity with TRL on identical model/batch/settings, objective identities, training moves
the right way, reference modes agree, checkpoint resume is exact, bad inputs raise."""
from __future__ import annotations

import inspect
import json
import math
import os

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from llm_fixtures import COMPLETIONS, PREFERENCES, save_tiny, write_jsonl  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from mdpalign import objectives  # noqa: E402
from mdpalign.cli import main  # noqa: E402
from mdpalign.errors import MdpalignError  # noqa: E402
from mdpalign.fit import NonFiniteLossError  # noqa: E402
from mdpalign.llm_bridge import config as config_module  # noqa: E402
from mdpalign.llm_bridge import trainer as trainer_module  # noqa: E402
from mdpalign.llm_bridge.config import (  # noqa: E402
    OBJECTIVES,
    ONLINE_OBJECTIVES,
    ConfigError,
    TrainConfig,
    launch_problem,
    parse_config,
)
from mdpalign.llm_bridge.data import TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.embedding_policy import UnsupportedModelError  # noqa: E402
from mdpalign.llm_bridge.logps import naive_token_logps  # noqa: E402
from mdpalign.llm_bridge.models import load_model, load_tokenizer  # noqa: E402
from mdpalign.llm_bridge.reference import deepspeed_reference_config  # noqa: E402
from mdpalign.llm_bridge.trainer import MdpalignTrainer  # noqa: E402
from mdpalign.llm_bridge.training import train  # noqa: E402
from mdpalign.objectives import crlft_loss, crlft_reduce  # noqa: E402
from mdpalign.objectives.crlft import CRLFT_REDUCTIONS  # noqa: E402

CLASSES = ["expert", "suboptimal", "expert", "suboptimal"]  # one per row of COMPLETIONS
COMMON = dict(use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1,
              per_device_train_batch_size=4, per_device_eval_batch_size=4, seed=0, data_seed=0)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """base/: tokenizer + random tiny Llama (the reference); policy/: base with perturbed weights."""
    root = tmp_path_factory.mktemp("llm")
    base = save_tiny(str(root / "base"), seed=0)
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
    policy.save_pretrained(str(root / "policy"))
    load_tokenizer(base).save_pretrained(str(root / "policy"))
    return {"root": root, "base": base, "policy": str(root / "policy"),
            "pref": write_jsonl(str(root / "pref.jsonl"), PREFERENCES),
            "sft": write_jsonl(str(root / "sft.jsonl"), COMPLETIONS)}


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "out"), **{**COMMON, **kw})


def _ours(dirs, tmp_path, rows, ref=None, **kw):
    cfg = _cfg(tmp_path, **kw)
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(rows, tok, TokenizeSettings(cfg.objective, max_length=cfg.max_length))
    model = load_model(dirs["policy"], cfg)
    trainer = MdpalignTrainer(model, cfg, ds, processing_class=tok, ref_model=ref)
    trainer.model.train()
    batch = trainer.data_collator(ds.examples)
    return trainer, ds, batch


def _trl_metrics(trainer) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items()}


# ----------------------------------------------------------------------------- parity with TRL

@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_matches_trl(dirs, tmp_path, loss_type):
    beta = 0.3
    tok = load_tokenizer(dirs["base"])
    cfg_probe = _cfg(tmp_path)
    # TRL defaults bf16=True (its reference forward then runs under bf16 autocast): compare in fp32
    trl_args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=loss_type, max_length=1024,
                         use_cpu=True, report_to="none", per_device_train_batch_size=4, bf16=False)
    trl = DPOTrainer(model=load_model(dirs["policy"], cfg_probe), ref_model=load_model(dirs["base"], cfg_probe),
                     args=trl_args, train_dataset=Dataset.from_list(PREFERENCES), processing_class=tok)
    trl.model.train()
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(len(PREFERENCES))])
    with torch.no_grad():
        trl_loss = trl.compute_loss(trl.model, trl_batch).item()
    expected = _trl_metrics(trl)

    ours, _, batch = _ours(dirs, tmp_path, PREFERENCES, ref=load_model(dirs["base"], cfg_probe), objective="dpo",
                           loss_type=loss_type, beta=beta, reference="model")
    assert torch.equal(batch["input_ids"][batch["attention_mask"].bool()],
                       trl_batch["input_ids"][trl_batch["attention_mask"].bool()])
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch).item()
    got = {k: v[0] for k, v in ours._metrics["train"].items()}
    assert loss == pytest.approx(trl_loss, abs=1e-5)
    assert abs(trl_loss - math.log(2)) > 1e-2  # the policy differs from the reference: a non-trivial value
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5, rel=1e-6), key


def test_orpo_matches_trl(dirs, tmp_path):
    lam = 0.25
    tok = load_tokenizer(dirs["base"])
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), beta=lam, max_length=512, use_cpu=True, report_to="none",
                      bf16=False, per_device_train_batch_size=4)
    trl = ORPOTrainer(model=load_model(dirs["policy"], _cfg(tmp_path)), args=args,
                      train_dataset=Dataset.from_list(PREFERENCES), processing_class=tok)
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(len(PREFERENCES))])
    with torch.no_grad():
        trl_loss, trl_m = trl.get_batch_loss_metrics(trl.model, trl_batch)

    ours, _, batch = _ours(dirs, tmp_path, PREFERENCES, objective="orpo", orpo_lambda=lam,
                           orpo_nll_scope="prompt_and_completion", max_length=512)
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch).item()
    got = {k: v[0] for k, v in ours._metrics["train"].items()}
    assert loss == pytest.approx(trl_loss.item(), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert got[key] == pytest.approx(trl_m[key], abs=1e-5, rel=1e-6), key
    # the completion-only NLL scope is a different number (so the scope really is what parity tested)
    comp, _, batch2 = _ours(dirs, tmp_path, PREFERENCES, objective="orpo", orpo_lambda=lam, orpo_nll_scope="completion")
    with torch.no_grad():
        assert abs(comp.compute_loss(comp.model, batch2).item() - loss) > 1e-3


def test_sft_matches_trl(dirs, tmp_path):
    tok = load_tokenizer(dirs["base"])
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=512, use_cpu=True, report_to="none", bf16=False,
                     per_device_train_batch_size=4)
    trl = SFTTrainer(model=load_model(dirs["policy"], _cfg(tmp_path)), args=args,
                     train_dataset=Dataset.from_list(COMPLETIONS), processing_class=tok)
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(len(COMPLETIONS))])
    with torch.no_grad():
        trl_loss = trl.compute_loss(trl.model, trl_batch).item()
    ours, _, batch = _ours(dirs, tmp_path, COMPLETIONS, objective="sft", sft_reduction="token_mean", max_length=512)
    # TRL counts the same tokens: its labels are our counted-token mask
    assert int((trl_batch["labels"][:, 1:] != -100).sum()) == int(batch["completion_mask"].sum())
    with torch.no_grad():
        assert ours.compute_loss(ours.model, batch).item() == pytest.approx(trl_loss, abs=1e-5)


# ----------------------------------------------------------------------------- identities and references

def test_ift_with_lambda_and_decay_zero_is_sft_per_sequence_mean(dirs, tmp_path):
    ift, _, batch = _ours(dirs, tmp_path, COMPLETIONS, objective="ift", ift_lambda=0.0, ift_decay=0.0)
    sft, _, _ = _ours(dirs, tmp_path, COMPLETIONS, objective="sft", sft_reduction="sequence_mean")
    sft.model.load_state_dict(ift.model.state_dict())
    l_ift = ift.compute_loss(ift.model, batch)
    l_sft = sft.compute_loss(sft.model, batch)
    assert l_ift.item() == pytest.approx(l_sft.item(), abs=1e-6)
    l_ift.backward()
    l_sft.backward()
    for (name, a), (_, b) in zip(ift.model.named_parameters(), sft.model.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    # lambda > 0 changes the inputs of pass 2, hence the loss
    ift2, _, _ = _ours(dirs, tmp_path, COMPLETIONS, objective="ift", ift_lambda=0.5, ift_decay=0.0)
    with torch.no_grad():
        assert abs(ift2.compute_loss(ift2.model, batch).item() - l_ift.item()) > 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_ift_chunked_head_hooks_equal_the_full_logits_path(dirs, tmp_path, monkeypatch, lam):
    """The adapter's hooks (chunked argmax + chunked target log-probs) give the loss and gradients of the plain
    EmbeddingPolicy path (full fp32 logits, argmax, token_logps_from_logits) on the same model and batch."""
    hooked_cls = trainer_module.CausalLMEmbeddingPolicy

    class Plain:  # the protocol without the optional hooks
        def __init__(self, model, embeddings, chunk_size):
            inner = hooked_cls(model, embeddings, chunk_size)
            self.embed, self.forward_embeds = inner.embed, inner.forward_embeds

    tr, _, batch = _ours(dirs, tmp_path, COMPLETIONS, objective="ift", ift_lambda=lam, ift_decay=0.9,
                         logps_chunk_size=3)

    def loss_and_grads():
        tr.model.zero_grad(set_to_none=True)
        loss = tr.compute_loss(tr.model, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in tr.model.named_parameters()}

    def no_full_logits(*args, **kwargs):
        raise AssertionError("the hooked path must not ask for full logits")

    with monkeypatch.context() as mp:
        mp.setattr(hooked_cls, "forward_embeds", no_full_logits)
        l_hook, g_hook = loss_and_grads()
    with monkeypatch.context() as mp:
        mp.setattr(trainer_module, "CausalLMEmbeddingPolicy", Plain)
        l_plain, g_plain = loss_and_grads()
    assert l_hook == pytest.approx(l_plain, abs=1e-6)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_hook[name], g, atol=1e-6, rtol=1e-5, msg=name)
    # pass 1 on its own: the chunked argmax is the argmax of the full logits
    model = tr.model
    policy = hooked_cls(model, model.get_input_embeddings(), chunk_size=3)
    with torch.no_grad():
        e = policy.embed(batch["input_ids"])
        kw = {"attention_mask": batch["attention_mask"]}
        assert torch.equal(policy.greedy_from_embeds(lambda embed: embed(batch["input_ids"]), **kw),
                           policy.forward_embeds(e, **kw).argmax(-1))


def test_padding_free_gives_the_padded_loss(dirs, tmp_path):
    for objective, rows, extra in (("dpo", PREFERENCES, {"reference": "precomputed"}), ("orpo", PREFERENCES, {}),
                                   ("ift", COMPLETIONS, {"ift_lambda": 0.3, "ift_decay": 0.9})):
        losses = []
        for pf in (False, True):
            tr, ds, batch = _ours(dirs, tmp_path, rows, objective=objective, padding_free=pf, **extra)
            if objective == "dpo":
                tr.precompute_reference([ds], load_model(dirs["base"], tr.args), cache_key=None)
            with torch.no_grad():
                losses.append(tr.compute_loss(tr.model, batch).item())
        assert losses[1] == pytest.approx(losses[0], abs=1e-5), objective


def test_reference_modes_agree(dirs, tmp_path):
    """precomputed (cached) == live reference model; adapter-disabled PEFT == the base model."""
    ref = load_model(dirs["base"], _cfg(tmp_path))
    live, ds, batch = _ours(dirs, tmp_path, PREFERENCES, ref=ref, objective="dpo", reference="model")
    pre, ds2, _ = _ours(dirs, tmp_path, PREFERENCES, objective="dpo", reference="precomputed")
    path = pre.precompute_reference([ds2], load_model(dirs["base"], pre.args), cache_key="k1")
    assert os.path.isfile(path)
    with torch.no_grad():
        live_loss = live.compute_loss(live.model, batch).item()
        assert pre.compute_loss(pre.model, batch).item() == pytest.approx(live_loss, abs=1e-6)
    # a second precompute with the same key reads the cache (no model needed)
    again, ds3, _ = _ours(dirs, tmp_path, PREFERENCES, objective="dpo", reference="precomputed")
    again.precompute_reference([ds3], None, cache_key="k1")
    assert [e["ref_chosen_logps"] for e in ds3.examples] == [e["ref_chosen_logps"] for e in ds2.examples]

    cfg = _cfg(tmp_path, objective="dpo", reference="adapter_disabled", use_peft=True)
    peft_model = get_peft_model(load_model(dirs["base"], cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # move the adapter away from identity so "disabled" matters
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    tok = load_tokenizer(dirs["base"])
    tr = MdpalignTrainer(peft_model, cfg, ds, processing_class=tok)
    c_dis, r_dis = tr.reference_logps(None, batch)
    c_base, r_base = live.reference_logps(live.ref_model, batch)
    torch.testing.assert_close(c_dis, c_base, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_dis, r_base, atol=1e-5, rtol=0)
    c_on, _ = tr.reference_logps(tr.model, batch)  # adapter on: a different model
    assert (c_on - c_base).abs().max() > 1e-3


def test_seed_fixes_the_lora_initialisation(dirs, tmp_path):
    """Two runs with the same seed start from the same random LoRA A matrices, whatever the RNG did before."""
    adapters = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # whatever state a caller left behind
        out = str(tmp_path / f"run{i}")
        train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["sft"], objective="sft", use_peft=True,
                   lora_r=4, output_dir=out, max_steps=1, learning_rate=0.0, **COMMON))
        adapters.append(load_file(os.path.join(out, "adapter_model.safetensors")))
    a_names = [n for n in adapters[0] if "lora_A" in n]
    assert a_names and set(adapters[0]) == set(adapters[1])
    for n in adapters[0]:
        assert torch.equal(adapters[0][n], adapters[1][n]), n
    assert any(adapters[0][n].abs().sum() > 0 for n in a_names)  # random, not zero-initialised


# ----------------------------------------------------------------------------- training moves the right way

def test_dpo_steps_raise_the_margin_and_sft_steps_lower_the_loss(dirs, tmp_path):
    r = train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["pref"], objective="dpo", beta=0.1,
                   output_dir=str(tmp_path / "dpo"), max_steps=4, learning_rate=3e-3, **COMMON))
    logs = [h for h in r.log_history if "rewards/margins" in h]
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 0
    assert logs[-1]["rewards/margins"] > 0.5 and logs[-1]["loss"] < math.log(2) - 0.1
    assert r.reference_cache and os.path.isfile(r.reference_cache)

    s = train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["sft"], objective="sft",
                   output_dir=str(tmp_path / "sft"), max_steps=4, learning_rate=3e-3, **COMMON))
    losses = [h["loss"] for h in s.log_history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0]
    assert os.path.isfile(os.path.join(tmp_path / "sft", "train_result.json"))


def test_crlft_weights_scale_each_class(dirs, tmp_path):
    rows = [dict(r, **{"class": c}) for r, c in zip(COMPLETIONS, CLASSES, strict=True)]
    weights = {"expert": 1.0, "suboptimal": 0.1}
    cfg = _cfg(tmp_path, objective="crlft", crlft_class_weights=weights)
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(rows, tok, TokenizeSettings("crlft", class_weights=weights))
    tr = MdpalignTrainer(load_model(dirs["policy"], cfg), cfg, ds, processing_class=tok)
    batch = tr.data_collator(ds.examples)
    sft, _, _ = _ours(dirs, tmp_path, COMPLETIONS, objective="sft", sft_reduction="sequence_sum")
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, batch).item()
        nll = [sft.compute_loss(sft.model, sft.data_collator([e])).item() for e in ds.examples]
    w = [weights[r["class"]] for r in rows]
    assert loss == pytest.approx(sum(wi * li for wi, li in zip(w, nll, strict=True)) / sum(w), rel=1e-5)


def test_crlft_reduction_token_vs_sequence(dirs, tmp_path):
    """crlft_reduction="sequence" (OpenChat's code: token weights w_i/n_i) against a hand computation from the
    model's full-logits token log-probs; "token" (the paper) differs on sequences of unequal length."""
    assert config_module.CRLFT_REDUCTIONS == CRLFT_REDUCTIONS
    assert _cfg(tmp_path).crlft_reduction == "token"
    rows = [dict(r, **{"class": c}) for r, c in zip(COMPLETIONS, CLASSES, strict=True)]
    weights = {"expert": 1.0, "suboptimal": 0.1}
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(rows, tok, TokenizeSettings("crlft", class_weights=weights))
    losses = {}
    for red in ("token", "sequence"):
        cfg = _cfg(tmp_path, objective="crlft", crlft_class_weights=weights, crlft_reduction=red)
        tr = MdpalignTrainer(load_model(dirs["policy"], cfg), cfg, ds, processing_class=tok)
        batch = tr.data_collator(ds.examples)
        with torch.no_grad():
            losses[red] = tr.compute_loss(tr.model, batch).item()
            # the training path (normaliser = Σ w over the optimizer step) gives the same number on one batch
            step_w = tr._get_num_items_in_batch([batch], tr.args.device)
            step_loss = tr.compute_loss(tr.model, batch, num_items_in_batch=step_w).item()
            assert step_loss == pytest.approx(losses[red], rel=1e-6)
            logits = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    m = batch["completion_mask"].bool()
    n = m.sum(-1)
    assert len(set(n.tolist())) > 1  # unequal lengths, else the two reductions differ only by a constant
    lp = naive_token_logps(logits, batch["input_ids"]).double() * m
    w = torch.tensor([weights[r["class"]] for r in rows], dtype=torch.float64)
    hand = ((w * (-lp.sum(-1) / n)).sum() / w.sum()).item()
    objective = crlft_reduce(crlft_loss(lp, m, w, reduction="sequence")).item()
    assert objective == pytest.approx(hand, rel=1e-12)
    assert losses["sequence"] == pytest.approx(hand, rel=1e-5)
    token = crlft_reduce(crlft_loss(lp, m, w, reduction="token")).item()
    assert losses["token"] == pytest.approx(token, rel=1e-5)
    assert abs(losses["token"] - losses["sequence"]) > 0.1 * losses["sequence"]


def test_kill_and_resume_gives_the_uninterrupted_run(dirs, tmp_path):
    class Killed(RuntimeError):
        pass

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Killed

    base = dict(model_name_or_path=dirs["base"], dataset_path=dirs["pref"], objective="dpo", max_steps=6,
                learning_rate=1e-3, **{**COMMON, "save_strategy": "steps", "per_device_train_batch_size": 2})
    full = train(dict(base, output_dir=str(tmp_path / "full"), save_steps=100))
    with pytest.raises(Killed):
        train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3), callbacks=[KillAfterCheckpoint()])
    assert os.path.isdir(tmp_path / "cut" / "checkpoint-3")
    resumed = train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3, resume_from_checkpoint="last"))
    assert resumed.global_step == full.global_step == 6
    loss = {h["step"]: h["loss"] for h in full.log_history if "loss" in h}
    loss_r = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert set(loss_r) >= {4, 5, 6}
    for step in (4, 5, 6):
        assert loss_r[step] == pytest.approx(loss[step], abs=1e-6), step


# ----------------------------------------------------------------------------- a non-finite loss stops training

@pytest.mark.parametrize("objective, rows", [("sft", COMPLETIONS), ("dpo", PREFERENCES)])
def test_a_nan_at_step_two_stops_training_naming_step_objective_and_example_ids(dirs, tmp_path, objective, rows):
    cfg = _cfg(tmp_path, objective=objective, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
               reference="model")
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(rows, tok, TokenizeSettings(objective, max_length=cfg.max_length))
    model = load_model(dirs["policy"], cfg)
    ref = load_model(dirs["base"], cfg) if objective == "dpo" else None
    trainer = MdpalignTrainer(model, cfg, ds, processing_class=tok, ref_model=ref)
    seen: list[list[int]] = []  # the example indices of each batch, in the order the dataloader makes them
    collate = trainer.data_collator

    def recording(examples):
        batch = collate(examples)
        seen.append(batch["index"].tolist())
        return batch

    trainer.data_collator = recording

    def poison(module, args, output):  # the policy's final hidden states become nan during step 2 only
        if module.training and trainer.state.global_step == 1:
            return output * float("nan")
        return output

    model.model.norm.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    msg = str(err.value)
    assert isinstance(err.value, MdpalignError)
    assert "non-finite loss (nan) at training step 2" in msg
    assert f"objective {objective!r}" in msg
    assert f"example indices (dataset rows) of the batch: {seen[1]}" in msg and len(seen[1]) == 2
    # it stopped before the optimizer applied step 2: one step done, every weight still finite
    assert trainer.state.global_step == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize(
    "kw,match",
    [
        ({"objective": "ppo"}, "unknown objective 'ppo'"),
        ({"loss_type": "kto"}, "unknown loss_type 'kto'"),
        ({"beta": 0.0}, "beta must be a finite number > 0"),
        ({"beta": -1.0}, "beta must be a finite number > 0"),
        ({"reference": "nope"}, "unknown reference"),
        ({"objective": "dpo", "reference": "adapter_disabled"}, "needs use_peft"),
        ({"ift_lambda": 1.0}, "ift_lambda must be in"),
        ({"objective": "crlft"}, "needs crlft_class_weights"),
        ({"crlft_reduction": "sum"}, "unknown crlft_reduction 'sum'; expected one of token, sequence"),
        ({"crlft_class_weights": "{not json"}, "crlft_class_weights must be a mapping or a JSON object"),
    ],
)
def test_bad_config_raises(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, **kw)


def test_one_source_for_defaults_and_option_lists(tmp_path):
    """The llm layer's IFT defaults are the paper's (appendix B.1: lambda 0.2, gamma 0.95) and the objectives' own;
    its option lists are the objectives' tuples; every objective it accepts has a loss in the trainer's table."""
    cfg = _cfg(tmp_path, objective="ift")
    assert (cfg.ift_lambda, cfg.ift_decay) == (0.2, 0.95)
    assert inspect.signature(objectives.ift_loss).parameters["decay"].default == cfg.ift_decay
    assert config_module.DPO_LOSS_TYPES is objectives.DPO_LOSS_TYPES
    assert config_module.CRLFT_REDUCTIONS is objectives.CRLFT_REDUCTIONS
    # the online objectives' loss lives in OnlineTrainer's table (tests/llm_bridge/test_llm_online.py)
    assert set(MdpalignTrainer.LOSSES) == set(OBJECTIVES) - set(ONLINE_OBJECTIVES)


def test_config_from_yaml_with_cli_overrides(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("objective: dpo\nbeta: 0.2\nloss_type: ipo\ncrlft_class_weights: {expert: 1.0}\nuse_cpu: true\n"
                 f"output_dir: {tmp_path / 'o'}\n")
    cfg = parse_config(["--config", str(y), "--beta", "0.5"])
    assert (cfg.objective, cfg.beta, cfg.loss_type, cfg.crlft_class_weights) == ("dpo", 0.5, "ipo", {"expert": 1.0})
    (tmp_path / "typo.yaml").write_text("objectiv: dpo\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['objectiv'\]"):
        parse_config(["--config", str(tmp_path / "typo.yaml")])


def test_ift_needs_reachable_input_embeddings(dirs, tmp_path):
    class NoEmbeddings(LlamaForCausalLM):
        def get_input_embeddings(self):
            raise NotImplementedError("embeddings are fused into a custom kernel")

    cfg = _cfg(tmp_path, objective="ift")
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(COMPLETIONS, tok, TokenizeSettings("ift"))
    model = NoEmbeddings(load_model(dirs["base"], cfg).config)
    with pytest.raises(UnsupportedModelError, match="NoEmbeddings.get_input_embeddings"):
        MdpalignTrainer(model, cfg, ds, processing_class=tok)


def test_data_kind_must_match_objective(dirs, tmp_path):
    cfg = _cfg(tmp_path, objective="dpo")
    tok = load_tokenizer(dirs["base"])
    ds = tokenize_records(COMPLETIONS, tok, TokenizeSettings("sft"))
    with pytest.raises(ValueError, match="needs preference"):
        MdpalignTrainer(load_model(dirs["base"], cfg), cfg, ds, processing_class=tok)


def test_mdpalign_train_command_runs_the_yaml_with_overrides(dirs, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(dict(model_name_or_path=dirs["base"], dataset_path=dirs["sft"], objective="sft",
                                       max_steps=5, output_dir=str(tmp_path / "cli"), **COMMON)))
    assert main(["train", "--config", str(run), "--max_steps", "2", "--objective", "ift", "--ift_lambda", "0.2"]) == 0
    with open(tmp_path / "cli" / "train_result.json", encoding="utf-8") as fh:
        result = json.load(fh)
    assert result["global_step"] == 2  # the command line beat the file's max_steps: 5
    assert any("ift/weight_mean" in h for h in result["log_history"])  # and its objective


def test_deepspeed_reference_config_keeps_zero3_and_precision_drops_training_blocks():
    train_cfg = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"},
                 "bf16": {"enabled": True},
                 "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                       "offload_param": {"device": "cpu"},
                                       "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                       "stage3_param_persistence_threshold": "auto"}}
    ref = deepspeed_reference_config(train_cfg, hidden_size=64)
    assert "optimizer" not in ref and "scheduler" not in ref and "offload_optimizer" not in ref["zero_optimization"]
    assert ref["zero_optimization"]["stage"] == 3 and ref["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ref["bf16"] == {"enabled": True}  # the reference runs in the policy's dtype
    zero = ref["zero_optimization"]
    sizes = tuple(zero[k] for k in ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                                     "stage3_param_persistence_threshold"))
    assert sizes == (4096, 3686, 640)
    assert train_cfg["zero_optimization"]["stage"] == 3 and "optimizer" in train_cfg  # the policy's config untouched
    # ZeRO-1/2 shard only optimizer state and gradients: a frozen reference is a plain replica (stage 0)
    assert deepspeed_reference_config({"zero_optimization": {"stage": 2}}, 64)["zero_optimization"]["stage"] == 0
    with pytest.raises(ValueError, match="no hidden_size"):
        deepspeed_reference_config({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}, None)
    with pytest.raises(ValueError, match=r"still 'auto'.*\['train_micro_batch_size_per_gpu'\]"):
        deepspeed_reference_config({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3}}, 64)


def test_launch_problems_name_the_fix():
    # accelerate on CPU finds no DeepSpeed backend: each of the launched processes sees a world of one
    msg = launch_problem(use_cpu=False, world_size=1, deepspeed=True, env={"WORLD_SIZE": "2"})
    assert "started 2 processes" in msg and "ddp_backend: gloo" in msg
    msg = launch_problem(use_cpu=True, world_size=2, deepspeed=True, env={"WORLD_SIZE": "2"})
    assert "drop DeepSpeed" in msg and "use_cpu: false" in msg
    assert "ddp_backend" not in launch_problem(use_cpu=True, world_size=1, deepspeed=False, env={"WORLD_SIZE": "2"})
    assert launch_problem(use_cpu=True, world_size=2, deepspeed=False, env={"WORLD_SIZE": "2"}) is None  # cpu_ddp
    assert launch_problem(use_cpu=False, world_size=2, deepspeed=True, env={"WORLD_SIZE": "2"}) is None
    assert launch_problem(use_cpu=True, world_size=1, deepspeed=False, env={}) is None  # one plain process
