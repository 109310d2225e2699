"""Benchmarks: ``just bench`` prints one table; ratios use baselines measured in the same run."""
