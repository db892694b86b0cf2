"""The scalar and array checks every layer uses, so that one rule has one wording.

Each check takes the error class of the calling layer (``error=``, required: a subclass of
:class:`~mdpalign.errors.MdpalignError` and ``ValueError``), so a caller still catches the specific
error of the layer it called; the message is the same everywhere: ``"<name> must be a finite number
> 0, got <value>"``. :func:`as_number` / :func:`as_integer` only read a value (nan / None where it is no number)
for callers whose error is built differently (the bench's templates) or words its own range. Plain numpy: a
torch tensor is read through ``.detach()`` without importing torch.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mdpalign.errors import MdpalignError

__all__ = ["to_numpy", "as_number", "as_integer", "check_number", "check_positive", "check_unit_interval"]


def to_numpy(x: Any, dtype: Any = np.float64, *, name: str = "input",
             error: type[MdpalignError] | None = None) -> np.ndarray:
    """``x`` (array-like or a torch tensor, on any device) as a numpy array of ``dtype`` (None: keep the dtype).

    With ``error``, text or a ragged nested list raises ``error`` naming ``name`` (numpy's own "could not convert" /
    "inhomogeneous shape" names nothing).
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    if error is None:
        return np.asarray(x, dtype=dtype)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise error(f"{name} must be a rectangular array of numbers: {exc}") from None


def as_number(value: Any) -> float:
    """``value`` as a Python float, nan where it is no number at all (text, None, a sequence): every range check
    then fails, so a caller whose error is built differently (a template naming fields) still names the argument."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return math.nan


def as_integer(value: Any) -> int | None:
    """``value`` as a Python int where it is an integral number (``3``, ``3.0``, ``np.int64(3)``), else None (text,
    None, a bool, ``2.5``, nan): the caller raises its own error naming the argument, rather than passing on
    ``int('x')``'s message or truncating 2.5 to 2."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == value else None


def check_number(value: Any, name: str, *, error: type[MdpalignError]) -> float:
    """``value`` as a Python float (a one-element tensor or array is accepted), or ``error`` naming ``name``."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise error(f"{name} must be a number, got {value!r}") from exc


def check_positive(value: Any, name: str, *, allow_zero: bool = False, error: type[MdpalignError]) -> float:
    """``value`` as a float, finite and > 0 (>= 0 with ``allow_zero``), or ``error`` naming ``name``."""
    v = check_number(value, name, error=error)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise error(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


def check_unit_interval(value: Any, name: str, *, error: type[MdpalignError]) -> float:
    """``value`` as a float in the closed interval [0, 1], or ``error`` naming ``name``."""
    v = check_number(value, name, error=error)
    if not 0.0 <= v <= 1.0:  # also refuses nan
        raise error(f"{name} must lie in [0, 1], got {v}")
    return v
