"""``objective: reward``: parity with TRL's RewardTrainer (loss and metrics, with and without margin and centring),
tokenisation of every preference format as TRL's, training that reverses a random head's preferences, LoRA with a
trained score head, the margin column, centring, resume, bf16, bad inputs; ``mdpalign eval reward``'s RewardBench
scoring (ties lose, subsets weighted by their example counts) for a reward model and a DPO policy."""
from __future__ import annotations

import argparse
import json
import math
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from llm_fixtures import PREFERENCES, save_tiny, write_jsonl  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

from mdpalign.cli.llm import register_eval  # noqa: E402
from mdpalign.errors import MdpalignError  # noqa: E402
from mdpalign.llm_bridge.config import ConfigError, TrainConfig  # noqa: E402
from mdpalign.llm_bridge.data import Collator, DatasetError, EmptyDatasetError, MissingColumnsError  # noqa: E402
from mdpalign.llm_bridge.evaluate import RewardEvalError, evaluate_reward, rewardbench_accuracy  # noqa: E402
from mdpalign.llm_bridge.logps import naive_token_logps  # noqa: E402
from mdpalign.llm_bridge.models import load_model, load_tokenizer  # noqa: E402
from mdpalign.llm_bridge.reward_data import tokenize_reward_records  # noqa: E402
from mdpalign.llm_bridge.reward_model import (  # noqa: E402
    RewardModelError,
    load_reward_model,
    prepare_reward_model,
    score_dataset,
)
from mdpalign.llm_bridge.trainer import MdpalignTrainer  # noqa: E402
from mdpalign.llm_bridge.training import train  # noqa: E402

COMMON = dict(use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0,
              data_seed=0)
# the same text twice: a tie when scored once (`mdpalign eval reward`), within rounding when the two rows of a batch
# are scored apart (training, TRL): CPU matmuls round one row differently by its position in the batch
TIE = {"prompt": "hello", "chosen": " world goodbye moon", "rejected": " world goodbye moon"}
ROWS = PREFERENCES + [TIE]
MARGINS = [0.5, -0.25, 1.0, 0.0, 2.0]
# a separable toy set: every chosen response is the "good" one of its pair
QUESTIONS = ["what is two plus two?", "what colour is the sky?", "one two three", "the cat sat on the",
             "hello world", "what is one plus one?", "the dog sat on the", "goodbye moon"]
TOY = [row for q in QUESTIONS for row in (
    {"prompt": f"question: {q} answer:", "chosen": " a good answer is short and true",
     "rejected": " a bad answer is long and wrong"},
    {"prompt": f"question: {q} answer:", "chosen": " good", "rejected": " bad"})]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """base/: tokenizer + tiny random causal LM; rm/: a reward model on it whose score head gives rewards of order 1
    (the new head of a fresh one gives rewards near 0, where every loss is close to log 2 and parity says little)."""
    root = tmp_path_factory.mktemp("reward")
    base = save_tiny(str(root / "base"))
    tok = load_tokenizer(base)
    rm = load_reward_model(base, TrainConfig(output_dir=str(root / "unused"), **COMMON), tok)
    with torch.no_grad():
        rm.score.weight.copy_(3 * torch.randn(rm.score.weight.shape, generator=torch.Generator().manual_seed(7)))
    rm.save_pretrained(str(root / "rm"))
    tok.save_pretrained(str(root / "rm"))
    return {"root": root, "base": base, "rm": str(root / "rm"), "toy": write_jsonl(str(root / "toy.jsonl"), TOY)}


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "out"), **{"objective": "reward", **COMMON, **kw})


def _ours(dirs, tmp_path, rows, **kw):
    cfg = _cfg(tmp_path, **kw)
    tok = load_tokenizer(dirs["rm"])
    ds = tokenize_reward_records(rows, tok, cfg.max_length)
    trainer = MdpalignTrainer(load_reward_model(dirs["rm"], cfg, tok), cfg, ds, processing_class=tok)
    trainer.model.train()
    return trainer, ds


