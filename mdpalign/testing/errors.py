"""Errors of the loss-checking kit: each names the user's function and what it did wrong, in one line.

All subclass :class:`mdpalign.errors.MdpalignError` (and ``ValueError``), so ``mdpalign verify`` answers them with
one line and exit status 2, like any other user mistake.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError

__all__ = [
    "LossCheckError",
    "LossSignatureError",
    "LossCallError",
    "LossShapeError",
    "LossReductionError",
    "LossDtypeError",
    "LossNonFiniteError",
    "LossNotDifferentiableError",
    "UnknownRegimeError",
    "UnknownOptimumError",
]


class LossCheckError(MdpalignError, ValueError):
    """Base of the kit's errors: the loss function (or an argument of the check) cannot be checked as given."""


class LossSignatureError(LossCheckError):
    """The function cannot be called with the documented arguments of its kind."""


class LossCallError(LossCheckError):
    """The function raised when called with valid tensors of the documented shapes."""


class LossShapeError(LossCheckError):
    """The function returned something other than one loss per example."""


class LossReductionError(LossCheckError):
    """The function reduces over the batch (a scalar, or per-example values that depend on the other examples)."""


class LossDtypeError(LossCheckError):
    """The function returned a lower precision than its float64 inputs (the certificate needs float64)."""


class LossNonFiniteError(LossCheckError):
    """The function returned NaN or infinity on finite inputs."""


class LossNotDifferentiableError(LossCheckError):
    """The function's output carries no gradient to the policy log-probabilities (detached, numpy, ``.item()``)."""


class UnknownRegimeError(LossCheckError):
    """A regime name that this kind of loss does not have."""


class UnknownOptimumError(LossCheckError):
    """``expect=`` names no optimum this kind of loss knows, or is of the wrong type."""
