"""Validated containers of the tabular view of a data set: ids, masks, classes and weights as torch tensors.

Shapes: ``states`` (N, T) int64, ``actions`` (N, T) int64, ``mask`` (N, T) bool (which actions count),
``weight`` (N,) float64 (a row's probability mass, or 1 for samples). Bandits have T = 1 and state = context.
Padding positions (mask False) must still hold valid ids (pad with 0): IFT's successor and the policies look them up.
Any failure raises :class:`DataError` naming the field and the offending row.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DataError", "Demonstrations", "Preferences", "LabeledDemonstrations"]


class DataError(MdpalignError, ValueError):
    """A data container received an inconsistent or out-of-range field."""


def _ids(name: str, x, upper: int | None, n_rows: int | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.array(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise DataError(f"{name} must hold integer ids, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t.unsqueeze(1)  # bandit rows: one step
    if t.ndim != 2:
        raise DataError(f"{name} must be (N, T) or (N,), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty: shape {tuple(t.shape)}")
    if n_rows is not None and t.shape[0] != n_rows:
        raise DataError(f"{name} has {t.shape[0]} rows; expected {n_rows}")
    t = t.to(torch.int64).clone()
    if upper is not None:
        bad = (t < 0) | (t >= upper)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise DataError(f"{name} out of range [0, {upper}) at row {row}, step {col}: {int(t[row, col])} (pad with 0, not -1)")
    elif bool((t < 0).any()):
        row, col = (int(i) for i in (t < 0).nonzero()[0])
        raise DataError(f"{name} negative at row {row}, step {col}: {int(t[row, col])} (pad with 0, not -1)")
    return t


def _mask(name: str, mask, shape: tuple[int, int]) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    m = torch.from_numpy(np.array(mask)) if not isinstance(mask, torch.Tensor) else mask.detach().cpu()
    if m.ndim == 1:
        m = m.unsqueeze(1)
    if tuple(m.shape) != shape:
        raise DataError(f"{name} must have shape {shape}, got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if bool(((m != 0) & (m != 1)).any()):
            raise DataError(f"{name} must be bool or 0/1")
        m = m != 0
    m = m.clone()
    empty = ~m.any(dim=1)
    if bool(empty.any()):
        raise DataError(f"{name}: row {int(empty.nonzero()[0])} counts no step (every row needs at least one)")
    return m


def _weight(weight, n: int) -> torch.Tensor:
    if weight is None:
        return torch.ones(n, dtype=torch.float64)
    w = torch.from_numpy(np.array(weight, dtype=np.float64)) if not isinstance(weight, torch.Tensor) else weight.detach().cpu().to(torch.float64)
    if tuple(w.shape) != (n,):
        raise DataError(f"weight must have shape ({n},), got {tuple(w.shape)}")
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise DataError(f"weight must be finite and >= 0; row {row} has {float(w[row])}")
    if not bool((w > 0).any()):
        raise DataError("weight is zero on every row; nothing to fit")
    return w.clone()


def _opt_int(name: str, v) -> int | None:
    if v is None:
        return None
    if int(v) < 1:
        raise DataError(f"{name} must be >= 1, got {v}")
    return int(v)


@dataclass(frozen=True, eq=False)
class Demonstrations:
    """Demonstrated trajectories ``(states, actions)`` with a mask of counted steps and a per-row weight.

    ``n_states``/``n_actions`` (optional) bound the ids. SFT population loss: ``Σ_i weight_i · sft_loss_i``.
    """

    states: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    n_states: int | None = None
    n_actions: int | None = None

    def __post_init__(self) -> None:
        ns, na = _opt_int("n_states", self.n_states), _opt_int("n_actions", self.n_actions)
        s = _ids("states", self.states, ns)
        a = _ids("actions", self.actions, na, s.shape[0])
        if a.shape != s.shape:
            raise DataError(f"actions shape {tuple(a.shape)} differs from states shape {tuple(s.shape)}")
        for k, v in (("states", s), ("actions", a), ("mask", _mask("mask", self.mask, tuple(s.shape))),
                     ("weight", _weight(self.weight, s.shape[0])), ("n_states", ns), ("n_actions", na)):
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def horizon(self) -> int:
        return self.states.shape[1]

    @classmethod
    def from_bandit(cls, data) -> "Demonstrations":
        """From ``mdpalign.envs.bandits.DemoData`` (context, action, weight): T = 1, state = context."""
        return cls(data.context, data.action, None, data.weight, data.n_contexts, data.n_arms)

    @classmethod
    def from_paths(cls, states, actions, mask=None, weight=None, n_states=None, n_actions=None) -> "Demonstrations":
        """From (N, T) arrays of trajectory / token-tree leaf paths (prefix ids as states, tokens as actions)."""
        return cls(states, actions, mask, weight, n_states, n_actions)


@dataclass(frozen=True, eq=False)
class Preferences:
    """Preference pairs: trajectory ``chosen`` preferred to ``rejected`` in row i, with a per-row weight.

    Chosen and rejected may have different horizons. Bandits: T = 1, both states = the context.
    """

    chosen_states: torch.Tensor
    chosen_actions: torch.Tensor
    chosen_mask: torch.Tensor | None
    rejected_states: torch.Tensor
    rejected_actions: torch.Tensor
    rejected_mask: torch.Tensor | None
    weight: torch.Tensor | None = None
    n_states: int | None = None
    n_actions: int | None = None

    def __post_init__(self) -> None:
        ns, na = _opt_int("n_states", self.n_states), _opt_int("n_actions", self.n_actions)
        cs = _ids("chosen_states", self.chosen_states, ns)
        n = cs.shape[0]
        ca = _ids("chosen_actions", self.chosen_actions, na, n)
        rs = _ids("rejected_states", self.rejected_states, ns, n)
        ra = _ids("rejected_actions", self.rejected_actions, na, n)
        if ca.shape != cs.shape:
            raise DataError(f"chosen_actions shape {tuple(ca.shape)} differs from chosen_states {tuple(cs.shape)}")
        if ra.shape != rs.shape:
            raise DataError(f"rejected_actions shape {tuple(ra.shape)} differs from rejected_states {tuple(rs.shape)}")
        cm = _mask("chosen_mask", self.chosen_mask, tuple(cs.shape))
        rm = _mask("rejected_mask", self.rejected_mask, tuple(rs.shape))
        if cs.shape == rs.shape:
            same = ((cs == rs) | ~(cm | rm)).all(1) & ((ca == ra) | ~(cm | rm)).all(1) & (cm == rm).all(1)
            if bool(same.any()):
                raise DataError(f"row {int(same.nonzero()[0])}: chosen and rejected are the same trajectory")
        for k, v in (("chosen_states", cs), ("chosen_actions", ca), ("chosen_mask", cm), ("rejected_states", rs),
                     ("rejected_actions", ra), ("rejected_mask", rm), ("weight", _weight(self.weight, n)),
                     ("n_states", ns), ("n_actions", na)):
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return self.chosen_states.shape[0]

    @classmethod
    def from_bandit(cls, data) -> "Preferences":
        """From ``mdpalign.envs.bandits.PreferenceData`` (context, chosen, rejected, weight)."""
        return cls(data.context, data.chosen, None, data.context, data.rejected, None, data.weight,
                   data.n_contexts, data.n_arms)


@dataclass(frozen=True, eq=False)
class LabeledDemonstrations:
    """Class-labelled demonstrations (C-RLFT): ``classes`` (N,) ids, 0 = expert by OpenChat's convention.

    ``class_rewards`` (optional) gives the reward of each class; ``n_classes`` bounds the class ids.
    """

    states: torch.Tensor
    actions: torch.Tensor
    classes: torch.Tensor
    mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    n_states: int | None = None
    n_actions: int | None = None
    n_classes: int | None = None
    class_rewards: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        ns, na, nc = (_opt_int("n_states", self.n_states), _opt_int("n_actions", self.n_actions),
                      _opt_int("n_classes", self.n_classes))
        s = _ids("states", self.states, ns)
        a = _ids("actions", self.actions, na, s.shape[0])
        if a.shape != s.shape:
            raise DataError(f"actions shape {tuple(a.shape)} differs from states shape {tuple(s.shape)}")
        c = _ids("classes", self.classes, nc, s.shape[0])
        if c.shape[1] != 1:
            raise DataError(f"classes must be one id per row, shape ({s.shape[0]},), got {tuple(c.shape)}")
        cr = None
        if self.class_rewards is not None:
            cr = tuple(float(r) for r in self.class_rewards)
            if not all(np.isfinite(cr)):
                raise DataError(f"class_rewards must be finite, got {cr}")
            if nc is None:
                nc = len(cr)
            if len(cr) != nc:
                raise DataError(f"class_rewards has {len(cr)} entries, n_classes is {nc}")
            if int(c.max()) >= nc:
                raise DataError(f"classes out of range [0, {nc}) at row {int((c >= nc).nonzero()[0, 0])}")
        for k, v in (("states", s), ("actions", a), ("classes", c[:, 0]), ("mask", _mask("mask", self.mask, tuple(s.shape))),
                     ("weight", _weight(self.weight, s.shape[0])), ("n_states", ns), ("n_actions", na),
                     ("n_classes", nc), ("class_rewards", cr)):
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return self.states.shape[0]

    @classmethod
    def from_bandit(cls, data) -> "LabeledDemonstrations":
        """From ``mdpalign.envs.bandits.LabeledDemoData`` (context, action, cls, weight, class_rewards)."""
        return cls(data.context, data.action, data.cls, None, data.weight, data.n_contexts, data.n_arms, 2,
                   data.class_rewards)

    def class_weights_per_row(self, class_weights) -> torch.Tensor:
        """Row weights ``weight_i · w_{c_i}`` (N,) for :func:`mdpalign.objectives.crlft_loss` from per-class weights."""
        cw = torch.as_tensor(class_weights, dtype=torch.float64)
        if cw.ndim != 1 or int(self.classes.max()) >= cw.shape[0]:
            raise DataError(f"class_weights must be 1-D with an entry for every class id (max {int(self.classes.max())}), got shape {tuple(cw.shape)}")
        return self.weight * cw[self.classes]