def _scores(model, tok, rows):
    ds = tokenize_reward_records(rows, tok)
    return score_dataset(model, ds, Collator(tok.pad_token_id), 64, "cpu")


# ----------------------------------------------------------------------------- parity with TRL


@pytest.mark.parametrize("margin, center", [(False, None), (True, None), (False, 0.05), (True, 0.05)],
                         ids=["plain", "margin", "center", "margin+center"])
def test_reward_loss_and_metrics_match_trl(dirs, tmp_path, margin, center):
    rows = [dict(r, margin=m) for r, m in zip(ROWS, MARGINS, strict=True)] if margin else ROWS
    tok = load_tokenizer(dirs["rm"])
    args = RewardConfig(output_dir=str(tmp_path / "trl"), center_rewards_coefficient=center, max_length=1024,
                        use_cpu=True, report_to="none", bf16=False, per_device_train_batch_size=len(rows))
    trl = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(dirs["rm"], num_labels=1),
                        args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trl.model.train()
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        trl_loss = trl.compute_loss(trl.model, trl_batch).item()
    expected = {k: sum(v) / len(v) for k, v in trl._metrics["train"].items()}

    ours, ds = _ours(dirs, tmp_path, rows, center_rewards_coefficient=center)
    batch = ours.data_collator(ds.examples)
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])  # the same tokens, the same padding
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch).item()
    got = {k: v[0] for k, v in ours._metrics["train"].items()}
    assert loss == pytest.approx(trl_loss, abs=1e-5)
    assert abs(loss - math.log(2)) > 0.05  # rewards of order 1: not the value every near-zero head gives
    for key in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key
    assert 0 < got["accuracy"] < 1
    # the margin column and the centring term each change the number (so the parity above covers them)
    plain, ds0 = _ours(dirs, tmp_path, ROWS)
    with torch.no_grad():
        plain_loss = plain.compute_loss(plain.model, plain.data_collator(ds0.examples)).item()
    assert (abs(loss - plain_loss) > 1e-3) == (margin or center is not None)


@pytest.mark.parametrize("fmt", ["conversational", "implicit_conversational", "implicit_text"])
def test_tokenisation_of_every_preference_format_is_trls(dirs, tmp_path, fmt):
    def conv(text):
        return [{"role": "assistant", "content": text}]

    if fmt == "conversational":
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": conv(r["chosen"]),
                 "rejected": conv(r["rejected"])} for r in PREFERENCES]
    elif fmt == "implicit_conversational":
        rows = [{"chosen": [{"role": "user", "content": r["prompt"]}, *conv(r["chosen"])],
                 "rejected": [{"role": "user", "content": r["prompt"]}, *conv(r["rejected"])]} for r in PREFERENCES]
    else:
        rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in PREFERENCES]
    tok = load_tokenizer(dirs["rm"])
    args = RewardConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to="none", bf16=False)
    trl = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(dirs["rm"], num_labels=1),
                        args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ours = tokenize_reward_records(rows, tok)
    assert [e["chosen_ids"] for e in ours.examples] == trl.train_dataset["chosen_ids"]
    assert [e["rejected_ids"] for e in ours.examples] == trl.train_dataset["rejected_ids"]
    if fmt != "implicit_text":  # the chat template's end-of-turn token ends each conversation
        assert all(e["chosen_ids"][-1] == tok.convert_tokens_to_ids("<|end|>") for e in ours.examples)


# ----------------------------------------------------------------------------- training moves the right way


def _initial_accuracy_and_margin(base, tok, seed, tmp_path):
    chosen, rejected = _scores(load_reward_model(base, _cfg(tmp_path, seed=seed), tok), tok, TOY)
    return (chosen > rejected).double().mean().item(), (chosen - rejected).mean().item()


