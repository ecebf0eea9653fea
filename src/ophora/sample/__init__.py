"""`ophora sample`: batch generation from prompt files, sharded over ranks, CFG-parallel, resumable, with a gallery."""

from ophora.sample.config import SampleConfig
from ophora.sample.run import sample

__all__ = ["SampleConfig", "sample"]
