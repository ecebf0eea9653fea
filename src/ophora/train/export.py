"""Export a trained transformer as a complete diffusers pipeline folder next to the base model's other parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ophora.core.files import atomic_dir, write_json
from ophora.core.models import TRAIN_RECORD

BASE_PARTS = ("model_index.json", "text_encoder", "tokenizer", "vae", "scheduler")


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
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / part)
        transformer = CogVideoXTransformer3DModel.from_config(transformer_config)
        transformer.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
        transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        write_json(tmp / TRAIN_RECORD, record)
    return dest