def test_reward_model_training_reverses_a_random_heads_preferences(dirs, tmp_path):
    """On the separable toy set, from the random heads of seeds 1 and 2, which prefer *every* rejected response
    (accuracy 0: a premise checked here), 8 full-batch steps reach accuracy 1 and raise the mean margin by far more
    than the spread of the initial mean margin over 8 random heads (measured: rise ~1.6, spread ~0.006; required:
    50 times the spread)."""
    tok = load_tokenizer(dirs["base"])
    initial = [_initial_accuracy_and_margin(dirs["base"], tok, s, tmp_path) for s in range(8)]
    spread = torch.tensor([m for _, m in initial]).std().item()
    for seed in (1, 2):
        assert initial[seed][0] == 0.0
        out = str(tmp_path / f"seed{seed}")
        result = train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["toy"], objective="reward",
                            output_dir=out, max_steps=8, learning_rate=3e-3, per_device_train_batch_size=len(TOY),
                            **{**COMMON, "seed": seed}))
        logs = [h for h in result.log_history if "accuracy" in h]
        assert logs[0]["margin"] == pytest.approx(initial[seed][1], abs=1e-5)  # step 1 scored the initial head
        final = evaluate_reward(out, dirs["toy"])
        chosen, rejected = torch.tensor(final.chosen_scores), torch.tensor(final.rejected_scores)
        assert final.accuracy == 1.0 and final.kind == "reward_model"
        assert (chosen - rejected).mean().item() - initial[seed][1] > 50 * spread


def test_lora_reward_model_trains_its_score_head_and_saves_it_with_the_adapter(dirs, tmp_path):
    tok = load_tokenizer(dirs["base"])
    acc0, _ = _initial_accuracy_and_margin(dirs["base"], tok, 1, tmp_path)
    assert acc0 == 0.0
    out = str(tmp_path / "lora")
    result = train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["toy"], objective="reward", use_peft=True,
                        lora_r=4, lora_dropout=0.0, output_dir=out, max_steps=8, learning_rate=1e-2,
                        per_device_train_batch_size=len(TOY), **{**COMMON, "seed": 1}))
    assert result.global_step == 8
    adapter = load_file(os.path.join(out, "adapter_model.safetensors"))
    heads = [n for n in adapter if "score" in n]
    assert heads and not any("lora" in n for n in heads)  # the whole head, not a LoRA of it
    fresh = load_reward_model(dirs["base"], _cfg(tmp_path, seed=1), tok)
    assert not torch.allclose(adapter[heads[0]], fresh.score.weight)  # trained away from its initialisation
    final = evaluate_reward(out, dirs["toy"])  # base model + adapter + saved head, loaded back
    assert final.accuracy == 1.0


def test_the_margin_column_enters_the_loss_by_row(dirs, tmp_path):
    """The loss of a batch collated in a shuffled order is −log σ(r_c − r_r − m) with each row's own margin."""
    rows = [dict(r, margin=m) for r, m in zip(ROWS, MARGINS, strict=True)]
    trainer, ds = _ours(dirs, tmp_path, rows)
    order = [3, 0, 4, 2, 1]
    batch = trainer.data_collator([ds.examples[i] for i in order])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    r = logits.double()
    m = torch.tensor([MARGINS[i] for i in order], dtype=torch.float64)
    assert loss == pytest.approx((-torch.nn.functional.logsigmoid(r[:5] - r[5:] - m)).mean().item(), abs=1e-6)


