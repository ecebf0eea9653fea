"""`ophora evaluate`: FID, FVD, CLIPScore, privacy leakage, memorisation and temporal consistency."""

from ophora.evaluate.run import EvaluateConfig, evaluate

__all__ = ["EvaluateConfig", "evaluate"]
