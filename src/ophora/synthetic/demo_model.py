"""The model `ophora demo` ships: the mini experiment's P2FT pipeline, stored in half precision.

`benchmarks/mini_ophora.py` trains a CogVideoX-architecture model from scratch on the procedural surgery world
(TPT, then P2FT on the privacy-preserved clips). `export_demo_model` writes its final pipeline in the diffusers
layout with every floating-point weight cast to float16 (about 15 MB instead of 30), a `prompts.csv` with one
instruction in the world's words per phase, and `provenance.json` (how it was made and what it scored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from ophora.core.errors import InputError
from ophora.core.files import atomic_dir, write_csv, write_json
from ophora.core.tables import ID_COLUMN, slug
from ophora.synthetic.phase_videos import CATARACT1K_PHASES
from ophora.synthetic.surgery_world import narration

PROMPTS_FILE = "prompts.csv"
PROVENANCE_FILE = "provenance.json"
PROMPT_COLUMNS = (ID_COLUMN, "instruction", "phase")


def demo_prompts(seed: int = 0) -> list[dict]:
    """One instruction per phase, in the order of the twelve phases: a world narration refined by the rules."""
    from ophora.curate.refine import make_refiner

    rng = np.random.default_rng(seed)
    texts = make_refiner().refine([narration(phase, rng) for phase in CATARACT1K_PHASES])
    return [{ID_COLUMN: f"{slug(phase)}_1", "instruction": text, "phase": phase} for phase, text in zip(CATARACT1K_PHASES, texts)]


def _half(path: Path, dest: Path) -> None:
    tensors = load_file(path)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, dest)


def export_demo_model(final: str | Path, dest: str | Path, provenance: dict) -> Path:
    """Write the pipeline in `final` to `dest` in float16 with the demo's prompts and `provenance`."""
    final, dest = Path(final), Path(dest)
    if not (final / "model_index.json").is_file():
        raise InputError(f"{final} is not a diffusers pipeline folder (no model_index.json)")
    with atomic_dir(dest) as tmp:
        for path in sorted(final.rglob("*")):
            target = tmp / path.relative_to(final)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.suffix == ".safetensors":
                _half(path, target)
            else:
                shutil.copy2(path, target)
        write_json(tmp / PROVENANCE_FILE, {**provenance, "weights": "float16 copy of the float32 training result"})
        write_csv(tmp / PROMPTS_FILE, PROMPT_COLUMNS, demo_prompts())
    return dest
