"""The I3D video classifier (Inception-v1 inflated to 3D, Kinetics-400) used for FVD, written out here.

Two published files work:
- `i3d_pretrained_400.pt`: a state dict in the layout of pytorch-i3d's `InceptionI3d` (used by VideoGPT,
  TATS and cd-fvd), read with `weights_only=True` into the network below;
- `i3d_torchscript.pt`: StyleGAN-V's TorchScript port of the TF-Hub I3D, loaded with `torch.jit.load` and
  called with `rescale=False, resize=False, return_features=True` on clips we preprocess ourselves.
Both give 400 logits per clip. Convolutions and pools pad like TensorFlow's "SAME" (more at the end when
the padding is odd); batch norm uses epsilon 1e-5 as in the ported file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ophora.core.errors import ModelError
from ophora.evaluate.weights import I3D, check_file, is_torchscript, load_into, load_state_dict

SIZE = 224
VARIANTS = ("fvd2048_16f", "center_crop")


def _same_pad(x: torch.Tensor, kernel: List[int], stride: List[int]) -> torch.Tensor:
    pads: List[int] = []
    for i in range(3):  # F.pad lists the last dimension first: width, height, time
        size, k, s = x.shape[4 - i], kernel[2 - i], stride[2 - i]
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append(total // 2)
        pads.append(total - total // 2)
    return F.pad(x, pads)


class Unit(nn.Module):
    """Conv3d (SAME padding) + optional batch norm + optional ReLU; parameter names as in pytorch-i3d."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), norm: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = list(kernel), list(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, tuple(kernel), stride=tuple(stride), bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-5) if norm else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class SamePool(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = list(kernel), list(stride)

    def forward(self, x):
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception module: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1 (names b0, b1a, b1b, b2a, b2b, b3b)."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit(cin, widths[0])
        self.b1a = Unit(cin, widths[1])
        self.b1b = Unit(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit(cin, widths[3])
        self.b2b = Unit(widths[3], widths[4], (3, 3, 3))
        self.pool = SamePool((3, 3, 3), (1, 1, 1))
        self.b3b = Unit(cin, widths[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.pool(x))], 1)


_MIXED = {  # name: (input channels, branch widths)
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D for Kinetics-400: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400) logits averaged over time."""

    def __init__(self, classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit(64, 64)
        self.Conv3d_2c_3x3 = Unit(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = Mixed(*_MIXED["Mixed_3b"]), Mixed(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = SamePool((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, Mixed(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = SamePool((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = Mixed(*_MIXED["Mixed_5b"]), Mixed(*_MIXED["Mixed_5c"])
        self.logits = Unit(1024, classes, norm=False, relu=False, bias=True)

    def forward(self, x):
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # dropout (identity in eval) would follow here
        return self.logits(x).mean(dim=(2, 3, 4))


class TorchScriptI3D(nn.Module):
    """StyleGAN-V's TorchScript detector behind the same call: preprocessed clips in, 400 logits out."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x, rescale=False, resize=False, return_features=True)


def load_i3d(path: str | Path, device: str = "cpu") -> tuple[nn.Module, str]:
    """The I3D network of `path` on `device` in eval mode, and the file's format ('state_dict' or 'torchscript')."""
    path = check_file(Path(path), I3D)
    if is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"--i3d-weights {path} is a TorchScript archive that does not load "
                             f"({type(exc).__name__}); FVD needs {I3D.name}") from None
        model, kind = TorchScriptI3D(module), "torchscript"
    else:
        model, kind = InceptionI3d(), "state_dict"
        load_into(model, load_state_dict(path, I3D), path, I3D)
    model = model.eval().requires_grad_(False).to(device)
    if kind == "torchscript":
        try:
            with torch.no_grad():
                probe = model(torch.zeros(1, 3, 16, SIZE, SIZE, device=device))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"--i3d-weights {path}: the TorchScript module does not take (clip, rescale, resize, "
                             f"return_features) like StyleGAN-V's i3d_torchscript.pt ({type(exc).__name__})") from None
        if probe.shape != (1, 400):
            raise ModelError(f"--i3d-weights {path}: the TorchScript module returns {tuple(probe.shape)}, not 400 "
                             "features per clip")
    return model, kind


def preprocess(clips: torch.Tensor, variant: str = "fvd2048_16f") -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) -> float (B, 3, T, 224, 224) in [-1, 1].

    `fvd2048_16f` (StyleGAN-V, cd-fvd): bilinear resize of the whole frame to 224x224, aspect ratio not kept.
    `center_crop`: bilinear resize of the short side to 224, then the central 224x224.
    """
    b, t, h, w, c = clips.shape
    frames = clips.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()
    if variant == "fvd2048_16f":
        frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    elif variant == "center_crop":
        scale = SIZE / min(h, w)
        size = (SIZE, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), SIZE)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
        frames = frames[:, :, top:top + SIZE, left:left + SIZE]
    else:
        raise ValueError(f"unknown FVD variant {variant!r}")
    frames = 2.0 * frames / 255.0 - 1.0
    return frames.reshape(b, t, c, SIZE, SIZE).transpose(1, 2).contiguous()


@torch.no_grad()
def i3d_features(model: nn.Module, clips: np.ndarray, variant: str = "fvd2048_16f", batch_size: int = 8) -> np.ndarray:
    """(B, 400) float64 logits of uint8 clips (B, T, H, W, 3)."""
    device = next(iter(model.parameters()), torch.zeros(0)).device
    out = []
    for start in range(0, len(clips), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(clips[start:start + batch_size])).to(device)
        out.append(model(preprocess(chunk, variant)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 400))
