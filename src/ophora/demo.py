"""`ophora demo`: the twelve phases from the shipped mini model, and the whole path on a tiny untrained one.

1. The gallery of the twelve Cataract-1K phases, sampled from the model shipped in `ophora/demo_model`: a
   CogVideoX-architecture model that `benchmarks/mini_ophora.py` trained from scratch (TPT, then P2FT) on
   the procedural surgery world, so each video shows the instrument and lens of the phase its instruction
   names (docs/evidence.md). `--model` samples another pipeline instead.
2. The machinery, small enough for a laptop CPU: narrated videos -> curate -> prepare -> TPT -> P2FT ->
   sample the curated instructions, on a tiny random model whose videos stay noise.
Each step writes its folder under the demo folder and is skipped on a rerun when its output is already
there, so an interrupted demo resumes.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from ophora.sample import SampleConfig, sample
from ophora.synthetic.demo_model import PROMPTS_FILE
from ophora.synthetic.random_pipeline import make_random_model

log = logging.getLogger(__name__)

# The tiny model at a size a CPU trains in seconds: 9 frames of 64x96.
TINY_VIDEO = dict(frames=9, height=64, width=96)


def bundled(name: str) -> Path:
    """A file shipped inside the package."""
    return Path(str(resources.files("ophora") / name))


def run_demo(out: str | Path, model: str | None = None, steps: int = 20, frames: int | None = None,
             pipeline: bool = True) -> Path:
    """Run the demo in `out`; returns the twelve phases' gallery page.

    `model`: sample the phases from this pipeline instead of the shipped one (its `prompts.csv` if it has
    one, else the bundled Cataract-1K phase prompts); `steps`, `frames`: of those videos (default frames:
    the model's); `pipeline`: also run the whole path on the tiny model.
    """
    out = Path(out)
    phases = _phases(out / "phases", model, steps, frames)
    if pipeline:
        _pipeline(out)
    return _announce(phases)


def _phases(out: Path, model: str | None, steps: int, frames: int | None) -> Path:
    """The twelve phases' gallery from `model` (default: the shipped mini model)."""
    folder = Path(model) if model is not None else bundled("demo_model")
    own = folder / PROMPTS_FILE
    if own.is_file():  # the model's own words for each phase; it was trained without caption dropout: no CFG
        config = SampleConfig(model=str(folder), out=out, prompts=own, prompt_column="instruction", steps=steps,
                              frames=frames, guidance=1.0)
    else:
        config = SampleConfig(model=str(folder), out=out, prompts=bundled("prompts/cataract1k_phases.csv"),
                              steps=steps, frames=frames)
    sample(config)
    return out / "index.html"


def _pipeline(out: Path) -> None:
    """Narrated videos -> curate -> prepare -> TPT -> P2FT -> samples, on the tiny random model."""
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

    # 5. sample the P2FT model with the curated instructions
    sample(SampleConfig(model=str(p2ft / "final"), out=out / "samples", prompts=dataset / "privacy_preserved.csv",
                        prompt_column="instruction", steps=10, **TINY_VIDEO))
    log.info("curation report: %s", dataset / "report.html")
    log.info("the tiny model's samples: %s", out / "samples" / "index.html")


def _announce(page: Path) -> Path:
    log.info("open %s in a browser to watch the videos", page)
    return page