def test_one_sgd_step_with_centring_shrinks_the_pair_sums_by_the_first_order_amount(dirs, tmp_path):
    """S = mean over pairs of (r_c + r_r)². One SGD step of size η on L_BT + c·S instead of L_BT changes S by
    −η·c·|∇S|² + O(η²): the extra gradient c·∇S, projected on ∇S. Through the trainer's own step (plain SGD, no
    clipping, one full batch) the measured difference has that sign and size, with a relative error that is O(η):
    measured 2.4% at η = 5e-4 and 1.2% at η = 2.5e-4 (halving η halves it, as a first-order error does); asserted:
    under 3% at 2.5e-4, and 0.35-0.65 times the error at 5e-4. The reward model starts with an offset (every reward
    about +3), which the BT loss, blind to a common shift, does not pull back."""
    tok = load_tokenizer(dirs["base"])
    model = load_reward_model(dirs["base"], _cfg(tmp_path), tok)
    ds = tokenize_reward_records(TOY, tok)
    batch = Collator(tok.pad_token_id)(ds.examples)

    def pair_sums(m):
        r = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        return r[: len(TOY)] + r[len(TOY):]

    with torch.no_grad():
        h = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mean_h = h[torch.arange(h.shape[0]), batch["attention_mask"].sum(-1) - 1].mean(0)
        model.score.weight += 3.0 * mean_h / mean_h.dot(mean_h)
    start = str(tmp_path / "offset")
    model.save_pretrained(start)
    tok.save_pretrained(start)
    s = pair_sums(model)
    assert s.mean().item() > 4.0  # the offset is there
    grad = torch.autograd.grad((s ** 2).mean(), list(model.parameters()))
    grad_sq = sum(float((g.double() ** 2).sum()) for g in grad)

    c = 0.05
    relative_error = {}
    for lr in (5e-4, 2.5e-4):
        after = {}
        for coefficient in (None, c):
            out = str(tmp_path / f"lr{lr}-c{coefficient}")
            train(dict(model_name_or_path=start, dataset_path=dirs["toy"], objective="reward", output_dir=out,
                       max_steps=1, learning_rate=lr, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant",
                       per_device_train_batch_size=len(TOY), center_rewards_coefficient=coefficient, **COMMON))
            with torch.no_grad():
                after[coefficient] = float((pair_sums(AutoModelForSequenceClassification.from_pretrained(out)) ** 2)
                                           .mean())
        measured, predicted = after[c] - after[None], -lr * c * grad_sq
        assert measured < 0
        relative_error[lr] = abs(measured / predicted - 1)
    assert relative_error[2.5e-4] < 0.03
    assert 0.35 < relative_error[2.5e-4] / relative_error[5e-4] < 0.65, relative_error


def test_kill_and_resume_gives_the_uninterrupted_run(dirs, tmp_path):
    class Killed(RuntimeError):
        pass

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Killed

    base = dict(model_name_or_path=dirs["base"], dataset_path=dirs["toy"], objective="reward", max_steps=6,
                learning_rate=1e-3, center_rewards_coefficient=0.01,
                **{**COMMON, "save_strategy": "steps", "per_device_train_batch_size": 4})
    full = train(dict(base, output_dir=str(tmp_path / "full"), save_steps=100))
    with pytest.raises(Killed):
        train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3), callbacks=[KillAfterCheckpoint()])
    resumed = train(dict(base, output_dir=str(tmp_path / "cut"), save_steps=3, resume_from_checkpoint="last"))
    loss = {h["step"]: h["loss"] for h in full.log_history if "loss" in h}
    loss_r = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert resumed.global_step == 6 and set(loss_r) >= {4, 5, 6}
    for step in (4, 5, 6):
        assert loss_r[step] == pytest.approx(loss[step], abs=1e-6), step
    assert loss[6] != pytest.approx(loss[3], abs=1e-3)  # training moved between checkpoint and end


