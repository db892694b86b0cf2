"""GPU checks (skipped without CUDA): bf16 chunked log-probs on CUDA track an fp32 reference. Unrun so far."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU CI
    pytest.skip("needs a CUDA device", allow_module_level=True)

from llm_fixtures import PREFERENCES, build_model, build_tokenizer  # noqa: E402

from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.logps import batch_token_logps, install_logps_forward, naive_token_logps  # noqa: E402


def test_bf16_chunked_logps_track_fp32_on_cuda():
    tok = build_tokenizer()
    model32 = build_model(len(tok), seed=3, hidden=64).cuda().eval()
    model16 = build_model(len(tok), seed=3, hidden=64).cuda().to(torch.bfloat16).eval()
    install_logps_forward(model16)
    ds = tokenize_records(PREFERENCES, tok, TokenizeSettings("dpo"))
    batch = {k: v.cuda() for k, v in Collator(tok.pad_token_id)(ds.examples).items()}
    with torch.no_grad():
        ref = naive_token_logps(model32(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["input_ids"]) * batch["completion_mask"]
        tl, m, _ = batch_token_logps(model16, batch, chunk_size=7)
    assert tl.dtype == torch.float32
    # bf16 weights/activations: per-token error of order 1e-2 relative, never a systematic offset
    err = (tl - ref)[m]
    assert err.abs().max() < 0.25 * ref[m].abs().max()
    assert abs(err.mean()) < 0.05
