"""`ophora demo`: the whole path on a tiny untrained model, small enough for a laptop CPU.

sample videos -> curate -> prepare -> TPT -> P2FT -> sample from the P2FT model (the curated instructions
and the twelve Cataract-1K phases). The model is untrained at the start, so the videos are noise: the
demo shows the machinery, not a surgical model. Each step writes its
folder under the demo folder and is skipped on a rerun when its output is already there, so an
interrupted demo resumes.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from ophora.synthetic.random_pipeline import make_random_model
from ophora.sample import SampleConfig, sample

log = logging.getLogger(__name__)

# The tiny model at a size a CPU trains in seconds: 9 frames of 64x96.
TINY_VIDEO = dict(frames=9, height=64, width=96)


def bundled(name: str) -> Path:
    """A file shipped inside the package."""
    return Path(str(resources.files("ophora") / name))


def run_demo(out: str | Path, model: str | None = None) -> Path:
    """Run the demo in `out`; returns the final gallery page.

    With `model` (a real pipeline), only the sampling step runs: the twelve Cataract-1K phases.
    """
    out = Path(out)
    if model is not None:
        sample(SampleConfig(model=model, out=out / "samples", prompts=bundled("prompts/cataract1k_phases.csv")))
        return _announce(out / "samples" / "index.html")

    from ophora.curate.pipeline import CurateConfig, curate
    from ophora.synthetic.narrated_videos import make_narrated_videos
    from ophora.prepare import PrepareConfig, prepare
    from ophora.train.config import load_config
    from ophora.train.trainer import train

    # 1. the project's synthetic narrated videos, and the tiny random base model
    videos, dataset, cache, base = out / "videos", out / "dataset", out / "cache", out / "tiny-model"
    if not (videos / "ground_truth.json").is_file():
        make_narrated_videos(videos)
    if not (base / "model_index.json").is_file():
        make_random_model(base)

    # 2. curate: clips + instructions, and the privacy-preserved subset
    curate(CurateConfig(input=videos, out=dataset, workers=2))

    # 3. prepare: VAE latents and T5 embeddings of every kept clip
    prepare(PrepareConfig(dataset=dataset, model=str(base), out=cache, frame_buckets=(TINY_VIDEO["frames"],),
                          heights=(TINY_VIDEO["height"],), widths=(TINY_VIDEO["width"],)))

    # 4. Transfer Pre-Training on all clips, then Privacy-Preserving Fine-Tuning on the subset
    tpt = train(load_config("tiny-tpt", [f"model={base}", f"cache={cache}", f"out={out / 'tpt'}"]))
    p2ft = train(load_config("tiny-p2ft", [
        f"model={tpt / 'final'}", f"cache={cache}", f"out={out / 'p2ft'}",
        f"subset_csv={dataset / 'privacy_preserved.csv'}",
    ]))

    # 5. sample the P2FT model: the curated instructions, and the twelve Cataract-1K phases
    final = str(p2ft / "final")
    sample(SampleConfig(model=final, out=out / "samples", prompts=dataset / "privacy_preserved.csv",
                        prompt_column="instruction", steps=10, **TINY_VIDEO))
    sample(SampleConfig(model=final, out=out / "phases", prompts=bundled("prompts/cataract1k_phases.csv"), steps=10,
                        **TINY_VIDEO))
    log.info("curation report: %s", dataset / "report.html")
    log.info("the twelve phases: %s", out / "phases" / "index.html")
    return _announce(out / "samples" / "index.html")


def _announce(page: Path) -> Path:
    log.info("open %s in a browser to watch the videos", page)
    return page
