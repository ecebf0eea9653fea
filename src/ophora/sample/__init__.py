"""`ophora sample`: batch generation from prompt files, sharded over ranks, CFG-parallel, resumable, with a gallery;
`Generator`: load a model once and generate many videos from Python."""

from ophora.sample.config import SampleConfig
from ophora.sample.generator import Generator
from ophora.sample.run import sample

__all__ = ["Generator", "SampleConfig", "sample"]
