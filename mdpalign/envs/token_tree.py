"""Token trees: a response is a token sequence, and its prefixes are the states of an MDP.

Following Rafailov et al., *From r to Q\\*: Your Language Model is Secretly a Q-Function*
(arXiv 2404.12358): one prompt (the root), a vocabulary of ``vocab_size`` tokens, responses of
at most ``max_length`` tokens, a sequence-level reward r(y) and a reference policy
pi_ref(a | prefix). With per-token KL to pi_ref at strength beta the soft values satisfy

    V(complete y) = r(y)
    V(s)          = beta · log sum_a pi_ref(a | s) · exp(V(s·a) / beta)
    pi*(a | s)    = pi_ref(a | s) · exp((V(s·a) − V(s)) / beta)

and the product telescopes: pi*(y) = pi_ref(y) · exp(r(y)/beta) / Z, V(root) = beta · log Z
with Z = E_{y ~ pi_ref}[exp(r(y)/beta)] (:meth:`TokenTree.log_partition`).

Conventions
-----------
* **EOS is a token of the response.** Stopping is a decision the policy takes, so log pi(y)
  includes log pi(EOS | prefix), and a sequence ``(a, b, EOS)`` has 3 tokens.
* **At ``max_length`` a sequence is complete without EOS** (truncation): the prefix reached after
  ``max_length`` non-EOS tokens is a leaf. A sequence ending in EOS may be shorter.
* ``eos=None``: no stop token; every response has exactly ``max_length`` tokens.
* Prefixes (the empty root included) are indexed 0..n_prefixes−1 in breadth-first order: by
  depth, then by parent index, then by token, so ``parent[i] < i``. Complete prefixes (the
  leaves) are numbered 0..n_leaves−1 in the same order.

Counts, with m = vocab_size − 1 non-EOS tokens: incomplete prefixes sum_{d<L} m^d; leaves
sum_{d=1..L} m^(d−1) (ending in EOS) + m^L (truncated); n_prefixes = 1 + V · (incomplete).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from mdpalign.errors import MdpalignError
from mdpalign.mdp import TabularMDP

__all__ = ["InvalidTokenTreeError", "TokenTree", "TokenPaths", "random_token_tree", "token_tree_counts"]

#: Refuse to build trees larger than this many prefixes (memory: ~8·(V+4) bytes per prefix).
MAX_PREFIXES = 50_000_000
#: Above this many prefixes ``to_mdp`` stores P sparse.
_DENSE_LIMIT = 1024


class InvalidTokenTreeError(MdpalignError, ValueError):
    """Bad token-tree sizes, arrays or token sequences; the message says which."""


class TokenPaths(NamedTuple):
    """Per-leaf token paths, right-padded: ``states[n, t]`` is the prefix from which token
    ``actions[n, t]`` is emitted; ``mask[n, t]`` is False on padding (where states/actions are 0).
    All ``(n_leaves, max_length)``; ``log_probs[states, actions] * mask`` summed over t is the
    sequence log-probability."""

    states: np.ndarray
    actions: np.ndarray
    mask: np.ndarray


def token_tree_counts(vocab_size: int, max_length: int, eos: int | None = 0) -> tuple[int, int]:
    """Closed-form ``(n_prefixes, n_leaves)`` of a tree (see the module docstring)."""
    V, L = int(vocab_size), int(max_length)
    m = V - 1 if eos is not None else V
    incomplete = sum(m ** d for d in range(L))
    leaves = (sum(m ** (d - 1) for d in range(1, L + 1)) if eos is not None else 0) + m ** L
    return 1 + V * incomplete, leaves


@dataclass(frozen=True, eq=False)
class TokenTree:
    """All responses over a vocabulary up to a maximum length, as a tree of prefixes.

    Parameters
    ----------
    vocab_size, max_length:
        V >= 2 tokens, responses of at most L >= 1 tokens.
    eos:
        The stop token (default 0), or ``None`` for fixed-length responses.
    leaf_rewards:
        Sequence-level reward r(y) per leaf, ``(n_leaves,)``; default 0.
    ref_logits:
        Logits of pi_ref at each prefix, ``(n_prefixes, V)``; default 0 (uniform). Rows of
        complete prefixes are unused and stored as 0.

    Structure arrays (read-only, int64 unless said): ``parent`` (−1 at the root), ``depth``,
    ``last_token`` (−1 at the root), ``children (n_prefixes, V)`` (−1 at complete prefixes),
    ``is_complete`` (bool), ``leaf_prefixes (n_leaves,)`` and ``leaf_index (n_prefixes,)``
    (−1 at incomplete prefixes).
    """

    vocab_size: int
    max_length: int
    eos: int | None = 0
    leaf_rewards: np.ndarray | None = None
    ref_logits: np.ndarray | None = None
    parent: np.ndarray = field(init=False, repr=False)
    depth: np.ndarray = field(init=False, repr=False)
    last_token: np.ndarray = field(init=False, repr=False)
    children: np.ndarray = field(init=False, repr=False)
    is_complete: np.ndarray = field(init=False, repr=False)
    leaf_prefixes: np.ndarray = field(init=False, repr=False)
    leaf_index: np.ndarray = field(init=False, repr=False)
    _level_starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        V, L, eos = self.vocab_size, self.max_length, self.eos
        if not isinstance(V, (int, np.integer)) or V < 2:
            raise InvalidTokenTreeError(f"vocab_size must be an integer >= 2; got {V!r}")
        if not isinstance(L, (int, np.integer)) or L < 1:
            raise InvalidTokenTreeError(f"max_length must be an integer >= 1; got {L!r}")
        if eos is not None and not (isinstance(eos, (int, np.integer)) and 0 <= eos < V):
            raise InvalidTokenTreeError(f"eos must be a token in [0, {V}) or None; got {eos!r}")
        V, L = int(V), int(L)
        n, n_leaves = token_tree_counts(V, L, eos)
        if n > MAX_PREFIXES:
            raise InvalidTokenTreeError(
                f"a tree with vocab_size={V}, max_length={L} has {n:,} prefixes, more than {MAX_PREFIXES:,}"
            )
        parent = np.full(n, -1, dtype=np.int64)
        depth = np.zeros(n, dtype=np.int64)
        last = np.full(n, -1, dtype=np.int64)
        children = np.full((n, V), -1, dtype=np.int64)
        complete = np.zeros(n, dtype=bool)
        level = np.zeros(1, dtype=np.int64)  # incomplete prefixes at the current depth
        starts = [0]
        nxt = 1
        for d in range(L):
            ids = nxt + np.arange(level.size * V, dtype=np.int64)
            children[level] = ids.reshape(level.size, V)
            tokens = np.tile(np.arange(V, dtype=np.int64), level.size)
            parent[ids] = np.repeat(level, V)
            depth[ids] = d + 1
            last[ids] = tokens
            done = np.full(ids.size, d + 1 == L) if eos is None else (tokens == eos) | (d + 1 == L)
            complete[ids] = done
            level = ids[~done]
            starts.append(nxt)
            nxt += ids.size
        starts.append(nxt)
        assert nxt == n
        leaves = np.flatnonzero(complete)
        assert leaves.size == n_leaves
        leaf_index = np.full(n, -1, dtype=np.int64)
        leaf_index[leaves] = np.arange(leaves.size)

        if self.leaf_rewards is None:
            rewards = np.zeros(n_leaves)
        else:
            rewards = np.array(self.leaf_rewards, dtype=np.float64)
            if rewards.shape != (n_leaves,):
                raise InvalidTokenTreeError(
                    f"leaf_rewards must have shape ({n_leaves},) (one per leaf); got {rewards.shape}"
                )
            if not np.all(np.isfinite(rewards)):
                raise InvalidTokenTreeError(
                    f"leaf_rewards has non-finite values at leaves {np.flatnonzero(~np.isfinite(rewards))[:5].tolist()}"
                )
        if self.ref_logits is None:
            logits = np.zeros((n, V))
        else:
            logits = np.array(self.ref_logits, dtype=np.float64)
            if logits.shape != (n, V):
                raise InvalidTokenTreeError(
                    f"ref_logits must have shape (n_prefixes, vocab_size) = ({n}, {V}); got {logits.shape}"
                )
            logits[complete] = 0.0
            if not np.all(np.isfinite(logits)):
                raise InvalidTokenTreeError(
                    "ref_logits has non-finite values at (prefix, token) "
                    f"{np.argwhere(~np.isfinite(logits))[:5].tolist()}"
                )
        for name, arr in (("vocab_size", V), ("max_length", L), ("leaf_rewards", rewards), ("ref_logits", logits),
                          ("parent", parent), ("depth", depth), ("last_token", last), ("children", children),
                          ("is_complete", complete), ("leaf_prefixes", leaves), ("leaf_index", leaf_index),
                          ("_level_starts", np.array(starts, dtype=np.int64))):
            if isinstance(arr, np.ndarray):
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ sizes
    @property
    def n_prefixes(self) -> int:
        return self.parent.shape[0]

    @property
    def n_leaves(self) -> int:
        return self.leaf_prefixes.shape[0]

    @property
    def root(self) -> int:
        return 0

    @property
    def ref_log_probs(self) -> np.ndarray:
        """log pi_ref ``(n_prefixes, V)`` (uniform at complete prefixes, where it is unused)."""
        return self.ref_logits - logsumexp(self.ref_logits, axis=1, keepdims=True)

    @property
    def ref_policy(self) -> np.ndarray:
        """pi_ref ``(n_prefixes, V)`` — the ``ref_policy`` argument of a soft solver on :meth:`to_mdp`."""
        return np.exp(self.ref_log_probs)

    def with_rewards(self, leaf_rewards) -> "TokenTree":
        return dataclasses.replace(self, leaf_rewards=leaf_rewards)

    def with_ref_logits(self, ref_logits) -> "TokenTree":
        return dataclasses.replace(self, ref_logits=ref_logits)

    # ------------------------------------------------------------- sequences
    def tokens(self, prefix: int) -> tuple[int, ...]:
        """Token tuple of a prefix index."""
        if not 0 <= prefix < self.n_prefixes:
            raise InvalidTokenTreeError(f"prefix {prefix} outside [0, {self.n_prefixes})")
        out = []
        p = int(prefix)
        while p > 0:
            out.append(int(self.last_token[p]))
            p = int(self.parent[p])
        return tuple(reversed(out))

    def prefix_index(self, tokens: Sequence[int]) -> int:
        """Index of the prefix spelled by ``tokens`` (raises if it runs past a complete prefix)."""
        p = 0
        for t, tok in enumerate(tokens):
            tok = int(tok)
            if not 0 <= tok < self.vocab_size:
                raise InvalidTokenTreeError(
                    f"token {tok} at position {t} is outside the vocabulary [0, {self.vocab_size})"
                )
            if self.is_complete[p]:
                raise InvalidTokenTreeError(
                    f"tokens {tuple(tokens)} continue after the sequence completed at position {t} "
                    f"(by EOS={self.eos} or max_length={self.max_length})"
                )
            p = int(self.children[p, tok])
        return p

    def leaf_token_paths(self) -> TokenPaths:
        """``(states, actions, mask)`` for every leaf, ``(n_leaves, max_length)``, right-padded.

        This is exactly what a tabular policy needs: per-token log-probs
        ``log_probs[states, actions]`` masked by ``mask``."""
        N, T = self.n_leaves, self.max_length
        states = np.zeros((N, T), dtype=np.int64)
        actions = np.zeros((N, T), dtype=np.int64)
        mask = np.zeros((N, T), dtype=bool)
        rows = np.arange(N)
        cur = self.leaf_prefixes.copy()
        for _ in range(T):
            live = cur > 0
            r, c = rows[live], cur[live]
            pos = self.depth[c] - 1
            states[r, pos] = self.parent[c]
            actions[r, pos] = self.last_token[c]
            mask[r, pos] = True
            cur = np.where(live, self.parent[np.maximum(cur, 0)], 0)
        for a in (states, actions, mask):
            a.setflags(write=False)
        return TokenPaths(states, actions, mask)

    def sequences(self) -> list[tuple[int, ...]]:
        """Token tuples of the complete sequences, in leaf order."""
        paths = self.leaf_token_paths()
        return [tuple(int(t) for t in a[m]) for a, m in zip(paths.actions, paths.mask)]

    @property
    def leaf_lengths(self) -> np.ndarray:
        """Number of tokens (EOS included) of each leaf."""
        return self.depth[self.leaf_prefixes]

    # --------------------------------------------------------- log-probabilities
    def _check_log_probs(self, log_probs) -> np.ndarray:
        lp = np.asarray(log_probs, dtype=np.float64)
        if lp.shape != (self.n_prefixes, self.vocab_size):
            raise InvalidTokenTreeError(
                f"log_probs must have shape (n_prefixes, vocab_size) = ({self.n_prefixes}, {self.vocab_size}); got "
                f"{lp.shape}"
            )
        return lp

    def sequence_log_prob(self, log_probs, tokens: Sequence[int]) -> float:
        """log pi(y) = sum_t log_probs[prefix_t, y_t] for a *complete* sequence y (EOS included)."""
        lp = self._check_log_probs(log_probs)
        p = self.prefix_index(tokens)  # validates tokens and vocabulary
        if not self.is_complete[p]:
            raise InvalidTokenTreeError(
                f"tokens {tuple(tokens)} are not a complete sequence: end with EOS={self.eos} or reach "
                f"max_length={self.max_length}"
            )
        total = 0.0
        q = 0
        for tok in tokens:
            total += lp[q, int(tok)]
            q = int(self.children[q, int(tok)])
        return float(total)

    def prefix_log_probs(self, log_probs) -> np.ndarray:
        """log pi(prefix) for every prefix, ``(n_prefixes,)`` (0 at the root)."""
        lp = self._check_log_probs(log_probs)
        out = np.zeros(self.n_prefixes)
        s = self._level_starts
        for d in range(1, len(s) - 1):
            ids = np.arange(s[d], s[d + 1])
            par = self.parent[ids]
            out[ids] = out[par] + lp[par, self.last_token[ids]]
        return out

    def leaf_log_probs(self, log_probs) -> np.ndarray:
        """log pi(y) for every leaf, ``(n_leaves,)``, vectorised."""
        return self.prefix_log_probs(log_probs)[self.leaf_prefixes]

    def log_partition(self, beta: float) -> float:
        """beta · log E_{y ~ pi_ref}[exp(r(y)/beta)] — the soft value of the root (exact, log-space)."""
        if not beta > 0:
            raise InvalidTokenTreeError(f"beta must be positive; got {beta}")
        return float(beta * logsumexp(self.leaf_log_probs(self.ref_log_probs) + self.leaf_rewards / beta))

    # ----------------------------------------------------------------- MDP
    def to_mdp(self, *, sparse: bool | None = None) -> TabularMDP:
        """The tree as an undiscounted MDP (gamma = 1).

        States: the prefixes (complete ones are terminal and absorbing); actions: tokens;
        ``P(child | s, a) = 1``; ``R[s, a] = r(y)`` when the token a completes y = s·a, else 0.
        Soft value iteration with ``ref_policy=self.ref_policy`` at beta gives
        V(root) = :meth:`log_partition`. ``sparse`` defaults to True above 1024 prefixes.
        """
        n, V = self.n_prefixes, self.vocab_size
        nxt = np.where(self.is_complete[:, None], np.arange(n)[:, None], self.children)
        leaf_of_child = np.where(self.children >= 0, self.leaf_index[np.maximum(self.children, 0)], -1)
        R = np.where(leaf_of_child >= 0, self.leaf_rewards[np.maximum(leaf_of_child, 0)], 0.0)
        R[self.is_complete] = 0.0
        flat = sp.csr_matrix((np.ones(n * V), (np.arange(n * V), nxt.ravel())), shape=(n * V, n))
        if sparse is None:
            sparse = n > _DENSE_LIMIT
        P = flat if sparse else flat.toarray().reshape(n, V, n)
        initial = np.zeros(n)
        initial[0] = 1.0
        return TabularMDP(P, R, 1.0, initial=initial, terminal=self.is_complete.copy())

    def __repr__(self) -> str:
        return (f"TokenTree(vocab_size={self.vocab_size}, max_length={self.max_length}, eos={self.eos}, "
                f"n_prefixes={self.n_prefixes}, n_leaves={self.n_leaves})")


def random_token_tree(
    vocab_size: int,
    max_length: int,
    *,
    seed,
    reward_scale: float = 1.0,
    ref_scale: float = 1.0,
    eos: int | None = 0,
) -> TokenTree:
    """A tree with rewards ``reward_scale · N(0, 1)`` per leaf and reference logits
    ``ref_scale · N(0, 1)`` per incomplete prefix (``ref_scale=0``: uniform pi_ref)."""
    n, n_leaves = token_tree_counts(vocab_size, max_length, eos) if vocab_size >= 2 and max_length >= 1 else (0, 0)
    if n == 0:
        return TokenTree(vocab_size, max_length, eos)  # raises the validation error
    rng = np.random.default_rng(seed)
    rewards = reward_scale * rng.standard_normal(n_leaves)
    logits = ref_scale * rng.standard_normal((n, vocab_size))
    return TokenTree(vocab_size, max_length, eos, leaf_rewards=rewards, ref_logits=logits)
