"""IFT's adapter: a Hugging Face causal LM seen as an :class:`~mdpalign.policies.EmbeddingPolicy`.

:func:`~mdpalign.objectives.ift_two_pass` feeds ``inputs_embeds`` (the fused embeddings of its second pass), so
the model must expose its input embeddings and accept them: :func:`check_embedding_access` says so before
training starts, :class:`CausalLMEmbeddingPolicy` implements the protocol and its two optional hooks.
"""
from __future__ import annotations

import inspect

import torch

from mdpalign.errors import MdpalignError


class UnsupportedModelError(MdpalignError, ValueError):
    """The model cannot run the chosen objective (e.g. IFT without reachable input embeddings)."""


def check_embedding_access(model) -> None:
    """IFT feeds ``inputs_embeds``: the model must expose ``get_input_embeddings()`` and accept them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    try:
        emb = base.get_input_embeddings()
    except (NotImplementedError, AttributeError) as err:
        raise UnsupportedModelError(
            f"objective 'ift' needs the input embeddings, but {name}.get_input_embeddings() failed: {err!r}"
        ) from None
    if not isinstance(emb, torch.nn.Module):
        raise UnsupportedModelError(
            f"objective 'ift' needs the input embeddings; {name}.get_input_embeddings() returned {emb!r}"
        )
    params = inspect.signature(type(base).forward).parameters
    if "inputs_embeds" not in params:
        raise UnsupportedModelError(f"objective 'ift' needs a forward accepting inputs_embeds; {name}.forward does not")


class CausalLMEmbeddingPolicy:
    """The EmbeddingPolicy protocol (``embed`` / ``forward_embeds``) over a (wrapped) HF causal LM, with the optional
    hooks ``greedy_from_embeds`` / ``token_logps_from_embeds`` that :func:`~mdpalign.objectives.ift_two_pass` uses:
    both go through the model's patched forward (:func:`~mdpalign.llm_bridge.logps.install_logps_forward`), so the
    LM head runs ``chunk_size`` positions at a time (argmax under no_grad; target log-probs upcast per chunk and
    recomputed in backward) and no (B, T, vocab) fp32 logits are ever held."""

    def __init__(self, model, embeddings: torch.nn.Module, chunk_size: int = 1024):
        self.model, self.embeddings, self.chunk_size = model, embeddings, int(chunk_size)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(ids)

    def forward_embeds(self, embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        # fp32 so the objectives' log_softmax is not done in bf16 (full logits: only for callers without the hooks)
        return self.model(inputs_embeds=embeds, use_cache=False, **kwargs).logits.float()

    # the embedding recipe runs inside the model's forward (build_inputs_embeds), where FSDP2 has the whole table
    def greedy_from_embeds(self, build_embeds, **kwargs) -> torch.Tensor:
        return self.model(build_inputs_embeds=build_embeds, greedy_mask=True, logps_chunk_size=self.chunk_size,
                          **kwargs).greedy

    def token_logps_from_embeds(self, build_embeds, targets: torch.Tensor, mask: torch.Tensor,
                                **kwargs) -> torch.Tensor:
        return self.model(build_inputs_embeds=build_embeds, score_mask=mask, score_targets=targets,
                          score_layout="target", logps_chunk_size=self.chunk_size, **kwargs).token_logps
