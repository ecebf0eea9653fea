"""Synthetic inputs for tests, the demo and benchmarks: narrated videos with curation ground truth, the procedural
surgery world, random pipelines of real architectures, the mini experiment's model and data, the shipped demo model."""