def test_bf16_reward_training_raises_the_margin(dirs, tmp_path):
    """bf16 autocast on CPU (``bf16: true`` as the GPU configs run): finite losses, and the margin rises by more than
    bf16's rounding of rewards of order 0.1 (2^-8 relative)."""
    result = train(dict(model_name_or_path=dirs["base"], dataset_path=dirs["toy"], objective="reward", bf16=True,
                        output_dir=str(tmp_path / "bf16"), max_steps=6, learning_rate=3e-3,
                        per_device_train_batch_size=len(TOY), **COMMON))
    logs = [h for h in result.log_history if "loss" in h]
    assert len(logs) == 6 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[-1]["margin"] > logs[0]["margin"] + 0.1


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("rows, error, match", [
    ([{"prompt": "a", "chosen": " b"}], MissingColumnsError, r"needs columns 'chosen' and 'rejected'.*found"),
    ([{"prompt": "a", "chosen": " b", "rejected": " c", "margin": "1.0"}], DatasetError,
     r"example 0: margin '1.0' in column 'margin' is not a finite number"),
    ([{"prompt": "a", "chosen": " b", "rejected": " c", "margin": None}], DatasetError, "margin None"),
    ([{"prompt": "a", "chosen": " b", "rejected": " c", "margin": True}], DatasetError, "margin True"),
    ([{"prompt": "a", "chosen": " b", "rejected": " c", "margin": float("nan")}], DatasetError, "margin nan"),
    ([{"prompt": "a", "chosen": 3, "rejected": " c"}], DatasetError, r"example 0: 'chosen' must be a string"),
    ([{"prompt": "a", "chosen": " b", "rejected": [{"role": "assistant", "content": "c"}]}], DatasetError,
     "both be strings or both be message lists"),
    ([{"prompt": "a", "chosen": " b", "rejected": " c"}, {"prompt": "a", "chosen": " b"}], MissingColumnsError,
     r"row 1 has different columns"),
])
def test_bad_reward_data_is_one_clear_error(dirs, rows, error, match):
    with pytest.raises(error, match=match) as exc:
        tokenize_reward_records(rows, load_tokenizer(dirs["base"]))
    assert isinstance(exc.value, MdpalignError) and "\n" not in str(exc.value)


def test_pairs_longer_than_max_length_are_dropped_and_listed(dirs):
    tok = load_tokenizer(dirs["base"])
    whole = tokenize_reward_records(PREFERENCES, tok)
    longest = max(max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in whole.examples)
    assert whole.dropped == [] and len(whole.examples) == len(PREFERENCES)
    ds = tokenize_reward_records(PREFERENCES, tok, max_length=longest - 1)
    assert ds.dropped and len(ds.examples) + len(ds.dropped) == len(PREFERENCES)
    # the pairs kept are whole (nothing cut), and none is longer than max_length
    kept = {e["index"]: e for e in ds.examples}
    for e in whole.examples:
        if e["index"] in kept:
            assert kept[e["index"]]["chosen_ids"] == e["chosen_ids"]
        else:
            assert max(len(e["chosen_ids"]), len(e["rejected_ids"])) > longest - 1
    with pytest.raises(EmptyDatasetError, match="longer than max_length=2"):
        tokenize_reward_records(PREFERENCES, tok, max_length=2)


@pytest.mark.parametrize("kw, match", [
    ({"ref_model_name_or_path": "org/ref"}, "ref_model_name_or_path is set, but a reward model is trained without"),
    ({"reference": "model"}, "reference='model' is set, but a reward model"),
    ({"padding_free": True}, "padding_free is not supported for objective 'reward'"),
    ({"max_prompt_length": 8}, "max_prompt_length does not apply to objective 'reward'"),
    ({"center_rewards_coefficient": -0.1}, "center_rewards_coefficient must be a finite number >= 0"),
    ({"objective": "dpo", "center_rewards_coefficient": 0.01}, "applies to objective 'reward', not 'dpo'"),
])
def test_options_that_mean_nothing_for_a_reward_model_are_errors(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, **kw)


