"""Run folders and checkpoints: claim a folder for one run, save every N steps, resume from the newest good one.

A checkpoint `checkpoints/step-NNNNNNN/` is accelerate's `save_state` (model weights as safetensors, optimizer
and RNG states as torch files that are only ever loaded with `weights_only=True`) plus `state.json`: step,
data position, skipped steps and the LR schedule's state. Nothing is registered with accelerate's
`register_for_checkpointing` (it unpickles `custom_checkpoint_*.pkl` fully), and a checkpoint holding such a
file is not loaded. Under DeepSpeed, whose own files (`pytorch_model/*.pt`: weights, ZeRO optimizer shards) DeepSpeed
unpickles fully, a checkpoint holding a file that names anything beyond tensors, plain data and DeepSpeed's own
data classes (`DEEPSPEED_DATA`) is not loaded, and every file is then loaded weights-only anyway. A checkpoint is
written under a temporary name and renamed, so one that exists is complete; one damaged afterwards is skipped
with a warning and the previous one is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from ophora.core.errors import InputError
from ophora.core.files import claim_folder, read_json, replace_dir, temp_dir, write_text
from ophora.train.config import TrainConfig

log = logging.getLogger(__name__)

# Classes in DeepSpeed's checkpoint files that are plain data (the ZeRO stage, a parameter fragment's offsets, the
# loss scale): the weights-only unpickler rebuilds them from their fields, running none of their code.
DEEPSPEED_DATA = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
                  "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler")
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format, a bare pickle


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done, micro-batches consumed, updates skipped for NaN/inf."""

    step: int = 0
    micro_step: int = 0
    skipped: int = 0


def run_identity(config: TrainConfig, inputs: dict) -> dict:
    """The settings and the state of the inputs (base weights, cache) that a run's result depends on."""
    return {**config.identity(), **inputs}


def claim_run(out: Path, config: TrainConfig, inputs: dict) -> None:
    """Check that `out` is empty or holds this same run: same settings, and the base weights and cache it read
    then unchanged (a cache prepared again at the same path, or a LoRA run's base re-saved, is another run)."""
    record = out / "run.json"
    identity = run_identity(config, inputs)
    old = read_json(record, "the record of this training run").get("identity") if record.is_file() else None
    if isinstance(old, dict) and not inputs.keys() & old.keys():
        log.warning("%s was started before runs recorded their inputs; resuming without checking them", out)
        identity = config.identity()
    claim_folder(out, "run.json", identity, "training run", "choose another out or delete it")


def write_run_record(out: Path, config: TrainConfig, inputs: dict, extra: dict) -> None:
    write_text(out / "run.json", json.dumps({"identity": run_identity(config, inputs),
                                               "config": dataclasses.asdict(config), **extra}, indent=1))


def _step_of(folder: Path) -> int | None:
    number = folder.name.removeprefix("step-")
    return int(number) if folder.name.startswith("step-") and number.isdigit() and folder.is_dir() else None


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first (complete when written; `resume` checks them)."""
    folder = out / "checkpoints"
    found = [p for p in folder.iterdir() if _step_of(p) is not None] if folder.is_dir() else []
    return sorted(found, key=_step_of)


def save_checkpoint(accelerator, out: Path, state: TrainState, lr_scheduler, keep: int) -> Path:
    """Save the full training state (all processes call this) and keep only the newest `keep` checkpoints."""
    final = out / "checkpoints" / f"step-{state.step:07d}"
    tmp = temp_dir(final)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text(tmp / "state.json", json.dumps({**dataclasses.asdict(state), "lr_scheduler": lr_scheduler.state_dict()}))
        replace_dir(tmp, final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def read_state(folder: Path) -> tuple[TrainState, dict | None]:
    """A checkpoint's state.json: the train state and the LR schedule's state, or InputError if damaged."""
    data = read_json(folder / "state.json", "checkpoint state")
    fields = [f.name for f in dataclasses.fields(TrainState)]
    if not all(isinstance(data.get(k), int) and data[k] >= 0 for k in fields) or data["step"] != _step_of(folder):
        raise InputError(f"checkpoint state {folder / 'state.json'} does not describe step {_step_of(folder)}")
    schedule = data.get("lr_scheduler")
    if schedule is not None and not isinstance(schedule, dict):
        raise InputError(f"checkpoint state {folder / 'state.json'} holds no valid LR schedule state")
    return TrainState(**{k: data[k] for k in fields}), schedule


def _deepspeed_data() -> list[type]:
    """The classes of DEEPSPEED_DATA that the DeepSpeed in use has (none when DeepSpeed is not in use)."""
    found = []
    if "deepspeed" not in sys.modules:  # accelerate has imported it when it runs DeepSpeed
        return found
    for name in DEEPSPEED_DATA:
        module, _, attr = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return found


def _refused_pickle(folder: Path) -> str:
    """The first of DeepSpeed's files in a checkpoint (those in its subfolders) that the weights-only unpickler,
    DeepSpeed's data classes allowed, would refuse, with what it names; '' when there is none. Nothing is unpickled:
    torch reads the pickles' opcodes (a file in another format is left to the weights-only load)."""
    with torch.serialization.safe_globals(_deepspeed_data()):
        for path in sorted(p for p in folder.glob("*/**/*") if p.is_file()):
            with path.open("rb") as f:
                head = f.read(4)
            if not head.startswith(TORCH_FILE_MAGIC):
                continue
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # not the zip format: the weights-only load below decides
                continue
            if unsafe:
                return f"{path.relative_to(folder)} (it names {', '.join(unsafe[:3])})"
    return ""


