"""Intuitive Fine-Tuning (IFT, arXiv 2405.11870): temporal residual connection + relation propagation.

Reference code: github.com/TsinghuaC3I/Intuitive-Fine-Tuning (``src/trainers.py``, ``get_batch_metrics`` with
``loss.name == 'ift'`` and ``get_cumsum_weight``; config ``config/loss/ift.yaml``: lambda 0.2, gamma 0.95,
propagation_type ``loss``, side ``left``, norm ``L1``). What it computes, per sequence:

1. pass 1 (no grad): logits from the ground-truth inputs; ŷ_j = argmax of the logits at position j−1;
2. pass 2: inputs_embeds = (1−λ)·e(y_j) + λ·e(ŷ_j) at completion positions (prompt positions keep e(y_j));
   l_t = −log pi(y_t | fused prefix);
3. v_t = Σ_{k≥t} γ^{k−t} l_k over completion tokens (a reverse discounted cumulative sum; the code divides l by the
   token count first, which cancels below), **not detached**; weights w_t = v_t·n/Σ_t v_t;
4. loss = Σ_t l_t·w_t / n = Σ_t l_t·v_t / Σ_t v_t; batch mean of that.
   For γ = 0 the code returns weights of 1 (special case), i.e. exactly the per-sequence mean NLL — note that the
   formula's limit γ → 0⁺ is Σ l² / Σ l instead; we follow the code.

The paper's Eq. 21 writes the undiscounted double sum −Σ_n Σ_{i≥n} log T(...), which is linear in l (no ratio).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from mdpalign.checks import check_unit_interval
from mdpalign.objectives.common import (
    ObjectiveArgumentError,
    ShapeError,
    as_bool_mask,
    check_token_inputs,
    masked_token_values,
    token_logps_from_logits,
)
from mdpalign.objectives.sft import sft_pieces

if TYPE_CHECKING:  # pragma: no cover - typing only, keeps objectives free of a runtime policies import
    from mdpalign.policies import EmbeddingPolicy

__all__ = [
    "IFT_DEFAULT_DECAY",
    "IFT_DEFAULT_LAMBDA",
    "IFT_FORMS",
    "IFTOutput",
    "IFTTwoPass",
    "fuse_embeddings",
    "propagation_weights",
    "ift_loss",
    "ift_two_pass",
    "causal_predicted_inputs",
    "successor_predicted_inputs",
    "successor_from_table",
    "shift_mask_to_inputs",
]

IFT_FORMS = ("reference", "paper")

#: The paper's λ (embedding-fusion weight) and γ (propagation discount), appendix B.1 and the reference code's
#: ``config/loss/ift.yaml``: the one default of every layer (bench, llm_bridge).
IFT_DEFAULT_LAMBDA = 0.2
IFT_DEFAULT_DECAY = 0.95


#: Positions per block of the propagation-weight recursion (see :func:`propagation_weights`).
_PROPAGATION_BLOCK = 128

def fuse_embeddings(
    true_embeds: torch.Tensor, pred_embeds: torch.Tensor, mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """Temporal residual connection: ``(1−λ)·e(y) + λ·e(ŷ)`` where ``mask`` (B, T) is true, ``e(y)`` unchanged
    elsewhere -> ``(B, T, D)``.

    ``mask`` marks the *input* positions to fuse (for a causal LM: completion tokens among the inputs; see
    :func:`shift_mask_to_inputs`). ``λ ∈ [0, 1]``; at ``λ = 0`` the output equals ``true_embeds`` exactly.
    """
    lam = check_unit_interval(lam, "lam", error=ObjectiveArgumentError)
    if true_embeds.shape != pred_embeds.shape:
        raise ShapeError(
            f"pred_embeds shape {tuple(pred_embeds.shape)} differs from true_embeds {tuple(true_embeds.shape)}"
        )
    m = as_bool_mask(mask, "mask")
    if m.shape != true_embeds.shape[:-1]:
        raise ShapeError(
            f"mask must have shape {tuple(true_embeds.shape[:-1])} (embeds without last dim), got {tuple(m.shape)}"
        )
    fused = (1.0 - lam) * true_embeds + lam * pred_embeds
    return torch.where(m.unsqueeze(-1), fused, true_embeds)


def propagation_weights(token_nll: torch.Tensor, mask: torch.Tensor, decay: float = IFT_DEFAULT_DECAY,
                        detach: bool = False) -> torch.Tensor:
    """Relation propagation: ``v_t = Σ_{k≥t, m_k} decay^{k−t} l_k`` at counted positions, 0 elsewhere -> ``(B, T)``.

    Exponents count positions (not counted tokens), as the reference's discounted cumsum does after zeroing
    non-completion positions. This is the backward recursion ``v_t = m_t l_t + decay·v_{t+1}``, evaluated in
    blocks of ``_PROPAGATION_BLOCK`` positions: inside a block one triangular matrix product with
    ``decay^{k−t}`` (exponents below the block size, so nothing under- or overflows), across blocks the
    recursion carries one value per block. A long sequence thus costs T/128 sequential steps instead of T
    (a per-position Python loop launches T kernels per pass on a GPU).
    ``detach=True`` stops the gradient through ``v`` (the reference code does **not** detach).
    """
    m = check_token_inputs(token_nll, mask, "token_nll")
    decay = check_unit_interval(decay, "decay", error=ObjectiveArgumentError)
    l = masked_token_values(token_nll, m)
    if detach:
        l = l.detach()
    B, T = l.shape
    size = min(_PROPAGATION_BLOCK, T)
    n_blocks = -(-T // size)
    blocks = torch.nn.functional.pad(l, (0, n_blocks * size - T)).reshape(B, n_blocks, size)
    offsets = torch.arange(size, device=l.device)
    gap = (offsets[None, :] - offsets[:, None]).to(l.dtype)  # k − t
    upper = offsets[None, :] >= offsets[:, None]
    powers = torch.where(upper, torch.pow(torch.tensor(decay, dtype=l.dtype, device=l.device), gap.clamp(min=0)),
                         torch.zeros((), dtype=l.dtype, device=l.device))
    inside = blocks @ powers.T  # v restricted to each block: Σ_{k ≥ t, same block} decay^{k−t} l_k
    # v_t also receives decay^{size − t_local} · v(first position of the next block)
    to_next = torch.pow(torch.tensor(decay, dtype=l.dtype, device=l.device), (size - offsets).to(l.dtype))
    out = [None] * n_blocks
    carry = torch.zeros_like(l[:, 0])
    for j in range(n_blocks - 1, -1, -1):
        out[j] = inside[:, j] + to_next * carry[:, None]
        carry = out[j][:, 0]
    v = torch.cat(out, dim=1)[:, :T]
    return masked_token_values(v, m)


class IFTOutput(NamedTuple):
    """losses (B,); weights (B, T) ``w_t = v_t·n / Σ v`` (reference) or ``v_t`` (paper), 0 off-mask;
    nll_mean (B,): the plain per-sequence mean NLL of the same token log-probs (the reference logs it)."""

    losses: torch.Tensor
    weights: torch.Tensor
    nll_mean: torch.Tensor


def ift_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    decay: float = IFT_DEFAULT_DECAY,
    detach_weights: bool = False,
    form: str = "reference",
    check_logps: bool = True,
) -> IFTOutput:
    """IFT loss per sequence from the pass-2 token log-probs (``l_t = −log p_t`` on the fused prefix).

    * ``form="reference"`` (the code): ``L = Σ_t m_t l_t v_t / Σ_t m_t v_t``, ``v`` from
      :func:`propagation_weights`; ``decay = 0`` uses ``v = 1`` as the code does, so ``L = Σ l / n``, exactly
      :func:`~mdpalign.objectives.sft.sft_loss` with ``normalize=True``. A row with ``Σ v = 0`` (all l = 0) gives 0.
    * ``form="paper"`` (Eq. 21, generalised with the discount; the paper's own is ``decay = 1``):
      ``L = Σ_t m_t v_t / Σ_t m_t`` — the double sum ``Σ_n Σ_{i≥n} γ^{i−n} l_i`` divided by the number of counted
      tokens (our normalisation; the paper states none). ``decay = 0`` again gives the per-sequence mean NLL.

    Reduction: none across the batch (the reference takes the mean). Paper: arXiv 2405.11870. Departure of the
    reference from the paper: the ratio form with discount 0.95 and non-detached weights, vs the linear double sum.

    Errors: :class:`~mdpalign.objectives.common.InvalidLogProbError` for a counted log-prob that is nan, ±inf or
    above 0 by more than the rounding tolerance (a negative l_t would make Σ v meaningless); ``check_logps=False``
    skips it. ``decay`` outside [0, 1]; unknown ``form``.
    """
    if form not in IFT_FORMS:
        raise ObjectiveArgumentError(f"unknown form {form!r}; valid: {', '.join(IFT_FORMS)}")
    decay = check_unit_interval(decay, "decay", error=ObjectiveArgumentError)
    m = check_token_inputs(token_logps, mask, check_logps=check_logps)
    nll_sum, count = sft_pieces(token_logps, m, check_logps=False)  # checked above
    nll_mean = nll_sum / count
    if decay == 0.0:
        return IFTOutput(nll_mean, m.to(token_logps.dtype), nll_mean)
    l = masked_token_values(-token_logps, m)
    v = propagation_weights(l, m, decay=decay, detach=detach_weights)
    if form == "paper":
        return IFTOutput(v.sum(-1) / count, v, nll_mean)
    den = v.sum(-1)
    # only an exact 0 is special-cased: a nan (check_logps=False on bad input) must reach the loss, not become 0
    zero = den == 0
    safe_den = torch.where(zero, torch.ones_like(den), den)
    losses = torch.where(zero, torch.zeros_like(den), (l * v).sum(-1) / safe_den)
    weights = v * (count / safe_den).unsqueeze(-1)
    return IFTOutput(losses, weights, nll_mean)


# ---------------------------------------------------------------------------------------------------------------
# The two-pass driver for any EmbeddingPolicy (tabular, MLP, transformer adapter).

PredictedInputs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal_predicted_inputs(greedy: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Causal LM: the predicted input at position j is the greedy token of position j−1 (``ŷ_j = argmax logits_{j−1}``);
    position 0 keeps its true input. ``greedy``/``inputs``: (B, T) ids."""
    return torch.cat([inputs[:, :1], greedy[:, :-1].to(inputs.dtype)], dim=1)


def successor_predicted_inputs(successor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> PredictedInputs:
    """Sequential MDP (token tree, Frozen Lake): ``ŝ_t = successor(s_{t−1}, ŷ_{t−1})`` for t ≥ 1, ``ŝ_0 = s_0``.

    ``successor(states, actions)`` maps id tensors of equal shape to next-state ids (for a token tree: the child
    prefix; for Frozen Lake: where the greedy action leads — for a slippery lake the caller picks, e.g. the intended
    direction). Padding positions are passed too; the successor must accept any in-range state/action.
    """

    def predicted(greedy: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        nxt = successor(inputs[:, :-1], greedy[:, :-1]).to(inputs.dtype)
        return torch.cat([inputs[:, :1], nxt], dim=1)

    return predicted


def successor_from_table(next_state: torch.Tensor) -> PredictedInputs:
    """:func:`successor_predicted_inputs` for a deterministic next-state table ``next_state[s, a]`` (S, A) of ids."""
    table = torch.as_tensor(next_state)
    if table.ndim != 2 or table.is_floating_point():
        raise ShapeError(
            f"next_state must be an integer (S, A) table, got shape {tuple(table.shape)}, dtype {table.dtype}"
        )
    return successor_predicted_inputs(lambda s, a: table.to(s.device)[s.long(), a.long()])


def shift_mask_to_inputs(mask: torch.Tensor) -> torch.Tensor:
    """Input positions to fuse from a target mask: input j is fused iff target j−1 counts (for a causal LM: iff
    input j is a completion token; for a trajectory: iff s_j was reached by a counted action). Position 0 never."""
    m = as_bool_mask(mask, "mask")
    return torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)


class IFTTwoPass(NamedTuple):
    """token_logps (B, T) pass-2 log-probs of the targets (0 off-mask), with grad; predicted_inputs (B, T) ids;
    fuse_mask (B, T) bool; greedy (B, T) pass-1 argmax ids."""

    token_logps: torch.Tensor
    predicted_inputs: torch.Tensor
    fuse_mask: torch.Tensor
    greedy: torch.Tensor


def ift_two_pass(
    policy: "EmbeddingPolicy",
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    predicted_inputs: PredictedInputs = causal_predicted_inputs,
    fuse_mask: torch.Tensor | None = None,
    **forward_kwargs,
) -> IFTTwoPass:
    """Run IFT's two passes through any :class:`~mdpalign.policies.EmbeddingPolicy`.

    ``inputs`` (B, T) ids fed at each position (states s_t, or tokens y_j); ``targets`` (B, T) the ids scored at each
    position (actions a_t, or next tokens y_{j+1}); ``mask`` (B, T) the counted targets.

    pass 1 (``torch.no_grad``): ``logits = forward_embeds(embed(inputs))``, ``greedy = argmax``;
    ``ŝ = predicted_inputs(greedy, inputs)`` (default: causal shift; :func:`successor_predicted_inputs` for MDPs);
    pass 2: ``fused = fuse_embeddings(embed(inputs), embed(ŝ), fuse_mask, lam)`` and the target log-probs of
    ``forward_embeds(fused)``. ``fuse_mask`` defaults to :func:`shift_mask_to_inputs` (mask). ``forward_kwargs``
    (attention_mask, classes, ...) go to both passes. Feed the result to :func:`ift_loss`.

    Optional hooks (see :class:`~mdpalign.policies.EmbeddingPolicy`): when the policy has
    ``greedy_from_embeds(build_embeds, **kw)`` pass 1 takes ``greedy`` from it instead of the argmax of full logits,
    and when it has ``token_logps_from_embeds(build_embeds, targets, mask, **kw)`` pass 2 takes the target
    log-probs from it instead of :func:`~mdpalign.objectives.common.token_logps_from_logits` on
    ``forward_embeds(fused)`` (each hook is used on its own when present). A hook gets the *recipe* for its input
    embeddings, ``build_embeds(embed) -> (B, T, D)`` (pass 1: ``embed(inputs)``; pass 2: the fusion above), and
    calls it with its own id -> embedding lookup wherever the lookup is valid — a model sharded by FSDP holds its
    whole embedding table only inside its forward. The result is the same up to rounding; the hooks let a
    language model compute both without its (B, T, vocab) logits (the LLM adapter chunks the LM head). Their
    outputs are checked for shape (B, T).
    """
    lam = check_unit_interval(lam, "lam", error=ObjectiveArgumentError)
    m = as_bool_mask(mask, "mask")
    if inputs.shape != targets.shape or m.shape != targets.shape:
        raise ShapeError(
            f"inputs {tuple(inputs.shape)}, targets {tuple(targets.shape)} and mask {tuple(m.shape)} must share one "
            "(B, T) shape"
        )
    fm = shift_mask_to_inputs(m) if fuse_mask is None else as_bool_mask(fuse_mask, "fuse_mask")
    if fm.shape != m.shape:
        raise ShapeError(f"fuse_mask must have shape {tuple(m.shape)}, got {tuple(fm.shape)}")
    with torch.no_grad():
        if hasattr(policy, "greedy_from_embeds"):
            greedy = policy.greedy_from_embeds(lambda embed: embed(inputs), **forward_kwargs)
        else:
            greedy = policy.forward_embeds(policy.embed(inputs), **forward_kwargs).argmax(dim=-1)
        if greedy.shape != inputs.shape:
            raise ShapeError(f"pass 1 gave greedy ids of shape {tuple(greedy.shape)}, expected {tuple(inputs.shape)}")
        pred = predicted_inputs(greedy, inputs)
    if pred.shape != inputs.shape:
        raise ShapeError(f"predicted_inputs returned shape {tuple(pred.shape)}, expected {tuple(inputs.shape)}")
    # Where no fusion happens keep the true input, so the predicted id is never embedded out of context.
    pred = torch.where(fm, pred, inputs)
    def build_fused(embed):
        return fuse_embeddings(embed(inputs), embed(pred), fm, lam)

    if hasattr(policy, "token_logps_from_embeds"):
        token_logps = policy.token_logps_from_embeds(build_fused, targets, m, **forward_kwargs)
        if token_logps.shape != m.shape:
            raise ShapeError(
                f"token_logps_from_embeds returned shape {tuple(token_logps.shape)}, expected {tuple(m.shape)}"
            )
    else:
        token_logps = token_logps_from_logits(policy.forward_embeds(build_fused(policy.embed), **forward_kwargs),
                                              targets, m)
    return IFTTwoPass(token_logps, pred, fm, greedy)