def test_a_model_that_is_not_a_one_output_classifier_is_refused(dirs, tmp_path):
    tok = load_tokenizer(dirs["base"])
    with pytest.raises(RewardModelError, match="trains a sequence classifier.*got a LlamaForCausalLM"):
        prepare_reward_model(AutoModelForCausalLM.from_pretrained(dirs["base"]), tok)
    two = AutoModelForSequenceClassification.from_pretrained(dirs["base"], num_labels=2)
    two.save_pretrained(str(tmp_path / "two"))
    tok.save_pretrained(str(tmp_path / "two"))
    with pytest.raises(RewardModelError, match="num_labels=2"):
        load_reward_model(str(tmp_path / "two"), _cfg(tmp_path), tok)
    with pytest.raises(RewardEvalError, match="a sequence classifier with 2 outputs"):
        evaluate_reward(str(tmp_path / "two"), dirs["toy"])


# ----------------------------------------------------------------------------- mdpalign eval reward


def test_rewardbench_scoring_ties_lose_and_subsets_are_weighted_by_their_counts():
    # subset a: right, tie, right -> 2/3; subset b: wrong -> 0; c: a pair that could not be scored (NaN) -> 0
    chosen = [1.0, 0.5, 2.0, -1.0, math.nan]
    rejected = [0.0, 0.5, 1.0, 0.0, 0.0]
    table, weighted = rewardbench_accuracy(chosen, rejected, ["a", "a", "a", "b", "c"])
    assert {k: (v.n, v.correct, v.ties) for k, v in table.items()} == {"a": (3, 2, 1), "b": (1, 0, 0),
                                                                        "c": (1, 0, 0)}
    assert weighted == pytest.approx((3 * 2 / 3 + 0 + 0) / 5)  # 0.4; the unweighted mean of subsets is 2/9
    assert weighted != pytest.approx(sum(v.accuracy for v in table.values()) / 3)
    table, weighted = rewardbench_accuracy([1.0, 1.0], [1.0, 0.0])
    assert list(table) == ["all"] and weighted == 0.5


def _eval_cli(*argv):
    parser = argparse.ArgumentParser(prog="mdpalign")
    register_eval(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "reward", *argv])
    return args.func(args)


