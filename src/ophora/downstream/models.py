"""The phase classifiers: torchvision's video networks with a new head, from scratch or from K400 weights.

`mvit_v2_s` (the paper's MViTv2; its relative-position tables are made for 16 x 224 x 224 clips), `r2plus1d_18`
(lighter, any clip size) and `mvit_v2_tiny`, a two-stage MViTv2 of the same blocks at a fraction of the
width and depth for CPU smoke tests (no published weights). `--weights` reads a local state dict in
torchvision's Kinetics-400 layout (`mvit_v2_s-ae3be167.pth`, `r2plus1d_18-91a641e6.pth`, or the same as
.safetensors) without executing anything; every tensor but the 400-class head must fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.video import mvit_v2_s, r2plus1d_18
from torchvision.models.video.mvit import MSBlockConfig, MViT

from ophora.core.errors import ConfigError, ModelError
from ophora.core.models import state_dict_mismatch

MODELS = ("mvit_v2_s", "r2plus1d_18", "mvit_v2_tiny")
MVIT_CLIP = (16, 224)  # (frames, size) mvit_v2_s is built for
HEADS = {"mvit_v2_s": "head.1.", "mvit_v2_tiny": "head.1.", "r2plus1d_18": "fc."}  # replaced for the phases


def _tiny_mvit(frames: int, size: int, classes: int) -> MViT:
    blocks = [MSBlockConfig(1, 24, 24, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 4, 4]),
              MSBlockConfig(2, 24, 48, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 2, 2]),
              MSBlockConfig(2, 48, 48, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2])]
    return MViT(spatial_size=(size, size), temporal_size=frames, block_setting=blocks, residual_pool=True,
                residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, dropout=0.1,
                num_classes=classes)


def build_model(name: str, classes: int, frames: int, size: int) -> nn.Module:
    """A freshly initialised network for `classes` phases and frames x size x size clips."""
    if name == "mvit_v2_s":
        if (frames, size) != MVIT_CLIP:
            raise ConfigError(f"--model mvit_v2_s takes clips of {MVIT_CLIP[0]} frames of {MVIT_CLIP[1]}x{MVIT_CLIP[1]} "
                              f"(got --clip-frames {frames} --clip-size {size}); r2plus1d_18 takes any size")
        return mvit_v2_s(num_classes=classes)
    if name == "r2plus1d_18":
        return r2plus1d_18(num_classes=classes)
    if name == "mvit_v2_tiny":
        return _tiny_mvit(frames, size, classes)
    raise ModelError(f"--model {name!r}: not one of {', '.join(MODELS)}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a .pth/.pt (weights_only) or .safetensors file, or a one-line ModelError."""
    if not path.is_file():
        raise ModelError(f"--weights {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelError(f"--weights {path} is not a readable weights file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"--weights {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(model: nn.Module, name: str, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load every tensor but the classification head (kept new: other classes), strictly otherwise."""
    head = HEADS[name]
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    if mismatch := state_dict_mismatch(own, given):
        raise ModelError(f"--weights {path} does not fit {name} at this clip size: {mismatch} (the torchvision "
                         "Kinetics-400 layout is expected)")
    model.load_state_dict(given, strict=False)
