"""Per-token log-probabilities of a causal LM without the full fp32 (batch, seq, vocab) logits.

Layout convention (everything here): ``token_logps[r, t] = log pi(x_t | x_<t)`` aligned with the
*input* position t of row r, 0 where t is not scored (and always at t = 0). A sequence
log-probability is then ``(token_logps * mask).sum(-1)`` with the counted-token mask of
:func:`mdpalign.llm_bridge.data.counted_token_mask`.

Two ways to get them:

* :func:`chunked_token_logps` — from the backbone's last hidden states: gather the rows that are
  scored (only completion tokens, usually), then for ``chunk_size`` rows at a time project through
  the LM head, upcast that chunk to fp32 and take ``z_y - logsumexp(z)``. Each chunk runs under
  activation checkpointing, so the backward pass recomputes the chunk's logits instead of keeping
  them: peak extra memory is one (chunk_size, vocab) fp32 block, not (B*T, vocab).
  :func:`install_logps_forward` routes ``model(..., score_mask=...)`` here, so the call still
  goes through the (DDP / FSDP / PEFT) wrapped model's forward. ``score_layout="target"`` scores
  ``score_targets[:, t]`` with the hidden state of position t itself (IFT's layout), and
  ``greedy_mask=`` returns the per-position argmax token (:func:`chunked_greedy`, no grad), the
  same chunking, so IFT's two passes never hold (B, T, vocab) logits either.
* :func:`selective_token_logps` — from logits you already have: ``gather - logsumexp``, row by row
  for half precision (the fp32 upcast is then one row at a time).

:func:`naive_token_logps` is the textbook ``log_softmax(...).gather`` used as ground truth in tests.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

_INSTALLED = "_mdpalign_logps_forward"


def naive_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """out[:, t] = log_softmax(logits[:, t-1].float())[input_ids[:, t]], out[:, 0] = 0. (B, T) fp32."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0))


def selective_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Same as :func:`naive_token_logps` via z_y - logsumexp(z), never a full log_softmax tensor.

    fp32/fp64 logits: one vectorised gather and logsumexp. Half precision: row by row, upcast per
    row (log_softmax of bf16 logits in bf16 loses ~2 digits, so the upcast matters).
    """
    shifted, targets = logits[:, :-1], input_ids[:, 1:]
    if logits.dtype in (torch.float32, torch.float64):
        lp = shifted.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(shifted, dim=-1)
    else:
        rows = []
        for row_logits, row_targets in zip(shifted, targets, strict=True):
            z = row_logits.float()
            rows.append(z.gather(-1, row_targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
        lp = torch.stack(rows)
    return F.pad(lp.float(), (1, 0))


def chunk_bounds(rows: int, chunk_size: int, num_chunks: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of ``chunk_size``-row chunks covering ``rows``, then empty (rows, rows) ones up to
    ``num_chunks``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bounds = [(start, min(start + chunk_size, rows)) for start in range(0, rows, chunk_size)]
    if num_chunks is not None:
        if num_chunks < len(bounds):
            raise ValueError(f"num_chunks={num_chunks} is fewer than the {len(bounds)} chunks of {chunk_size} rows "
                             f"that {rows} rows need")
        bounds += [(rows, rows)] * (num_chunks - len(bounds))
    return bounds


def zero3_process_group(head):
    """The process group over which DeepSpeed ZeRO-3 partitioned ``head``'s parameters; None if it did not."""
    params = head.parameters() if isinstance(head, torch.nn.Module) else ()
    for p in params:
        if hasattr(p, "ds_id"):  # set on every parameter that zero.Init / the ZeRO-3 engine partitions
            return getattr(p, "ds_process_group", None) or dist.group.WORLD
    return None


def synced_num_chunks(rows: int, chunk_size: int, head, device) -> int | None:
    """The most chunks any rank needs, when ZeRO-3 partitions ``head``; None (each rank its own count) otherwise.

    ZeRO-3 all-gathers the head's weight on every call of the head (and again in each chunk's checkpointed
    recompute in backward). An all-gather is a collective, so a rank that calls the head fewer times than another
    (fewer scored tokens: the usual case) leaves the others waiting in a mismatched collective: the run hangs or
    dies with a size mismatch. Every rank therefore makes the same number of calls, the extra ones on zero rows.
    """
    group = zero3_process_group(head)
    if group is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return None
    count = torch.tensor([len(chunk_bounds(rows, chunk_size))], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX, group=group)
    return int(count.item())


