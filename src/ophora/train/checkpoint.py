"""Run folders and checkpoints: claim a folder for one run, save every N steps, resume from the newest.

A checkpoint `checkpoints/step-NNNNNNN/` is accelerate's `save_state` (model weights as safetensors;
optimizer, LR-schedule and RNG states as torch pickles, which accelerate loads back: resume only from
checkpoints you wrote yourself) plus `state.json` (step, data position, skipped steps). It is written
under a temporary name and renamed, so a checkpoint that exists is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ophora.core.files import claim_folder, replace_dir, temp_dir, write_text
from ophora.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done, micro-batches consumed, updates skipped for NaN/inf."""

    step: int = 0
    micro_step: int = 0
    skipped: int = 0


def claim_run(out: Path, config: TrainConfig) -> None:
    """Check that `out` is empty or holds this same run (same identity)."""
    claim_folder(out, "run.json", config.identity(), "training run", "choose another out or delete it")


def write_run_record(out: Path, config: TrainConfig, extra: dict) -> None:
    write_text(out / "run.json", json.dumps({"identity": config.identity(), "config": dataclasses.asdict(config),
                                               **extra}, indent=1))


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = out / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file()) if folder.is_dir() else []


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int) -> Path:
    """Save the full training state (all processes call this) and keep only the newest `keep` checkpoints."""
    final = out / "checkpoints" / f"step-{state.step:07d}"
    tmp = temp_dir(final)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text(tmp / "state.json", json.dumps(dataclasses.asdict(state)))
        replace_dir(tmp, final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, out: Path) -> TrainState:
    """Load the newest checkpoint of `out` into the prepared objects; a fresh state when there is none."""
    found = checkpoints(out)
    if not found:
        return TrainState()
    accelerator.load_state(str(found[-1]))
    state = TrainState(**json.loads((found[-1] / "state.json").read_text()))
    log.info("resumed from %s (step %d)", found[-1], state.step)
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Drop logged steps after `step` (they will be trained again after a resume)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        write_text(path, "".join(ln + "\n" for ln in lines))
