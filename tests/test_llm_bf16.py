"""bf16 models: the chunked log-prob path is as accurate as upcasting full bf16 logits (TRL's way), and more accurate
than a bf16 log-softmax. Runs on CPU (CI) and, marked ``gpu``, on CUDA where one is present."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from llm_fixtures import PREFERENCES, build_model, build_tokenizer  # noqa: E402

from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.logps import batch_token_logps, install_logps_forward, naive_token_logps  # noqa: E402

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
        bf16_softmax = F.pad(torch.log_softmax(logits16[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].float(), (1, 0))
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
