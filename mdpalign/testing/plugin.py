"""mdpalign's pytest plugin, registered through the ``pytest11`` entry point: installing mdpalign enables it.

* fixtures: ``mdpalign_problem`` (a factory ``mdpalign_problem(kind, regime, beta=0.1, seed=0)``) and one per
  preference regime at ``beta = 0.1``: ``bt_all_pairs_problem``, ``partial_coverage_problem``,
  ``deterministic_problem``, ``two_arm_problem``;
* ``assert_reaches`` (a fixture returning :func:`mdpalign.testing.checks.assert_reaches`): ``assert_reaches(loss,
  problem, optimum)`` fails with a message naming the regime, the distance and the certified tolerance, and the
  problem to reproduce it;
* the marker ``mdpalign_loss``: added to every test that uses ``assert_reaches``, so ``pytest -m mdpalign_loss``
  selects these checks (and ``-m "not mdpalign_loss"`` skips them); it may also be set by hand.

Importing this module costs nothing beyond pytest: every mdpalign import happens inside a fixture, so a test
session that never uses them (any project that merely has mdpalign installed) does not load torch.
"""
from __future__ import annotations

import pytest

MARKER = "mdpalign_loss"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a check of a loss function against a closed-form optimum "
                                       "(mdpalign.testing)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "assert_reaches" in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)


@pytest.fixture
def mdpalign_problem():
    """``mdpalign_problem(kind, regime, beta=0.1, seed=0)`` -> :class:`mdpalign.testing.regimes.Problem`."""
    from mdpalign.testing.regimes import make_problem

    def make(kind: str, regime: str, beta: float = 0.1, seed: int = 0):
        return make_problem(kind, regime, seed, beta)

    return make


def _preference(regime: str):
    from mdpalign.testing.regimes import make_problem

    return make_problem("preference", regime, 0, 0.1)


@pytest.fixture
def bt_all_pairs_problem():
    return _preference("bt_all_pairs")


@pytest.fixture
def partial_coverage_problem():
    return _preference("partial_coverage")


@pytest.fixture
def deterministic_problem():
    return _preference("deterministic")


@pytest.fixture
def two_arm_problem():
    return _preference("two_arm")


@pytest.fixture
def assert_reaches():
    """:func:`mdpalign.testing.checks.assert_reaches`."""
    from mdpalign.testing.checks import assert_reaches as check

    return check
