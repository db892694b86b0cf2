"""Per-token log-probs: chunked, selective and packed paths equal a naive full log_softmax gather."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from llm_fixtures import COMPLETIONS, PREFERENCES, build_model, build_tokenizer  # noqa: E402

from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.logps import (  # noqa: E402
    batch_token_logps,
    chunked_token_logps,
    install_logps_forward,
    naive_token_logps,
    scoring_mask,
    selective_token_logps,
    unpack,
)


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = build_model(len(tok), seed=1).eval()
    install_logps_forward(model)
    ds = tokenize_records(PREFERENCES, tok, TokenizeSettings("dpo"))
    padded = Collator(tok.pad_token_id)(ds.examples)
    packed = Collator(tok.pad_token_id, padding_free=True)(ds.examples)
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    naive = naive_token_logps(logits, padded["input_ids"])
    return tok, model, padded, packed, logits, naive


def test_naive_reference_is_the_log_softmax_gather(setup):
    _, _, padded, _, logits, naive = setup
    b, t = 1, 5
    expected = torch.log_softmax(logits[b, t - 1].double(), -1)[padded["input_ids"][b, t]]
    assert naive[b, t].item() == pytest.approx(expected.item(), abs=1e-5)
    assert torch.all(naive[:, 0] == 0)
    # a random model is far from uniform here, so equality below is not trivially about constants
    assert naive[padded["completion_mask"]].std() > 1.0


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_chunked_equals_naive_on_counted_tokens(setup, chunk):
    _, model, padded, _, _, naive = setup
    with torch.no_grad():
        tl, m, scored = batch_token_logps(model, padded, chunk_size=chunk)
    assert torch.equal(m, padded["completion_mask"]) and torch.equal(scored, m)
    torch.testing.assert_close(tl, naive * m, atol=1e-5, rtol=0)
    # positions not scored are exactly zero
    assert torch.all(tl[~m] == 0)


def test_scoring_the_prompt_too(setup):
    _, model, padded, _, _, naive = setup
    score = scoring_mask(padded)
    with torch.no_grad():
        tl, _, scored = batch_token_logps(model, padded, chunk_size=5, score_mask=score)
    assert int(scored.sum()) == int(padded["attention_mask"].sum()) - padded["input_ids"].shape[0]
    torch.testing.assert_close(tl, naive * scored, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_target_layout_and_greedy_equal_the_full_logits(setup, chunk):
    """score_layout="target" (position t scores its own next token, IFT's layout, last position included) and
    greedy_mask (chunked argmax) against the full logits, through inputs_embeds as IFT calls them."""
    _, model, padded, _, logits, _ = setup
    ids, am = padded["input_ids"], padded["attention_mask"]
    targets = torch.roll(ids, -1, dims=1)
    mask = am.bool().clone()
    mask[0, -1] = True  # the last position is scorable in this layout
    every = torch.ones_like(mask)
    with torch.no_grad():
        out = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=am, score_mask=mask,
                    score_targets=targets, score_layout="target", greedy_mask=every, logps_chunk_size=chunk)
    expected = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(out.token_logps, expected * mask, atol=1e-5, rtol=0)
    assert torch.all(out.token_logps[~mask] == 0)
    assert torch.equal(out.greedy, logits.argmax(-1))
    with pytest.raises(ValueError, match="needs score_targets"):
        model(input_ids=ids, score_mask=mask, score_layout="target")


def test_selective_equals_naive_and_bf16_upcasts(setup):
    _, _, padded, _, logits, naive = setup
    torch.testing.assert_close(selective_token_logps(logits, padded["input_ids"]), naive, atol=1e-5, rtol=0)
    low = logits.to(torch.bfloat16)
    ref = naive_token_logps(low.float(), padded["input_ids"])
    torch.testing.assert_close(selective_token_logps(low, padded["input_ids"]), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_equals_padded(setup, attn):
    tok, model, padded, packed, _, naive = setup
    m = copy.deepcopy(model)
    m.config._attn_implementation = attn
    with torch.no_grad():
        tl, cm, _ = batch_token_logps(m, packed, chunk_size=4)
    width = tl.shape[1]
    assert torch.equal(cm, padded["completion_mask"][:, :width])
    torch.testing.assert_close(tl, (naive * padded["completion_mask"])[:, :width], atol=1e-5, rtol=0)


def test_packing_without_sequence_isolation_would_differ(setup):
    """Negative control: a packed row with a plain causal mask lets sequences see each other."""
    _, model, padded, packed, _, naive = setup
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], attention_mask=torch.ones_like(packed["input_ids"]),
                    position_ids=packed["position_ids"], score_mask=packed["completion_mask"] & (packed["position_ids"] > 0))
    leaked = unpack(out.token_logps, packed["seq_lengths"])
    expected = (naive * padded["completion_mask"])[:, : leaked.shape[1]]
    assert torch.allclose(leaked[0], expected[0], atol=1e-5)  # the first sequence sees nothing before it
    assert (leaked[1:] - expected[1:]).abs().max() > 1e-2


def test_chunked_gradients_equal_naive_gradients():
    tok = build_tokenizer()
    ds = tokenize_records(COMPLETIONS, tok, TokenizeSettings("sft"))
    batch = Collator(tok.pad_token_id)(ds.examples)
    a = build_model(len(tok), seed=2)
    b = copy.deepcopy(a)
    install_logps_forward(b)
    m = batch["completion_mask"]
    logits = a(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    (naive_token_logps(logits, batch["input_ids"]) * m).sum().backward()
    tl, _, _ = batch_token_logps(b, batch, chunk_size=3)
    tl.sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_head_softcap_and_scale_match_transformed_logits():
    g = torch.Generator().manual_seed(0)
    h, w, bias = torch.randn(11, 8, generator=g), torch.randn(20, 8, generator=g), torch.randn(20, generator=g)
    y = torch.randint(0, 20, (11,), generator=g)
    z = 0.5 * (h @ w.T + bias)
    z = 3.0 * torch.tanh(z / 3.0)
    expected = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    got = chunked_token_logps(h, lambda x: x @ w.T + bias, y, chunk_size=4, softcap=3.0, scale=0.5)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="hidden has 11 rows but targets has 10"):
        chunked_token_logps(h, lambda x: x @ w.T + bias, y[:10])
