"""The tabular data layer: validated numpy containers of preference and demonstration rows, and their weight tables.

``mdpalign.envs`` builds these (as it builds :class:`~mdpalign.mdp.TabularMDP`); ``mdpalign.proofs`` reads
their weight tables for the closed forms, and ``mdpalign.harness`` hands the same tables to the torch loss
closures. One vocabulary of field names, used by every container:

* ``context`` — the context (bandit state) x of a row, in ``[0, n_contexts)``;
* ``action`` — the demonstrated arm (response) y, in ``[0, n_arms)``;
* ``chosen`` / ``rejected`` — the preferred and dispreferred arms of a preference pair;
* ``label`` — the quality class c of a class-labelled demonstration, in ``[0, n_labels)``; 0 = expert,
  1 = sub-optimal by OpenChat's convention (the LLM datasets call this column ``class``);
* ``weight`` — the row's probability mass (exact, population data) or 1/N (N samples).

One builder per table, one axis order (context first, the arm last):

* :meth:`PreferenceData.weight_table` ``W[x, chosen, rejected]``, ``(X, K, K)``;
* :meth:`DemoData.weight_table` ``D[x, action]``, ``(X, K)``;
* :meth:`LabeledDemoData.weight_table` ``D[x, label, action]``, ``(X, C, K)``.

A loss summed with the population weights *is* the population loss. Arrays are stored read-only; any
failure raises :class:`DataError` naming the field and the offending rows. Plain numpy; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdpalign.errors import MdpalignError

__all__ = ["DataError", "PreferenceData", "DemoData", "LabeledDemoData"]


class DataError(MdpalignError, ValueError):
    """A data container received an inconsistent or out-of-range field; the message names it."""


def _int_array(name: str, a, n: int | None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional; got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must hold integers; got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} rows; expected {n}")
    arr = arr.astype(np.int64, copy=True)
    arr.setflags(write=False)
    return arr


def _check_range(name: str, a: np.ndarray, upper: int) -> None:
    bad = (a < 0) | (a >= upper)
    if np.any(bad):
        raise DataError(f"{name} holds values outside [0, {upper}) at rows {np.flatnonzero(bad)[:5].tolist()}")


def _weights(w, n: int) -> np.ndarray:
    w = np.array(w, dtype=np.float64)
    if w.shape != (n,):
        raise DataError(f"weight must have shape ({n},); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError(f"weight must be finite and non-negative; bad at rows {np.flatnonzero(~(w >= 0))[:5].tolist()}")
    w.setflags(write=False)
    return w


@dataclass(frozen=True, eq=False)
class PreferenceData:
    """Preference pairs: in context ``context[n]`` arm ``chosen[n]`` was preferred to ``rejected[n]``;
    ``weight[n]`` is the row's probability mass (exact data) or 1/N (samples).

    A population DPO loss is ``sum_n weight[n] * -log sigma(beta * (g[chosen] - g[rejected]))``.
    """

    context: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    weight: np.ndarray
    n_contexts: int
    n_arms: int

    def __post_init__(self) -> None:
        c = _int_array("context", self.context, None)
        n = c.shape[0]
        w = _int_array("chosen", self.chosen, n)
        lo = _int_array("rejected", self.rejected, n)
        _check_range("context", c, self.n_contexts)
        _check_range("chosen", w, self.n_arms)
        _check_range("rejected", lo, self.n_arms)
        if np.any(w == lo):
            raise DataError(f"chosen equals rejected at rows {np.flatnonzero(w == lo)[:5].tolist()}")
        for name, a in (("context", c), ("chosen", w), ("rejected", lo), ("weight", _weights(self.weight, n))):
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return self.context.shape[0]

    def weight_table(self) -> np.ndarray:
        """Win weights ``W[x, i, j]`` ``(X, K, K)``: total weight of the rows where ``i`` was chosen over ``j`` in
        ``x``."""
        out = np.zeros((self.n_contexts, self.n_arms, self.n_arms))
        np.add.at(out, (self.context, self.chosen, self.rejected), self.weight)
        return out


@dataclass(frozen=True, eq=False)
class DemoData:
    """Demonstrations: arm ``action[n]`` in context ``context[n]`` with mass ``weight[n]``."""

    context: np.ndarray
    action: np.ndarray
    weight: np.ndarray
    n_contexts: int
    n_arms: int

    def __post_init__(self) -> None:
        c = _int_array("context", self.context, None)
        a = _int_array("action", self.action, c.shape[0])
        _check_range("context", c, self.n_contexts)
        _check_range("action", a, self.n_arms)
        for name, v in (("context", c), ("action", a), ("weight", _weights(self.weight, c.shape[0]))):
            object.__setattr__(self, name, v)

    def __len__(self) -> int:
        return self.context.shape[0]

    def weight_table(self) -> np.ndarray:
        """Total weight per (context, arm), ``D[x, y]`` ``(X, K)`` — the (unnormalised) empirical distribution."""
        out = np.zeros((self.n_contexts, self.n_arms))
        np.add.at(out, (self.context, self.action), self.weight)
        return out


@dataclass(frozen=True, eq=False)
class LabeledDemoData:
    """Class-labelled demonstrations (C-RLFT, OpenChat): ``label[n]`` is the class of row n (0 expert,
    1 sub-optimal); ``class_rewards[c]`` the reward of class c (None: left to the caller)."""

    context: np.ndarray
    action: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    class_rewards: tuple[float, ...] | None
    n_contexts: int
    n_arms: int
    n_labels: int = 2

    def __post_init__(self) -> None:
        if int(self.n_labels) < 1:
            raise DataError(f"n_labels must be >= 1; got {self.n_labels}")
        object.__setattr__(self, "n_labels", int(self.n_labels))
        c = _int_array("context", self.context, None)
        n = c.shape[0]
        a = _int_array("action", self.action, n)
        k = _int_array("label", self.label, n)
        _check_range("context", c, self.n_contexts)
        _check_range("action", a, self.n_arms)
        _check_range("label", k, self.n_labels)
        for name, v in (("context", c), ("action", a), ("label", k), ("weight", _weights(self.weight, n))):
            object.__setattr__(self, name, v)
        if self.class_rewards is not None:
            cr = tuple(float(v) for v in self.class_rewards)
            if len(cr) != self.n_labels or not all(np.isfinite(cr)):
                raise DataError(f"class_rewards must be {self.n_labels} finite numbers (expert, sub-optimal); "
                                f"got {self.class_rewards}")
            object.__setattr__(self, "class_rewards", cr)

    def __len__(self) -> int:
        return self.context.shape[0]

    def weight_table(self) -> np.ndarray:
        """Total weight per (context, label, arm), ``D[x, c, y]`` ``(X, C, K)``."""
        out = np.zeros((self.n_contexts, self.n_labels, self.n_arms))
        np.add.at(out, (self.context, self.label, self.action), self.weight)
        return out

