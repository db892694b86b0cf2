"""bf16 models: the chunked log-prob path is as accurate as upcasting full bf16 logits (TRL's way), and more accurate
than a bf16 log-softmax. Runs on CPU (CI) and, marked ``gpu``, on CUDA where one is present."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from llm_fixtures import (  # noqa: E402
    COMPLETIONS,
    PREFERENCES,
    build_model,
    build_tokenizer,
    save_tiny,
    write_jsonl,
)

from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.logps import (  # noqa: E402
    batch_token_logps,
    install_logps_forward,
    naive_token_logps,
)
from mdpalign.llm_bridge.training import train  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_chunked_logps_are_as_accurate_as_upcast_full_logits(device, seed):
    tok = build_tokenizer()
    model32 = build_model(len(tok), seed=seed, hidden=64).to(device).eval()
    model16 = build_model(len(tok), seed=seed, hidden=64).to(device=device, dtype=torch.bfloat16).eval()
    install_logps_forward(model16)
    ds = tokenize_records(PREFERENCES, tok, TokenizeSettings("dpo"))
    batch = {k: v.to(device) for k, v in Collator(tok.pad_token_id)(ds.examples).items()}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        truth = naive_token_logps(model32(input_ids=ids, attention_mask=mask).logits.double(), ids)
        logits16 = model16(input_ids=ids, attention_mask=mask).logits
        upcast = naive_token_logps(logits16, ids)  # bf16 logits, fp32 log-softmax
        bf16_lp = torch.log_softmax(logits16[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        bf16_softmax = F.pad(bf16_lp.float(), (1, 0))
        ours, counted, _ = batch_token_logps(model16, batch, chunk_size=7)
    assert ours.dtype == torch.float32

    def error(x):
        return (x.double() - truth)[counted].abs().mean().item()

    # the bf16 network itself is the error floor; our per-chunk upcast adds nothing to it ...
    assert error(ours) <= 1.02 * error(upcast)
    # ... while a bf16 log-softmax rounds log-probs of magnitude ~log(V) to 8 bits on top of it
    assert error(ours) < 0.9 * error(bf16_softmax)
    if device == "cpu":  # same bf16 logits row for row: only fp32 rounding in the logsumexp differs
        torch.testing.assert_close(ours[counted], upcast[counted], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("objective", ["sft", "dpo", "orpo", "ift", "crlft"])
def test_bf16_mixed_precision_training_moves_each_objective_the_right_way(tmp_path, device, objective):
    """A few bf16-autocast steps (``bf16: true``, as the GPU configs run) stay finite and improve each objective's
    own measure: the chosen-vs-rejected margin for the preference losses, the NLL for the others."""
    rows = PREFERENCES if objective in ("dpo", "orpo") else COMPLETIONS
    if objective == "crlft":
        rows = [dict(r, **{"class": "expert"}) for r in rows]
    result = train(dict(
        model_name_or_path=save_tiny(str(tmp_path / "model")),
        dataset_path=write_jsonl(str(tmp_path / "d.jsonl"), rows),
        objective=objective, output_dir=str(tmp_path / "out"), max_steps=6, learning_rate=3e-3, logging_steps=1,
        per_device_train_batch_size=4, bf16=True, use_cpu=device == "cpu", save_strategy="no", report_to="none",
        disable_tqdm=True, seed=0, beta=0.1, crlft_class_weights={"expert": 1.0}, ift_lambda=0.2, ift_decay=0.9))
    logs = [h for h in result.log_history if "loss" in h]
    assert len(logs) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    key = "rewards/margins" if objective in ("dpo", "orpo") else "nll"
    first, last = logs[0][key], logs[-1][key]
    assert (last > first + 0.05) if key == "rewards/margins" else (last < 0.9 * first), (key, first, last)
