"""Benchmark reports (Markdown + JSON + PNG), written atomically.

* ``mdpalign bench frozen-lake`` — :func:`mdpalign.bench.frozen_lake.run_frozen_lake_bench`: the IFT paper's
  Frozen Lake alignment experiment (arXiv 2405.11870, sec. 5.3), every choice made explicit.
* ``mdpalign bench bandits`` — :func:`mdpalign.bench.bandits.run_bandits_bench`: each objective against its
  own exact optimum and against the KL-regularised RL optimum.

Importing this package is cheap; the experiments import torch and matplotlib when they run.
"""
from mdpalign.bench.config import BanditsConfig, BenchConfigError, FrozenLakeConfig

__all__ = ["FrozenLakeConfig", "BanditsConfig", "BenchConfigError"]
