import numpy as np
import pytest
import torch

from mdpalign.data import DataError, Demonstrations, LabeledDemonstrations, Preferences
from mdpalign.envs import bandits


def test_demonstrations_normalise_types_and_defaults():
    d = Demonstrations(np.array([[0, 1], [2, 0]]), [[1, 1], [0, 0]], mask=[[1, 1], [1, 0]], n_states=3, n_actions=2)
    assert d.states.dtype == torch.int64 and d.mask.dtype == torch.bool and d.weight.dtype == torch.float64
    assert d.weight.tolist() == [1.0, 1.0] and len(d) == 2 and d.horizon == 2
    one = Demonstrations([0, 2], [1, 0])  # bandit rows become (N, 1)
    assert one.states.shape == (2, 1) and bool(one.mask.all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(states=np.zeros((0, 2), int), actions=np.zeros((0, 2), int)), "empty"),
        (dict(states=[[0, 1]], actions=[[0, 1], [1, 1]]), "rows; expected 1"),
        (dict(states=[[0, 1]], actions=[[0, 1]], mask=[[0, 0]]), "row 0 counts no step"),
        (dict(states=[[0, 3]], actions=[[0, 1]], n_states=3), r"states out of range \[0, 3\) at row 0, step 1"),
        (dict(states=[[0, -1]], actions=[[0, 1]]), "negative at row 0, step 1"),
        (dict(states=[[0], [1]], actions=[[0], [1]], weight=[1.0, -0.5]), "row 1"),
        (dict(states=[[0], [1]], actions=[[0], [1]], weight=[0.0, 0.0]), "zero on every row"),
        (dict(states=[[0.5]], actions=[[0]]), "integer"),
    ],
)
def test_demonstration_errors_name_field_and_row(kwargs, match):
    with pytest.raises(DataError, match=match):
        Demonstrations(**kwargs)
    assert issubclass(DataError, ValueError)


def test_from_bandit_constructors_keep_mass_and_ids():
    b = bandits.random_contextual_bandit(3, 4, seed=0)
    prefs = bandits.preference_pairs(b)
    p = Preferences.from_bandit(prefs)
    assert len(p) == len(prefs) and p.n_states == 3 and p.n_actions == 4
    assert p.chosen_states[:, 0].tolist() == prefs.context.tolist()
    assert p.rejected_actions[:, 0].tolist() == prefs.rejected.tolist()
    assert p.weight.tolist() == pytest.approx(prefs.weight.tolist())
    demo = bandits.exact_demonstrations(b, np.full((3, 4), 0.25))
    d = Demonstrations.from_bandit(demo)
    assert d.actions[:, 0].tolist() == demo.action.tolist()
    mixed = bandits.mixed_quality_demonstrations(b, np.full((3, 4), 0.25), np.full((3, 4), 0.25))
    lab = LabeledDemonstrations.from_bandit(mixed)
    assert lab.classes.tolist() == mixed.cls.tolist() and lab.class_rewards == (1.0, 0.1) and lab.n_classes == 2
    w = lab.class_weights_per_row([1.0, 0.1])
    assert w.tolist() == pytest.approx([m * (1.0 if c == 0 else 0.1) for m, c in zip(mixed.weight, mixed.cls)])


def test_preference_errors():
    with pytest.raises(DataError, match="same trajectory"):
        Preferences([[0]], [[1]], None, [[0]], [[1]], None)
    with pytest.raises(DataError, match="rejected_actions out of range"):
        Preferences([[0]], [[1]], None, [[0]], [[5]], None, n_actions=3)
    with pytest.raises(DataError, match="rejected_mask"):
        Preferences([[0, 1]], [[1, 1]], None, [[0, 1]], [[0, 0]], [[0, 0]])
    # different horizons are allowed
    p = Preferences([[0, 1, 2]], [[1, 1, 1]], None, [[0]], [[0]], None)
    assert p.chosen_states.shape == (1, 3) and p.rejected_states.shape == (1, 1)


def test_labeled_errors():
    with pytest.raises(DataError, match="classes out of range"):
        LabeledDemonstrations([[0]], [[0]], [2], n_classes=2)
    with pytest.raises(DataError, match="class_rewards has 3 entries"):
        LabeledDemonstrations([[0]], [[0]], [0], n_classes=2, class_rewards=(1.0, 0.1, 0.0))