def test_eval_reward_scores_a_reward_model_per_subset(dirs, tmp_path, capsys):
    rows = [dict(r, subset=s) for r, s in zip(ROWS, ["qa", "qa", "text", "text", "text"], strict=True)]
    data = write_jsonl(str(tmp_path / "eval.jsonl"), rows)
    assert _eval_cli("--model", dirs["rm"], "--data", data, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(dirs["rm"])
    chosen, rejected = _scores(load_reward_model(dirs["rm"], _cfg(tmp_path), tok), tok, ROWS)
    right = (chosen > rejected).tolist()
    assert right[-1] is False  # the tie
    assert report["kind"] == "reward_model" and report["n"] == 5 and report["ties"] == 1
    assert report["subsets"]["qa"]["correct"] == sum(right[:2])
    assert report["subsets"]["text"] == {"n": 3, "correct": sum(right[2:]), "ties": 1,
                                         "accuracy": sum(right[2:]) / 3}
    assert report["accuracy"] == pytest.approx(sum(right) / 5)
    assert _eval_cli("--model", dirs["rm"], "--data", data) == 0
    table = capsys.readouterr().out
    assert "all (weighted)" in table and f"{sum(right) / 5:.4f}" in table


def test_eval_reward_scores_a_dpo_policy_by_its_implicit_reward(dirs, tmp_path):
    """chosen score = Σ log π − Σ log π_ref over the response tokens, checked against full-logits log-softmax; the
    reference scored against itself ties on every pair, and ties lose (accuracy 0)."""
    policy = AutoModelForCausalLM.from_pretrained(dirs["base"])
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    policy.save_pretrained(str(tmp_path / "policy"))
    tok = load_tokenizer(dirs["base"])
    tok.save_pretrained(str(tmp_path / "policy"))
    data = write_jsonl(str(tmp_path / "pref.jsonl"), PREFERENCES)
    result = evaluate_reward(str(tmp_path / "policy"), data, dirs["base"])
    assert result.kind == "implicit_reward"

    def response_logps(model, prompt, response):
        p = tok(prompt)["input_ids"]
        ids = torch.tensor([tok(prompt + response + tok.eos_token)["input_ids"]])
        with torch.no_grad():
            lp = naive_token_logps(model(input_ids=ids).logits.double(), ids)
        return lp[0, len(p):].sum().item()

    ref = load_model(dirs["base"], _cfg(tmp_path))
    for i, row in enumerate(PREFERENCES):
        for key, got in (("chosen", result.chosen_scores[i]), ("rejected", result.rejected_scores[i])):
            want = response_logps(policy, row["prompt"], row[key]) - response_logps(ref, row["prompt"], row[key])
            assert got == pytest.approx(want, abs=1e-4), (i, key)
    assert any(abs(c - r) > 1e-2 for c, r in zip(result.chosen_scores, result.rejected_scores, strict=True))
    same = evaluate_reward(dirs["base"], data, dirs["base"])
    assert same.ties == len(PREFERENCES) and same.accuracy == 0.0


def test_eval_reward_of_a_lora_policy_defaults_to_its_base_model_as_reference(dirs, tmp_path):
    """A LoRA policy without --ref-model is scored against its base model with the adapter off: the same numbers as
    --ref-model naming that base model, and not zero (the adapter was moved away from its zero initialisation)."""
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(dirs["base"]),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    policy.save_pretrained(str(tmp_path / "adapter"))
    load_tokenizer(dirs["base"]).save_pretrained(str(tmp_path / "adapter"))
    data = write_jsonl(str(tmp_path / "pref.jsonl"), PREFERENCES)
    default = evaluate_reward(str(tmp_path / "adapter"), data)
    explicit = evaluate_reward(str(tmp_path / "adapter"), data, dirs["base"])
    assert default.kind == explicit.kind == "implicit_reward"
    for a, b in ((default.chosen_scores, explicit.chosen_scores), (default.rejected_scores, explicit.rejected_scores)):
        assert a == pytest.approx(b, abs=1e-5)
    assert max(abs(c) for c in default.chosen_scores) > 1e-2


@pytest.mark.parametrize("case, match", [
    ("causal_without_ref", "is a causal LM, scored by its implicit reward .* pass its reference with --ref-model"),
    ("ref_with_reward_model", "--ref-model is for a policy .* remove --ref-model"),
    ("reward_model_as_ref", "--ref-model .* is a reward model"),
    ("no_directory", "no such model directory"),
    ("not_a_model", "no config.json"),
    ("no_data", "--data .*missing.jsonl.*: no such file or directory"),
    ("dpo_needs_a_prompt", "without a 'prompt' column, 'chosen' and 'rejected' must be message lists"),
])
def test_eval_reward_mistakes_are_one_line_errors(dirs, tmp_path, case, match):
    data = write_jsonl(str(tmp_path / "pref.jsonl"), PREFERENCES)
    argv = {
        "causal_without_ref": ["--model", dirs["base"], "--data", data],
        "ref_with_reward_model": ["--model", dirs["rm"], "--ref-model", dirs["base"], "--data", data],
        "reward_model_as_ref": ["--model", dirs["base"], "--ref-model", dirs["rm"], "--data", data],
        "no_directory": ["--model", str(tmp_path / "nope"), "--data", data],
        "not_a_model": ["--model", str(tmp_path), "--data", data],
        "no_data": ["--model", dirs["rm"], "--data", str(tmp_path / "missing.jsonl")],
        "dpo_needs_a_prompt": ["--model", dirs["base"], "--ref-model", dirs["base"], "--data",
                               write_jsonl(str(tmp_path / "text.jsonl"),
                                           [{"chosen": "a b", "rejected": "a c"}])],
    }[case]
    # the contract with the `mdpalign` command: an MdpalignError with a one-line message (printed, exit status 2)
    with pytest.raises(MdpalignError, match=match) as exc:
        _eval_cli(*argv)
    assert "\n" not in str(exc.value)