def _head_logps(head, hidden, targets, softcap: float | None, scale: float):
    z = _head_logits(head, hidden, softcap, scale)
    return z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def chunked_token_logps(
    hidden: torch.Tensor,
    head,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    softcap: float | None = None,
    scale: float = 1.0,
    num_chunks: int | None = None,
) -> torch.Tensor:
    """log softmax(c·tanh(scale·head(h)/c))[y] for M rows of h, ``chunk_size`` rows at a time -> (M,) fp32.

    hidden (M, H) are the hidden states that *predict* targets (M,); ``head`` is the LM head module
    (or any callable h -> logits). With ``softcap`` c the logits are c·tanh(z/c) (Gemma 2), ``scale``
    multiplies them first (Cohere's logit_scale). The head is *called* (not its weight read), so
    ZeRO-3 / FSDP gather its parameters through their module hooks, also in the backward recompute.
    ``num_chunks`` (>= the ceil(M / chunk_size) chunks the rows need) calls the head that many times, the extra
    calls on zero rows: see :func:`synced_num_chunks`.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    out = []
    for start, stop in chunk_bounds(hidden.shape[0], chunk_size, num_chunks):
        h, y = hidden[start:stop], targets[start:stop]
        if torch.is_grad_enabled():
            # recompute the chunk's logits in backward instead of keeping (chunk, vocab) fp32 per chunk
            out.append(checkpoint(_head_logps, head, h, y, softcap, scale, use_reentrant=False))
        else:
            out.append(_head_logps(head, h, y, softcap, scale))
    if not out:  # nothing scored: a zero-size result still connected to the graph
        return hidden.sum(-1)[:0].float()
    return torch.cat(out)


def _head_logits(head, hidden, softcap: float | None, scale: float) -> torch.Tensor:
    z = head(hidden).float()
    if scale != 1.0:
        z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


@torch.no_grad()
def chunked_greedy(
    hidden: torch.Tensor,
    head,
    chunk_size: int = 1024,
    softcap: float | None = None,
    scale: float = 1.0,
    num_chunks: int | None = None,
) -> torch.Tensor:
    """argmax of the (transformed) logits ``c·tanh(scale·head(h)/c)`` for M rows of h -> (M,) int64 ids.

    ``chunk_size`` rows at a time under ``torch.no_grad``: peak extra memory one (chunk_size, vocab) fp32 block.
    The transform is the one :func:`chunked_token_logps` applies (monotone, so the argmax is the model's greedy
    token; ties go to the lowest id, as ``torch.argmax`` of the full logits does). ``num_chunks``: as in
    :func:`chunked_token_logps`.
    """
    out = [_head_logits(head, hidden[start:stop], softcap, scale).argmax(dim=-1)
           for start, stop in chunk_bounds(hidden.shape[0], chunk_size, num_chunks)]
    if not out:
        return torch.zeros(0, dtype=torch.long, device=hidden.device)
    return torch.cat(out)


@dataclass
class LogpsOutput(ModelOutput):
    """What ``model(..., score_mask=...)`` returns once :func:`install_logps_forward` ran.

    A ``ModelOutput`` (a dict) like every HF model output: Trainer helpers index it by key, and DeepSpeed ZeRO-3
    finds the tensors in it to hook the model's backward (it warns that its hooks "may not get triggered" on an
    object it cannot look into).
    """

    token_logps: torch.Tensor | None = None  # (B, T) fp32, 0 where not scored (None without score_mask)
    hidden_states: torch.Tensor | None = None
    greedy: torch.Tensor | None = None  # (B, T) int64 argmax ids where greedy_mask, 0 elsewhere


def _logit_transform(config) -> tuple[float | None, float]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text, "final_logit_softcapping", None)
    scale = getattr(text, "logit_scale", None)
    return softcap, 1.0 if scale is None else float(scale)


def install_logps_forward(model) -> None:
    """Patch a causal LM *instance* so ``model(..., score_mask=M)`` returns :class:`LogpsOutput`.

    Without ``score_mask`` and ``greedy_mask`` the forward is untouched (generation, plain logits).
    With them, the backbone runs once and only the selected positions are pushed through the LM
    head, in chunks of ``logps_chunk_size`` (see :func:`chunked_token_logps`):

    * ``score_mask`` (B, T) bool with ``score_layout="input"`` (default): ``token_logps[:, t] =
      log pi(score_targets[:, t] | x_<t)`` from the hidden state at t−1 (position 0 never scored);
      ``score_targets`` defaults to ``input_ids`` (needed with ``inputs_embeds``).
    * ``score_layout="target"``: ``token_logps[:, t] = log pi(score_targets[:, t] | x_≤t)`` from the
      hidden state at t itself (the layout of :func:`mdpalign.objectives.ift_two_pass`, where position
      t's target is the next token); ``score_targets`` is then required.
    * ``greedy_mask`` (B, T) bool, or ``True`` for every position: ``greedy[:, t]`` = argmax of position t's
      logits (the model's next token), computed chunk by chunk without gradient (:func:`chunked_greedy`); 0
      elsewhere.
    * ``build_inputs_embeds`` (instead of ``input_ids`` / ``inputs_embeds``): a callable ``embedding_module ->
      inputs_embeds`` run *inside* the forward, where FSDP2 has gathered the embedding table (outside it, each
      process holds a shard and a lookup fails). IFT's fused inputs come this way.

    Patch the base model — PEFT wrappers, DDP and FSDP call its ``forward`` attribute, so the patch
    survives wrapping.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, _INSTALLED, False):
        return
    if base.get_output_embeddings() is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (LM head); cannot score tokens")
    prefix = getattr(base, "base_model_prefix", "model")
    if not hasattr(base, prefix):
        raise ValueError(f"{type(base).__name__} exposes no backbone attribute {prefix!r}")
    original = base.forward
    softcap, scale = _logit_transform(base.config)

    def forward(self, *args, score_mask=None, score_targets=None, score_layout="input", greedy_mask=None,
                logps_chunk_size=1024, build_inputs_embeds=None, **kwargs):
        if build_inputs_embeds is not None:
            # inside the (FSDP-wrapped) forward the embedding table is whole; outside it is a shard
            if args or kwargs.get("input_ids") is not None or kwargs.get("inputs_embeds") is not None:
                raise ValueError("build_inputs_embeds replaces input_ids / inputs_embeds; pass neither")
            kwargs.pop("input_ids", None)
            kwargs["inputs_embeds"] = build_inputs_embeds(self.get_input_embeddings())
        if score_mask is None and greedy_mask is None:
            return original(*args, **kwargs)
        if score_layout not in ("input", "target"):
            raise ValueError(f"score_layout must be 'input' or 'target', got {score_layout!r}")
        kwargs["use_cache"] = False
        for k in ("labels", "logits_to_keep", "num_items_in_batch"):
            kwargs.pop(k, None)
        input_ids = args[0] if args else kwargs.get("input_ids")
        hidden = getattr(self, prefix)(*args, **kwargs).last_hidden_state
        head = self.get_output_embeddings()
        transform = (logps_chunk_size, softcap, scale)
        token_logps = greedy = None
        if score_mask is not None:
            token_logps = _scored_token_logps(hidden, head, score_mask, score_targets, score_layout, input_ids,
                                              *transform)
        if greedy_mask is not None:
            greedy = _greedy_tokens(hidden, head, greedy_mask, *transform)
        return LogpsOutput(token_logps=token_logps, greedy=greedy)

    base.forward = types.MethodType(forward, base)
    setattr(base, _INSTALLED, True)


def _scored_token_logps(hidden, head, score_mask, score_targets, score_layout: str, input_ids, chunk_size: int,
                        softcap: float | None, scale: float) -> torch.Tensor:
    """``token_logps`` of :func:`install_logps_forward`'s forward: (B, T) fp32, 0 where not scored."""
    if score_layout == "target":
        if score_targets is None:
            raise ValueError("score_layout='target' needs score_targets (the token that follows each position)")
        mask = score_mask.bool()
        rows = mask  # the hidden state at t predicts the target at t
    else:
        if score_targets is None and input_ids is None:
            raise ValueError("score_targets is required when the model is called with inputs_embeds")
        mask = score_mask.bool().clone()
        mask[:, 0] = False
        # the hidden state at t-1 predicts the token at t
        rows = torch.zeros_like(mask)
        rows[:, :-1] = mask[:, 1:]
    targets = score_targets if score_targets is not None else input_ids
    h = hidden[rows]
    n = synced_num_chunks(h.shape[0], chunk_size, head, hidden.device)
    lp = chunked_token_logps(h, head, targets[mask].to(hidden.device), chunk_size, softcap, scale, n)
    return torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, lp)


