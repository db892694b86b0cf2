"""The tabular data layer: containers validate on entry (naming field and rows), and each builds one weight table
with the context first and the arm last."""
import numpy as np
import pytest

from mdpalign.data import DataError, DemoData, LabeledDemoData, PreferenceData
from mdpalign.envs import bandits
from mdpalign.errors import MdpalignError


def test_containers_normalise_types_and_are_read_only():
    d = DemoData(np.array([0, 2], dtype=np.int32), [1, 0], [0.25, 0.75], 3, 2)
    assert d.context.dtype == np.int64 and d.action.dtype == np.int64 and d.weight.dtype == np.float64
    assert len(d) == 2 and d.weight.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError):
        d.context[0] = 1  # read-only: a table built once stays the table of the data
    assert issubclass(DataError, MdpalignError) and issubclass(DataError, ValueError)


def test_weight_tables_sum_rows_in_context_first_order():
    p = PreferenceData([1, 1, 0], [2, 2, 0], [0, 0, 1], [0.5, 0.25, 0.25], 2, 3)
    W = p.weight_table()
    assert W.shape == (2, 3, 3) and W[1, 2, 0] == 0.75 and W[0, 0, 1] == 0.25 and W.sum() == 1.0
    d = DemoData([1, 1, 0], [2, 2, 0], [0.5, 0.25, 0.25], 2, 3)
    D = d.weight_table()
    assert D.shape == (2, 3) and D[1, 2] == 0.75 and D[0, 0] == 0.25 and D.sum() == 1.0
    lab = LabeledDemoData([1, 1, 0], [2, 2, 0], [1, 0, 1], [0.5, 0.25, 0.25], (1.0, 0.1), 2, 3)
    L = lab.weight_table()  # (X, C, K): the same order as proofs.crlft and the harness
    assert L.shape == (2, 2, 3) and L[1, 1, 2] == 0.5 and L[1, 0, 2] == 0.25 and L[0, 1, 0] == 0.25
    np.testing.assert_array_equal(L.sum(axis=1), D)


def test_bandit_builders_keep_mass_and_ids():
    b = bandits.random_contextual_bandit(3, 4, seed=0)
    prefs = bandits.preference_pairs(b)
    assert isinstance(prefs, PreferenceData) and prefs.n_contexts == 3 and prefs.n_arms == 4
    np.testing.assert_allclose(prefs.weight_table().sum(axis=(1, 2)), b.context_probs, atol=1e-15)
    demo = bandits.exact_demonstrations(b, np.full((3, 4), 0.25))
    np.testing.assert_allclose(demo.weight_table(), np.repeat(b.context_probs[:, None] * 0.25, 4, axis=1), atol=1e-15)
    mixed = bandits.mixed_quality_demonstrations(b, np.full((3, 4), 0.25), np.full((3, 4), 0.25), expert_fraction=0.3)
    assert mixed.class_rewards == (1.0, 0.1) and mixed.n_labels == 2
    np.testing.assert_allclose(mixed.weight_table().sum(axis=(0, 2)), [0.3, 0.7], atol=1e-15)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PreferenceData([0], [1], [1], [1.0], 1, 3), r"chosen equals rejected at rows \[0\]"),
        (lambda: PreferenceData([0], [1], [3], [1.0], 1, 3), r"rejected holds values outside \[0, 3\) at rows \[0\]"),
        (lambda: PreferenceData([0, 0], [1, 2], [2, 0], [1.0, -0.5], 1, 3), r"non-negative; bad at rows \[1\]"),
        (lambda: PreferenceData([0, 0], [1], [2], [1.0], 1, 3), "chosen has 1 rows; expected 2"),
        (lambda: PreferenceData([0.5], [1], [2], [1.0], 1, 3), "context must hold integers"),
        (lambda: DemoData([[0, 1]], [[0, 1]], [1.0], 2, 2), "context must be one-dimensional"),
        (lambda: DemoData([0, 3], [0, 1], [1.0, 1.0], 3, 2), r"context holds values outside \[0, 3\) at rows \[1\]"),
        (lambda: DemoData([0], [0], [1.0, 1.0], 1, 2), r"weight must have shape \(1,\)"),
        (lambda: LabeledDemoData([0], [0], [2], [1.0], None, 1, 2), r"label holds values outside \[0, 2\)"),
        (lambda: LabeledDemoData([0], [0], [0], [1.0], (1.0, 0.1, 0.0), 1, 2), "class_rewards must be 2 finite"),
        (lambda: LabeledDemoData([0], [0], [0], [1.0], (1.0, np.inf), 1, 2), "class_rewards"),
        (lambda: LabeledDemoData([0], [0], [0], [1.0], None, 1, 2, n_labels=0), "n_labels must be >= 1"),
    ],
)
def test_errors_name_field_and_rows(make, match):
    with pytest.raises(DataError, match=match):
        make()
