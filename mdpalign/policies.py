"""Small differentiable policies for the exact testbeds, and the EmbeddingPolicy protocol IFT needs.

Every policy maps integer inputs (states / contexts / prefixes) to logits over actions and exposes

* ``log_probs(states) -> (..., A)`` and ``token_logps(states, actions) -> (...)``: what the objectives consume;
* ``embed(states) -> (..., D)`` and ``forward_embeds(embeds) -> (..., A)``: the :class:`EmbeddingPolicy` protocol,
  which lets IFT feed the fused input ``(1−λ)·e(s) + λ·e(ŝ)``. A fusion with ``λ = 0`` reproduces the plain
  forward pass bit for bit (MLPPolicy runs ``log_probs`` through the same two calls; TabularPolicy indexes, and a
  one-hot matmul gives the same numbers exactly — tested). Policies over a huge action space (an LLM's vocabulary)
  may add the optional hooks ``greedy_from_embeds`` / ``token_logps_from_embeds`` (:class:`EmbeddingPolicyHooks`)
  so IFT never materialises full logits.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from mdpalign.errors import MdpalignError

__all__ = ["EmbeddingPolicy", "EmbeddingPolicyHooks", "TabularPolicy", "MLPPolicy", "PolicyInputError"]


class PolicyInputError(MdpalignError, ValueError):
    """A policy received ids out of range, a wrong dtype, or a missing class label."""


@runtime_checkable
class EmbeddingPolicy(Protocol):
    """What IFT's two-pass driver needs: ``embed(inputs) -> (…, D)`` and ``forward_embeds(embeds, **kw) ->
    logits (…, A)``. For a Hugging Face causal LM the adapter is ``model.get_input_embeddings()(ids)`` and
    ``model(inputs_embeds=embeds, **kw).logits``.

    Optional hooks (:class:`EmbeddingPolicyHooks`; not members of this protocol, so the tabular and MLP policies,
    which do not have them, still satisfy it). A policy whose action space is too large for full (B, T, A) logits —
    a language model's vocabulary — provides them, and :func:`mdpalign.objectives.ift_two_pass` then calls them
    instead of ``forward_embeds``:

    * ``greedy_from_embeds(build_embeds, **kw) -> (B, T)`` int64: ``argmax_a`` of the logits at every position
      (IFT's pass 1; called under ``torch.no_grad``);
    * ``token_logps_from_embeds(build_embeds, targets, mask, **kw) -> (B, T)``: ``log softmax(logits)[targets]``
      where ``mask`` (B, T) bool is true, exactly 0 elsewhere, differentiable (IFT's pass 2); ``targets[:, t]`` is
      the action scored with the logits of position t (no shift).

    ``build_embeds(embed) -> (B, T, D)`` is the recipe for the input embeddings: the hook calls it with its own
    ``ids -> embeddings`` lookup (usually ``self.embed``), where that lookup is valid — a sharded model (FSDP2)
    holds its whole embedding table only inside its forward, so the LLM adapter runs the recipe there. With
    ``embeds = build_embeds(self.embed)`` the hooks must equal ``forward_embeds(embeds, **kw).argmax(-1)`` and
    ``token_logps_from_logits(forward_embeds(embeds, **kw), targets, mask)`` up to rounding; the ``kw`` are the
    same forward keywords. The LLM adapter (``mdpalign.llm_bridge.trainer``) implements them with the chunked LM
    head of ``mdpalign.llm_bridge.logps``.
    """

    def embed(self, inputs: torch.Tensor) -> torch.Tensor: ...

    def forward_embeds(self, embeds: torch.Tensor, **kwargs) -> torch.Tensor: ...


BuildEmbeds = Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
"""``build_embeds(embed)``: input embeddings (B, T, D) built from an ``ids -> embeddings`` lookup ``embed``."""


@runtime_checkable
class EmbeddingPolicyHooks(Protocol):
    """The optional large-action-space hooks of an :class:`EmbeddingPolicy` (see there)."""

    def greedy_from_embeds(self, build_embeds: "BuildEmbeds", **kwargs) -> torch.Tensor: ...

    def token_logps_from_embeds(self, build_embeds: "BuildEmbeds", targets: torch.Tensor, mask: torch.Tensor,
                                **kwargs) -> torch.Tensor: ...


def _check_ids(name: str, ids: torch.Tensor, upper: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise PolicyInputError(f"{name} must be integer ids, got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        bad = ((ids < 0) | (ids >= upper)).nonzero()[0].tolist()
        raise PolicyInputError(f"{name} out of range [0, {upper}) at index {tuple(bad)}: {int(ids[tuple(bad)])}")
    return ids.long()


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Seed torch's CPU generator for parameter creation without disturbing the caller's global RNG stream."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


class TabularPolicy(nn.Module):
    """One logit per (state, action): ``pi(a|s) = softmax(θ_s)_a``, ``θ`` an ``(S, A)`` ``nn.Parameter``.

    ``init_scale = 0`` starts uniform (the safe start for L-BFGS, see THEORY.md "optimiser hygiene");
    ``init_scale > 0`` draws ``θ ~ N(0, init_scale²)`` from ``seed``. ``embed`` is one-hot (D = S) and
    ``forward_embeds(e) = e @ θ``, so a fused input gives the logits ``(1−λ)θ_s + λθ_ŝ``.
    """

    def __init__(self, n_states: int, n_actions: int, init_scale: float = 0.0, dtype: torch.dtype = torch.float64,
                 seed: int | None = None, logits: torch.Tensor | None = None):
        super().__init__()
        try:
            sizes_ok = int(n_states) >= 1 and int(n_actions) >= 1
        except (TypeError, ValueError):  # not numbers at all: name them, not int()'s complaint
            sizes_ok = False
        if not sizes_ok:
            raise PolicyInputError(f"n_states and n_actions must be integers >= 1, got {n_states!r}, {n_actions!r}")
        try:
            scale_ok = float(init_scale) >= 0.0
        except (TypeError, ValueError):
            scale_ok = False
        if not scale_ok:
            raise PolicyInputError(f"init_scale must be >= 0, got {init_scale!r}")
        self.n_states, self.n_actions = int(n_states), int(n_actions)
        if logits is not None:
            init = torch.as_tensor(logits, dtype=dtype).clone()
            if init.shape != (self.n_states, self.n_actions):
                raise PolicyInputError(f"logits must have shape ({n_states}, {n_actions}), got {tuple(init.shape)}")
        elif init_scale > 0:
            gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
            init = init_scale * torch.randn(self.n_states, self.n_actions, generator=gen, dtype=dtype)
        else:
            init = torch.zeros(self.n_states, self.n_actions, dtype=dtype)
        self.logits = nn.Parameter(init)

    def embed(self, states: torch.Tensor) -> torch.Tensor:
        s = _check_ids("states", states, self.n_states)
        return torch.nn.functional.one_hot(s, self.n_states).to(self.logits.dtype)

    def forward_embeds(self, embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs:
            raise PolicyInputError(f"TabularPolicy.forward_embeds takes no keyword arguments, got {sorted(kwargs)}")
        return embeds @ self.logits

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Logits ``θ_s`` -> ``(..., A)`` (an index, identical to ``forward_embeds(embed(states))``)."""
        return self.logits[_check_ids("states", states, self.n_states)]

    def log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """``log pi(·|s)`` -> ``(..., A)``."""
        return torch.log_softmax(self(states), dim=-1)

    def token_logps(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s)`` elementwise -> shape of ``states``."""
        a = _check_ids("actions", actions, self.n_actions)
        lp = self.log_probs(states)
        if a.shape != lp.shape[:-1]:
            raise PolicyInputError(f"actions shape {tuple(a.shape)} differs from states shape {tuple(lp.shape[:-1])}")
        return lp.gather(-1, a.unsqueeze(-1)).squeeze(-1)

    def probs(self) -> torch.Tensor:
        """The full table ``pi(a|s)`` -> ``(S, A)``."""
        return torch.softmax(self.logits, dim=-1)

    def log_probs_table(self) -> torch.Tensor:
        """``log pi(a|s)`` for every state -> ``(S, A)``."""
        return torch.log_softmax(self.logits, dim=-1)


class MLPPolicy(nn.Module):
    """Two-layer policy ``logits = W2·act(W1·[e(s); onehot(c)] + b1) + b2``.

    ``input="onehot"``: ``e(s)`` is the one-hot of s (D = n_inputs), so the columns of ``W1`` *are* the state
    embeddings and IFT's fused input ``(1−λ)onehot(s) + λ·onehot(ŝ)`` is exactly embedding fusion.
    ``input="embedding"``: a learned ``nn.Embedding(n_inputs, embed_dim)``.
    ``n_classes > 0`` adds a one-hot class input (C-RLFT's class-conditioned policy); ``classes=`` is then required.
    Parameters are drawn with PyTorch's default initialisation under ``seed`` (the global RNG is left untouched).
    """

    def __init__(self, n_inputs: int, n_actions: int, hidden: int = 64, input: str = "onehot", n_classes: int = 0,
                 embed_dim: int | None = None, activation: str = "tanh", seed: int | None = 0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        if input not in ("onehot", "embedding"):
            raise PolicyInputError(f"input must be 'onehot' or 'embedding', got {input!r}")
        if activation not in ("tanh", "relu"):
            raise PolicyInputError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        if min(int(n_inputs), int(n_actions), int(hidden)) < 1 or int(n_classes) < 0:
            raise PolicyInputError(f"need n_inputs, n_actions, hidden >= 1 and n_classes >= 0; got {n_inputs}, "
                                   f"{n_actions}, {hidden}, {n_classes}")
        self.n_inputs, self.n_actions = int(n_inputs), int(n_actions)
        self.hidden, self.n_classes = int(hidden), int(n_classes)
        self.n_states = self.n_inputs
        self.input, self.activation = input, activation
        with _seeded(seed):
            if input == "embedding":
                self.embed_dim = int(embed_dim) if embed_dim is not None else self.hidden
                self.embedding = nn.Embedding(self.n_inputs, self.embed_dim, dtype=dtype)
            else:
                if embed_dim is not None:
                    raise PolicyInputError("embed_dim applies only to input='embedding'")
                self.embed_dim = self.n_inputs
                self.embedding = None
            self.layer1 = nn.Linear(self.embed_dim + self.n_classes, self.hidden, dtype=dtype)
            self.layer2 = nn.Linear(self.hidden, self.n_actions, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.layer1.weight.dtype

    def embed(self, states: torch.Tensor) -> torch.Tensor:
        s = _check_ids("states", states, self.n_inputs)
        if self.embedding is not None:
            return self.embedding(s)
        return torch.nn.functional.one_hot(s, self.n_inputs).to(self.dtype)

    def forward_embeds(self, embeds: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            if classes is None:
                raise PolicyInputError(f"this MLPPolicy is class-conditioned (n_classes={self.n_classes}); pass "
                                       f"classes=")
            c = _check_ids("classes", classes, self.n_classes)
            c = torch.broadcast_to(c, embeds.shape[:-1]) if c.shape != embeds.shape[:-1] else c
            embeds = torch.cat([embeds, torch.nn.functional.one_hot(c, self.n_classes).to(embeds.dtype)], dim=-1)
        elif classes is not None:
            raise PolicyInputError("classes= given to an MLPPolicy built with n_classes=0")
        h = self.layer1(embeds)
        h = torch.tanh(h) if self.activation == "tanh" else torch.relu(h)
        return self.layer2(h)

    def forward(self, states: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embeds(self.embed(states), classes=classes)

    def log_probs(self, states: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self(states, classes), dim=-1)

    def token_logps(self, states: torch.Tensor, actions: torch.Tensor,
                    classes: torch.Tensor | None = None) -> torch.Tensor:
        a = _check_ids("actions", actions, self.n_actions)
        lp = self.log_probs(states, classes)
        if a.shape != lp.shape[:-1]:
            raise PolicyInputError(f"actions shape {tuple(a.shape)} differs from states shape {tuple(lp.shape[:-1])}")
        return lp.gather(-1, a.unsqueeze(-1)).squeeze(-1)

    def sequence_logits(self, states: torch.Tensor, sequence_classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at padded sequences of states ``(B, T)`` -> ``(B, T, A)``, ``sequence_classes`` ``(B,)`` one class
        per sequence (a class-conditioned policy scores a whole demonstration under its label). With 1-D ``states``
        ``(B,)`` the classes are per state, as in :meth:`forward`."""
        if sequence_classes is not None:
            c = torch.as_tensor(sequence_classes)
            if states.ndim == 2:
                if c.shape != states.shape[:1]:
                    raise PolicyInputError(f"sequence_classes must have shape {tuple(states.shape[:1])} (one per "
                                           f"sequence), got {tuple(c.shape)}")
                c = c[:, None].expand_as(states)
            return self.forward_embeds(self.embed(states), classes=c)
        return self.forward_embeds(self.embed(states))

    def logits_table(self, classes: torch.Tensor | int | None = None) -> torch.Tensor:
        """Logits at every input id -> ``(n_inputs, A)``; ``classes`` an int or (n_inputs,) ids."""
        states = torch.arange(self.n_inputs)
        c = None if classes is None else torch.as_tensor(classes).expand(self.n_inputs)
        return self(states, c)

    def log_probs_table(self, classes: torch.Tensor | int | None = None) -> torch.Tensor:
        """``log pi(a|s[, c])`` for every input id -> ``(n_inputs, A)``; ``classes`` an int or (n_inputs,) ids."""
        return torch.log_softmax(self.logits_table(classes), dim=-1)

    def probs(self, classes: torch.Tensor | int | None = None) -> torch.Tensor:
        """The table ``pi(a|s[, c])`` -> ``(n_inputs, A)`` (a softmax of the logits, like TabularPolicy.probs)."""
        return torch.softmax(self.logits_table(classes), dim=-1)