def _greedy_tokens(hidden, head, greedy_mask, chunk_size: int, softcap: float | None, scale: float) -> torch.Tensor:
    """``greedy`` of :func:`install_logps_forward`'s forward: (B, T) argmax ids where ``greedy_mask``, 0 elsewhere."""
    every = isinstance(greedy_mask, bool)
    if every and not greedy_mask:
        raise ValueError("greedy_mask=False: pass None for no greedy tokens")
    gm = (torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if every
          else greedy_mask.bool().to(hidden.device))
    h = hidden[gm]
    n = synced_num_chunks(h.shape[0], chunk_size, head, hidden.device)
    ids = chunked_greedy(h, head, chunk_size, softcap, scale, n)
    return torch.zeros(gm.shape, dtype=torch.long, device=hidden.device).masked_scatter(gm, ids)


# ----------------------------------------------------------------------------- packing


def unpack(packed: torch.Tensor, seq_lengths: torch.Tensor) -> torch.Tensor:
    """(1, N) values of concatenated sequences -> (R, max_len) right-padded with zeros."""
    if packed.dim() != 2 or packed.shape[0] != 1:
        raise ValueError(f"packed values must have shape (1, N), got {tuple(packed.shape)}")
    lengths = seq_lengths.tolist()
    if sum(lengths) != packed.shape[1]:
        raise ValueError(f"seq_lengths sum to {sum(lengths)} but the packed row has {packed.shape[1]} tokens")
    rows = torch.split(packed[0], lengths)
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


