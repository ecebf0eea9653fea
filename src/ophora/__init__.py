"""ophora: narrated surgical videos -> training data -> text-to-video models of cataract surgery."""

__version__ = "0.1.0"
