"""Environments with exact answers: gymnasium's Frozen Lake, bandits with Bradley–Terry preferences,
token-tree sequence MDPs. Plain numpy (no torch); gymnasium is imported only when a lake is built."""
from mdpalign.envs.frozen_lake import (
    ACTION_NAMES, DOWN, LEFT, RIGHT, TWO_PATH_MAP, UP, FrozenLake, InvalidMapError, Trajectory, TwoPathLake,
    frozen_lake, simple_trajectories, two_path_lake, two_path_lake_from_map,
)

__all__ = [
    "ACTION_NAMES", "DOWN", "LEFT", "RIGHT", "UP", "TWO_PATH_MAP",
    "FrozenLake", "InvalidMapError", "Trajectory", "TwoPathLake",
    "frozen_lake", "simple_trajectories", "two_path_lake", "two_path_lake_from_map",
]
