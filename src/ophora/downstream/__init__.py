"""`ophora downstream`: does adding generated videos improve surgical phase recognition?

Modules: annotations (Cataract-1K and OphNet readers), splits (by video), clips (cutting, cache, loader),
models (torchvision video networks, K400 weights), shards (global batches over ranks), train (one run,
resumable), metrics, report, config, run.
"""

from ophora.downstream.config import DownstreamConfig
from ophora.downstream.run import downstream

__all__ = ["DownstreamConfig", "downstream"]