@contextlib.contextmanager
def _weights_only_loads():
    """Every `torch.load` in the block is weights-only, whatever its caller asks (DeepSpeed asks for full
    unpickling), with DeepSpeed's data classes allowed."""
    load = torch.load

    def weights_only_load(*args, **kwargs):
        return load(*args, **{**kwargs, "weights_only": True})

    with torch.serialization.safe_globals(_deepspeed_data()), mock.patch.object(torch, "load", weights_only_load):
        yield


def _load(accelerator, folder: Path, lr_scheduler) -> TrainState:
    state, schedule = read_state(folder)
    pickles = sorted(p.name for p in folder.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise InputError(f"it holds {pickles[0]}, a pickle ophora never loads (an older ophora's LR schedule: "
                         "delete the file to resume from this checkpoint)")
    refused = _refused_pickle(folder)
    if refused:
        raise InputError(f"it holds {refused}, which DeepSpeed would unpickle fully and ophora loads only weights-only "
                         "(a file planted in the run folder, or a DeepSpeed version that saves other classes)")
    try:
        with _weights_only_loads():
            accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused a file
        raise InputError(f"a file of it cannot be loaded weights-only ({str(exc).splitlines()[0][:200]})") from None
    if schedule is not None:
        lr_scheduler.load_state_dict(schedule)
    else:  # a checkpoint without the schedule's state: the schedule depends only on the step
        for _ in range(state.step):
            lr_scheduler.step()
    return state


def resume(accelerator, out: Path, lr_scheduler) -> TrainState:
    """Load the newest good checkpoint of `out` into the prepared objects; a fresh state when there is none.

    A damaged checkpoint (unreadable weights or state, a foreign pickle) is skipped with a warning naming it.
    """
    found = checkpoints(out)
    for i in range(len(found) - 1, -1, -1):
        try:
            state = _load(accelerator, found[i], lr_scheduler)
        except Exception as exc:  # safetensors, torch and JSON each raise their own kinds for a damaged file
            fallback = f"resuming from {found[i - 1].name} instead" if i else "no older checkpoint is left"
            log.warning("checkpoint %s is damaged and skipped (%s: %s); %s", found[i], type(exc).__name__,
                        " ".join(str(exc).split())[:300], fallback)
            continue
        log.info("resumed from %s (step %d)", found[i], state.step)
        return state
    if found:
        raise InputError(f"every checkpoint under {out / 'checkpoints'} is damaged (warnings above); delete them to "
                         "train from the start, or use another out")
    return TrainState()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the logged steps up to `step` (later ones will be trained again); drop a half-written or damaged line."""
    if not path.is_file():
        return
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
            logged = record["step"]
        except (ValueError, TypeError, KeyError, RecursionError):
            if line.strip():
                log.warning("%s: line %d is damaged (half-written?) and dropped", path, number)
            continue
        if isinstance(logged, int) and logged <= step:
            kept.append(line)
    write_text(path, "".join(ln + "\n" for ln in kept))
