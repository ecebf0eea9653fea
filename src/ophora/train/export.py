"""Export a trained transformer as a complete diffusers pipeline folder next to the base model's other parts.

`ophora export RUN/checkpoints/step-N OUT` does it for any checkpoint of a run (`export_checkpoint`), so every
checkpoint can be sampled, evaluated or trained on like `RUN/final`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ophora.core.config import option
from ophora.core.errors import InputError, ModelError
from ophora.core.files import atomic_dir, read_json, write_json
from ophora.core.models import TRAIN_RECORD, file_digest, resolve_model
from ophora.core.versions import versions
from ophora.train.config import TrainConfig

log = logging.getLogger(__name__)

BASE_PARTS = ("model_index.json", "text_encoder", "tokenizer", "vae", "scheduler")
CHECKPOINT_WEIGHTS = "model.safetensors"  # accelerate's save_state name for the (one) prepared model


@dataclass
class ExportConfig:
    """`ophora export`: a diffusers pipeline folder from one checkpoint of a training run."""

    checkpoint: Path = option(help="a checkpoint folder of a run: RUN/checkpoints/step-N", positional=True)
    out: Path = option(help="new folder for the pipeline (replaced if it holds an earlier export)", positional=True)
    base: str | None = option(None, "the run's base pipeline, when it has moved since training (default: the "
                                    "model named in RUN/run.json)")


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a checkpoint folder of an ophora run (RUN/checkpoints/step-N with weights, RUN/run.json)."""
    path = Path(path)
    return (path.name.startswith("step-") and (path / CHECKPOINT_WEIGHTS).is_file()
            and (path.parent.parent / "run.json").is_file())


def merged_lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain transformer state dict of a model carrying peft LoRA layers, with the LoRA deltas merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                state[f"{name}.weight"] = module.base_layer.weight + delta
    return state


def export_pipeline(base: Path, transformer_config: dict, state_dict: dict[str, torch.Tensor], dest: Path,
                    record: dict) -> Path:
    """Write `dest` (replacing it): the base pipeline's text encoder, tokenizer, VAE, scheduler and the new transformer."""
    from diffusers import CogVideoXTransformer3DModel

    with atomic_dir(dest) as tmp:
        for part in BASE_PARTS:
            src = base / part
            if src.is_dir():
                shutil.copytree(src, tmp / part, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, tmp / part)
        transformer = CogVideoXTransformer3DModel.from_config(transformer_config)
        transformer.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
        transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        write_json(tmp / TRAIN_RECORD, record)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (the base model's VAE and T5 take no space twice), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_checkpoint(config: ExportConfig) -> Path:
    """Write `config.out`: the run's base pipeline with the checkpoint's transformer (LoRA merged)."""
    from diffusers import CogVideoXTransformer3DModel
    from safetensors.torch import load_file

    checkpoint = Path(config.checkpoint)
    if not is_checkpoint(checkpoint):
        raise InputError(f"{checkpoint} is not a checkpoint of an ophora run (RUN/checkpoints/step-N holding "
                         f"{CHECKPOINT_WEIGHTS}, with RUN/run.json)")
    out = Path(config.out)
    if out.resolve() in (checkpoint.resolve(), *checkpoint.resolve().parents):
        raise InputError(f"export folder {out} would replace the checkpoint or its run; choose another folder")
    if out.exists() and not (out / TRAIN_RECORD).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"export folder {out} exists and holds no exported pipeline; choose a new or empty folder")
    run = read_json(checkpoint.parent.parent / "run.json", "run record")
    train = run.get("config") if isinstance(run.get("config"), dict) else {}
    base_name = config.base or train.get("model")
    if not base_name:
        raise InputError(f"{checkpoint.parent.parent / 'run.json'} names no base model; pass --base PATH")
    try:
        base = resolve_model(str(base_name))
    except ModelError as exc:
        raise ModelError(f"{exc} (the run's base model; pass --base PATH if it has moved)") from None
    try:
        state = load_file(checkpoint / CHECKPOINT_WEIGHTS)
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors reports a damaged file as any of these
        raise InputError(f"checkpoint weights {checkpoint / CHECKPOINT_WEIGHTS} are damaged ({exc})") from None
    transformer_config = json.loads((base / "transformer" / "config.json").read_text(encoding="utf-8"))
    if any("lora_" in k for k in state):
        from peft import LoraConfig

        model = CogVideoXTransformer3DModel.from_config(transformer_config)
        defaults = TrainConfig()
        model.add_adapter(LoraConfig(r=int(train.get("lora_rank", defaults.lora_rank)),
                                     lora_alpha=int(train.get("lora_alpha", defaults.lora_alpha)),
                                     target_modules=list(train.get("lora_targets", defaults.lora_targets)),
                                     init_lora_weights=True))
        _load_state(model, state, checkpoint)
        state = merged_lora_state_dict(model)
    step = int(checkpoint.name.removeprefix("step-"))
    record = {"versions": versions(), "base_model": str(base_name), "steps": step, "checkpoint": str(checkpoint),
              "checkpoint_weights": file_digest(checkpoint / CHECKPOINT_WEIGHTS, with_mtime=True),
              "video": run.get("video"), "config": train,
              "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        return export_pipeline(base, transformer_config, state, out, record)
    except RuntimeError as exc:  # the weights do not fit the base model's transformer
        raise InputError(f"checkpoint {checkpoint} does not fit the transformer of {base}: "
                         f"{' '.join(str(exc).split())[:300]}") from None


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"checkpoint {checkpoint} does not fit its run's LoRA settings: "
                         f"{' '.join(str(exc).split())[:300]}") from None


def checkpoint_pipeline(checkpoint: Path) -> Path:
    """The pipeline folder of a checkpoint, `RUN/exports/step-N`, exported now unless it holds these weights already."""
    checkpoint = Path(checkpoint)
    dest = checkpoint.parent.parent / "exports" / checkpoint.name
    record = dest / TRAIN_RECORD
    weights = file_digest(checkpoint / CHECKPOINT_WEIGHTS, with_mtime=True)
    if record.is_file() and read_json(record, "export record").get("checkpoint_weights") == weights:
        return dest
    log.info("exporting checkpoint %s as a pipeline to %s (reused next time)", checkpoint, dest)
    return export_checkpoint(ExportConfig(checkpoint, dest))
