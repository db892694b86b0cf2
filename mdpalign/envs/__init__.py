"""Environments with exact answers: gymnasium's Frozen Lake, bandits with Bradley–Terry preferences,
token-tree sequence MDPs. Plain numpy (no torch); the lakes are gymnasium's own maps and dynamics.

The bandits build the containers of :mod:`mdpalign.data` (``PreferenceData``, ``DemoData``, ``LabeledDemoData``)."""
from mdpalign.envs.bandits import (
    ContextualBandit,
    InvalidBanditError,
    bt_preference_probs,
    comparison_components,
    comparison_graph,
    exact_demonstrations,
    k_armed_bandit,
    mixed_quality_demonstrations,
    preference_pairs,
    random_contextual_bandit,
    sample_demonstrations,
    sample_preference_pairs,
    win_graph,
)
from mdpalign.envs.frozen_lake import (
    ACTION_NAMES,
    DOWN,
    LEFT,
    RIGHT,
    TWO_PATH_MAP,
    UP,
    FrozenLake,
    InvalidMapError,
    Trajectory,
    TwoPathLake,
    frozen_lake,
    simple_trajectories,
    two_path_lake,
    two_path_lake_from_map,
)
from mdpalign.envs.token_tree import InvalidTokenTreeError, TokenPaths, TokenTree, random_token_tree, token_tree_counts

__all__ = [
    # frozen lake
    "ACTION_NAMES", "DOWN", "LEFT", "RIGHT", "UP", "TWO_PATH_MAP",
    "FrozenLake", "InvalidMapError", "Trajectory", "TwoPathLake",
    "frozen_lake", "simple_trajectories", "two_path_lake", "two_path_lake_from_map",
    # bandits
    "ContextualBandit", "InvalidBanditError",
    "bt_preference_probs", "comparison_components", "comparison_graph", "exact_demonstrations", "k_armed_bandit",
    "mixed_quality_demonstrations", "preference_pairs", "random_contextual_bandit", "sample_demonstrations",
    "sample_preference_pairs", "win_graph",
    # token trees
    "InvalidTokenTreeError", "TokenPaths", "TokenTree", "random_token_tree", "token_tree_counts",
]
