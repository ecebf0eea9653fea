"""Reading published weight files safely (no pickled code) and naming them in errors and records."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ophora.core.errors import InputError, ModelError
from ophora.core.models import state_dict_mismatch


@dataclass(frozen=True)
class WeightsFile:
    """A published network file: its name, where it is published and the flag that passes it."""

    name: str
    url: str
    flag: str
    metric: str

    def missing(self) -> str:
        """The one-line reason a metric is skipped when no file was given."""
        return f"{self.metric} needs {self.name} (published at {self.url}); pass {self.flag} FILE"


INCEPTION = WeightsFile("pt_inception-2015-12-05-6726825d.pth",
                        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                        "pt_inception-2015-12-05-6726825d.pth", "--inception-weights", "FID")
I3D = WeightsFile("i3d_pretrained_400.pt or i3d_torchscript.pt",
                  "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt (state dict) or "
                  "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V TorchScript)",
                  "--i3d-weights", "FVD")

_SHA: dict[tuple[str, int, int], str] = {}


def sha256(path: Path) -> str:
    """The file's sha256 (remembered per path, size and modification time within a process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA[key] = digest.hexdigest()
    return _SHA[key]


def check_file(path: Path, spec: WeightsFile) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{spec.flag} {path}: file not found ({spec.metric} needs {spec.name}, published at "
                         f"{spec.url})")
    return path


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding compiled code), not a plain state dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_dict(path: Path, spec: WeightsFile) -> dict[str, torch.Tensor]:
    """A state dict read with `weights_only=True` (tensors only, nothing executed), or a one-line ModelError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        reason = " ".join(str(exc).split())[:160]
        raise ModelError(f"{spec.flag} {path} is not a readable PyTorch weights file ({type(exc).__name__}: "
                         f"{reason}); {spec.metric} needs {spec.name}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{spec.flag} {path} holds no state dict of tensors; {spec.metric} needs {spec.name}")
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, spec: WeightsFile) -> None:
    """Load `state` strictly, naming what does not fit in one line."""
    own = module.state_dict()
    if mismatch := state_dict_mismatch(own, state):
        raise ModelError(f"{spec.flag} {path} is not {spec.name}: its tensors do not fit the network ({mismatch})")
    module.load_state_dict(state, strict=True)
