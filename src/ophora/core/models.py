"""Find, check and load CogVideoX-family pipelines (local folders or hub ids), dtypes and schedulers."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch

from ophora.core.errors import ModelError
from ophora.core.files import read_json

log = logging.getLogger(__name__)

# What a complete diffusers CogVideoX pipeline folder holds: (component, files of which one must exist).
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "model_index.json": ("model_index.json",),
    "transformer": ("transformer/config.json",),
    "transformer weights": (
        "transformer/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
    ),
    "vae": ("vae/config.json",),
    "vae weights": ("vae/diffusion_pytorch_model.safetensors",),
    "text_encoder": ("text_encoder/config.json",),
    "text_encoder weights": ("text_encoder/model.safetensors", "text_encoder/model.safetensors.index.json"),
    "tokenizer": ("tokenizer/spiece.model", "tokenizer/tokenizer.json"),
    "scheduler": ("scheduler/scheduler_config.json",),
}

def missing_parts(folder: Path, parts: dict[str, tuple[str, ...]] = REQUIRED_PARTS) -> list[str]:
    """Names of the pipeline parts that `folder` lacks (empty when it is complete)."""
    return [name for name, files in parts.items() if not any((folder / f).is_file() for f in files)]


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str, parts: dict[str, tuple[str, ...]] = REQUIRED_PARTS) -> Path:
    """Return a local folder holding the pipeline `model` (a folder or a hub id), or raise ModelError.

    A local folder is checked for completeness; a hub id is fetched (or found in the local hub cache)
    with huggingface_hub. Neither path ever runs remote code.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        missing = missing_parts(path, parts)
        if missing:
            raise ModelError(f"model folder {path} is incomplete: missing {', '.join(missing)}")
        return path
    if not HUB_ID.match(model):
        raise ModelError(f"model {model!r} is neither an existing local folder nor a hub id of the form 'owner/name'")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "not obtainable"
        raise ModelError(
            f"cannot get {model!r} from the Hugging Face hub ({type(exc).__name__}); "
            "download it elsewhere and pass the local folder with --model PATH"
        ) from None
    missing = missing_parts(local, parts)
    if missing:
        raise ModelError(f"hub model {model!r} is incomplete: missing {', '.join(missing)}")
    return local


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on GPUs, fp32 on the CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: str | None, device: str | torch.device) -> torch.dtype:
    """Map 'bf16' | 'fp16' | 'fp32' (or None for the device default) to a torch dtype."""
    if name is None or name == "auto":
        return default_dtype(device)
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ModelError(f"--dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def make_scheduler(kind: str, config: dict):
    """A CogVideoX scheduler ('dpm' or 'ddim') from a scheduler config, with trailing timestep spacing."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    classes = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}
    if kind not in classes:
        raise ModelError(f"scheduler must be one of {', '.join(classes)}, got {kind!r}")
    return classes[kind].from_config(config, timestep_spacing="trailing")


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype | None = None, scheduler: str = "dpm"):
    """Load a CogVideoX pipeline from a local folder or hub id onto `device`."""
    from diffusers import CogVideoXPipeline

    folder = resolve_model(model)
    dtype = dtype or default_dtype(device)
    try:
        pipe = CogVideoXPipeline.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(f"cannot load the pipeline in {folder}: {exc}") from None
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe.to(device)


def state_dict_mismatch(own: dict, given: dict) -> str:
    """How the tensors of a weights file fail to fit a network's state dict ("" when they fit)."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    wrong = [k for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
    return ", ".join(p for p in parts if p)


# CogVideoX-2b's own video settings: what a pipeline folder without an ophora training record is sampled at.
COGVIDEOX_VIDEO = {"frames": 49, "height": 480, "width": 720, "fps": 8}


def frames_problem(frames: int) -> str | None:
    """Why CogVideoX cannot make videos of `frames` frames, or None. Its causal VAE decodes (frames - 1) / 4 + 1
    latent frames to 4 frames each after the first, and only an odd number of them gives `frames` back (13 frames
    would come out as 16), so frame counts are 8k+1 in sampling, in validation and in the training clips."""
    if frames < 1 or (frames - 1) % 8:
        return f"must be of the form 8k+1 (9, 17, 25, 33, 41, 49), got {frames}"
    return None


TRAIN_RECORD = "ophora_train.json"


def video_settings(folder: Path) -> dict:
    """Frames, height, width and fps a pipeline folder was trained for: from ophora's training record, else CogVideoX-2b's."""
    record = folder / TRAIN_RECORD
    if record.is_file():
        video = read_json(record, "training record").get("video")
        if isinstance(video, dict) and all(isinstance(video.get(k), (int, float)) for k in COGVIDEOX_VIDEO):
            return {k: video[k] for k in COGVIDEOX_VIDEO}
    return dict(COGVIDEOX_VIDEO)


def file_digest(path: Path, with_mtime: bool, sample: int = 1 << 20) -> str:
    """Size, optionally mtime, and the first and last `sample` bytes (a safetensors file's header among them).

    Cheap for 10 GB weight files. Content alone recognises a copy; with the mtime, a file re-saved in place
    (further training into the same folder) is recognised as new even where its sampled bytes agree.
    """
    stat = path.stat()
    h = hashlib.sha256(str(stat.st_size).encode())
    if with_mtime:
        h.update(str(stat.st_mtime_ns).encode())
    with path.open("rb") as f:
        h.update(f.read(sample))
        f.seek(max(0, stat.st_size - sample))
        h.update(f.read(sample))
    return h.hexdigest()


def fingerprint(paths: list[Path], with_mtime: bool) -> str:
    """A short hash of files and folders: small files by content, weight files by `file_digest`."""
    h = hashlib.sha256()
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for f in files:
            if any(part.startswith(".") for part in f.relative_to(top.parent).parts):
                continue
            h.update(f"{f.relative_to(top.parent)}".encode())
            h.update(file_digest(f, with_mtime).encode() if f.suffix == ".safetensors" else f.read_bytes())
    return h.hexdigest()[:16]


def encoder_fingerprint(model_dir: Path) -> str:
    """Identifies the VAE and text encoder of a pipeline folder (what a latent cache depends on), by content."""
    return fingerprint([model_dir / part for part in ("vae", "text_encoder", "tokenizer")], with_mtime=False)


def weights_fingerprint(model_dir: Path, extra: list[Path] = ()) -> str:
    """Identifies the weights a pipeline folder (plus e.g. LoRA files) holds now, re-saves included."""
    parts = [model_dir / p for p in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")]
    return fingerprint([p for p in (*parts, *extra) if p.exists()], with_mtime=True)
