"""Synthetic inputs for tests, the demo and benchmarks: narrated sample videos and random pipelines of real architectures."""
