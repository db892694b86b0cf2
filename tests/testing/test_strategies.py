"""mdpalign.testing.strategies draw valid problems of the stated kinds (each property could fail on a bad draw)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mdpalign.envs.bandits import comparison_components
from mdpalign.envs.frozen_lake import frozen_lake
from mdpalign.solve import is_proper, policy_iteration
from mdpalign.testing.strategies import (
    bandits,
    class_labelled_data,
    demonstrations,
    frozen_lake_maps,
    preference_data,
    tabular_mdps,
    token_trees,
)


@settings(max_examples=25)
@given(frozen_lake_maps())
def test_frozen_lake_maps_are_valid_and_solvable(rows):
    lake = frozen_lake(rows, slippery=False, gamma=0.9)
    assert policy_iteration(lake.mdp).values[lake.start_state] > 0  # G is reachable


@settings(max_examples=20)
@given(tabular_mdps(gamma=1.0))
def test_undiscounted_mdps_are_proper_under_action_zero(mdp):
    assert is_proper(mdp, np.zeros(mdp.n_states, dtype=int))


@settings(max_examples=20)
@given(preference_data(coverage="partial", labels="bt", connected=False))
def test_partial_coverage_leaves_several_components(bd):
    b, data = bd
    assert b.n_arms >= 3
    assert all(len(comparison_components(data, x)) >= 2 or len(set().union(*comparison_components(data, x))) < b.n_arms
               for x in range(b.n_contexts))


@settings(max_examples=20)
@given(demonstrations(full_support=False), class_labelled_data(), bandits(n_arms=st.just(3)), token_trees())
def test_tables_have_the_stated_support(D, C, b, tree):
    assert (D == 0).any(axis=1).all() and (D > 0).any(axis=1).all()
    assert C.ndim == 3 and np.allclose(C.sum(axis=(1, 2)), 1.0)
    assert b.n_arms == 3 and tree.n_leaves >= 2
