"""``mdpalign.testing``: verify anyone's loss against the optimum its paper claims.

>>> from mdpalign.testing import check_preference_loss
>>> report = check_preference_loss(my_dpo, expect="kl_rl", beta=0.1)   # doctest: +SKIP
>>> assert report.ok, report                                           # doctest: +SKIP

* :mod:`mdpalign.testing.checks` — ``check_preference_loss``, ``check_demonstration_loss``,
  ``check_class_weighted_loss``, ``check_reward_model_loss``, ``check_online_policy_loss``;
* :mod:`mdpalign.testing.strategies` — Hypothesis strategies for the project's problems;
* :mod:`mdpalign.testing.plugin` — the pytest plugin (fixtures, ``assert_reaches``, the ``mdpalign_loss`` marker).

The names are loaded on first use (PEP 562): the pytest plugin imports this package in every test session of every
project that installs mdpalign, and must not pay for torch there.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "check_loss": "mdpalign.testing.checks",
    "check_preference_loss": "mdpalign.testing.checks",
    "check_demonstration_loss": "mdpalign.testing.checks",
    "check_class_weighted_loss": "mdpalign.testing.checks",
    "check_reward_model_loss": "mdpalign.testing.checks",
    "check_online_policy_loss": "mdpalign.testing.checks",
    "assert_reaches": "mdpalign.testing.checks",
    "Report": "mdpalign.testing.report",
    "RegimeResult": "mdpalign.testing.report",
    "Problem": "mdpalign.testing.regimes",
    "REGIMES": "mdpalign.testing.regimes",
    "make_problem": "mdpalign.testing.regimes",
    "NAMED_OPTIMA": "mdpalign.testing.expectations",
    "KINDS": "mdpalign.testing.adapters",
    "LossCheckError": "mdpalign.testing.errors",
    "LossSignatureError": "mdpalign.testing.errors",
    "LossCallError": "mdpalign.testing.errors",
    "LossShapeError": "mdpalign.testing.errors",
    "LossReductionError": "mdpalign.testing.errors",
    "LossDtypeError": "mdpalign.testing.errors",
    "LossNonFiniteError": "mdpalign.testing.errors",
    "LossNotDifferentiableError": "mdpalign.testing.errors",
    "UnknownRegimeError": "mdpalign.testing.errors",
    "UnknownOptimumError": "mdpalign.testing.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mdpalign.testing' has no attribute {name!r}")


def __dir__():
    return __all__
