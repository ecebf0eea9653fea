"""`ophora demo`: the whole path on a tiny untrained model, small enough for a laptop CPU."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from ophora.models import make_tiny_model
from ophora.sample import SampleConfig, sample

log = logging.getLogger(__name__)


def phase_prompts_file() -> Path:
    """The project's prompt file for the twelve Cataract-1K phases (authors' CSV layout)."""
    return Path(str(resources.files("ophora") / "prompts" / "cataract1k_phases.csv"))


def run_demo(out: str | Path, model: str | None = None) -> Path:
    """Sample the twelve phases into a gallery; returns the gallery page."""
    out = Path(out)
    if model is None:
        model_dir = out / "tiny-model"
        if not (model_dir / "model_index.json").is_file():
            make_tiny_model(model_dir)
        model = str(model_dir)
        size = dict(frames=9, height=64, width=64, steps=10)
    else:
        size = {}
    config = SampleConfig(model=model, out=out / "samples", prompts=phase_prompts_file(), **size)
    sample(config)
    page = out / "samples" / "index.html"
    log.info("open %s in a browser to watch the videos", page)
    return page