def batch_token_logps(model, batch: dict, chunk_size: int = 1024, score_mask: torch.Tensor | None = None):
    """Per-token log-probs of a collated batch (padded or padding-free) in the padded (R, T) layout.

    Returns ``(token_logps, completion_mask, scored_mask)``, all (R, T); ``score_mask`` (same layout
    as the batch's ``completion_mask``) scores other positions, e.g. the prompt too for ORPO's NLL
    term (default: the completion mask, so ``scored_mask == completion_mask``).
    """
    mask = batch["completion_mask"].bool() if score_mask is None else score_mask.bool()
    if "seq_lengths" in batch:
        # restart positions => the first token of every packed sequence is unscored
        mask = mask & (batch["position_ids"] > 0)
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], score_mask=mask,
                    logps_chunk_size=chunk_size)
        lens = batch["seq_lengths"]
        counted = batch["completion_mask"].bool() & (batch["position_ids"] > 0)
        return unpack(out.token_logps, lens), unpack(counted, lens).bool(), unpack(mask, lens).bool()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], score_mask=mask,
                logps_chunk_size=chunk_size)
    mask = mask.clone()
    mask[:, 0] = False
    return out.token_logps, batch["completion_mask"].bool(), mask


def scoring_mask(batch: dict, leading_sequences: int | None = None) -> torch.Tensor:
    """Every real token after the first of its sequence (prompt and completion): ORPO's NLL scope.

    With ``leading_sequences=k`` only the batch's first k sequences (the chosen ones of a preference batch) are
    scored whole; the others keep their completion mask, so the LM head skips the rejected prompts that no term
    reads.
    """
    packed = "seq_lengths" in batch
    if packed:
        full = batch["position_ids"] > 0
    else:
        full = batch["attention_mask"].bool().clone()
        full[:, 0] = False
    if leading_sequences is None:
        return full
    lead = torch.zeros_like(full)
    if packed:
        lead[:, : int(batch["seq_lengths"][:leading_sequences].sum())] = True
    else:
        lead[:leading_sequences] = True
    return torch.where(lead, full, full & batch["completion_mask"].bool())
