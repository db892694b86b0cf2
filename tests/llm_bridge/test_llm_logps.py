"""Per-token log-probs: chunked, selective and packed paths equal a naive full log_softmax gather."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from llm_fixtures import COMPLETIONS, PREFERENCES, build_model, build_tokenizer  # noqa: E402

from mdpalign.llm_bridge.data import Collator, TokenizeSettings, tokenize_records  # noqa: E402
from mdpalign.llm_bridge.logps import (  # noqa: E402
    batch_token_logps,
    chunk_bounds,
    chunked_greedy,
    chunked_token_logps,
    install_logps_forward,
    naive_token_logps,
    scoring_mask,
    selective_token_logps,
    synced_num_chunks,
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


def test_scoring_whole_sequences_for_the_chosen_half_only(setup):
    """ORPO's scope: chosen rows (the first half) scored on prompt+completion, rejected rows on their completion;
    the same positions in the padded and the packed layout."""
    _, model, padded, packed, _, naive = setup
    b = padded["input_ids"].shape[0] // 2
    score = scoring_mask(padded, leading_sequences=b)
    assert torch.equal(score[:b], scoring_mask(padded)[:b])
    assert torch.equal(score[b:], padded["completion_mask"][b:] & scoring_mask(padded)[b:])
    assert int(score[b:].sum()) < int(scoring_mask(padded)[b:].sum())  # the rejected prompts are skipped
    with torch.no_grad():
        tl, _, scored = batch_token_logps(model, padded, chunk_size=5, score_mask=score)
        tl_p, _, scored_p = batch_token_logps(model, packed, chunk_size=5,
                                              score_mask=scoring_mask(packed, leading_sequences=b))
    assert torch.equal(scored_p, scored[:, : scored_p.shape[1]]) and not scored[:, scored_p.shape[1]:].any()
    torch.testing.assert_close(tl, naive * scored, atol=1e-5, rtol=0)
    torch.testing.assert_close(tl_p, tl[:, : tl_p.shape[1]], atol=1e-5, rtol=0)


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
                    position_ids=packed["position_ids"],
                    score_mask=packed["completion_mask"] & (packed["position_ids"] > 0))
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
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
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


def test_chunk_bounds_pad_with_empty_chunks_up_to_num_chunks():
    assert chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_bounds(0, 3) == []
    assert chunk_bounds(2, 3, num_chunks=3) == [(0, 2), (2, 2), (2, 2)]
    with pytest.raises(ValueError, match="num_chunks=1 is fewer than the 3 chunks"):
        chunk_bounds(7, 3, num_chunks=1)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunk_bounds(7, 0)


def test_extra_empty_chunks_change_nothing():
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 20)
    h, y = torch.randn(5, 8, generator=g, requires_grad=True), torch.randint(0, 20, (5,), generator=g)
    plain = chunked_token_logps(h, head, y, chunk_size=2)
    (gp,) = torch.autograd.grad(plain.sum(), h)
    padded = chunked_token_logps(h, head, y, chunk_size=2, num_chunks=6)
    (gq,) = torch.autograd.grad(padded.sum(), h)
    torch.testing.assert_close(padded, plain, atol=0, rtol=0)
    torch.testing.assert_close(gq, gp, atol=0, rtol=0)
    torch.testing.assert_close(chunked_greedy(h, head, 2, num_chunks=6), chunked_greedy(h, head, 2), atol=0, rtol=0)
    # a head that ZeRO-3 did not partition needs no agreement between processes (and no process group)
    assert synced_num_chunks(5, 2, head, h.device) is None


_RANK_WORKER = """
import json, sys, torch, torch.distributed as dist
from mdpalign.llm_bridge.logps import chunked_token_logps, synced_num_chunks
rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
head = torch.nn.Linear(4, 10)
head.weight.ds_id, head.weight.ds_process_group = 0, dist.group.WORLD  # the tags ZeRO-3 puts on its shards
rows = [7, 2][rank]  # uneven scored tokens: 3 chunks of 3 on rank 0, 1 on rank 1
calls = []
head.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
h = torch.randn(rows, 4, requires_grad=True)
n = synced_num_chunks(rows, 3, head, h.device)
chunked_token_logps(h, head, torch.zeros(rows, dtype=torch.long), 3, num_chunks=n).sum().backward()
print(json.dumps({"num_chunks": n, "calls": calls}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_synced_num_chunks_gives_every_process_the_same_number_of_head_calls():
    """What ZeRO-3 needs (each head call all-gathers its weight): two gloo processes with 7 and 2 scored rows call
    the head equally often, in forward and in the checkpointed recompute. DeepSpeed's tags are faked here;
    tests/test_llm_deepspeed.py runs the real thing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_WORKER, str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["num_chunks"] for o in outs] == [3, 3]
    assert sorted(outs[0]["calls"]) == [1, 1, 3, 3, 3, 3]  # 3 chunks, forward and recompute
    assert sorted(outs[1]["calls"]) == [0, 0, 0, 0, 2, 2]  # 1 real chunk and 2 empty ones, twice
