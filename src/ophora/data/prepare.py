"""`ophora prepare`: encode every clip of a dataset once (VAE latents + T5 embeddings) for training.

Each rank (torchrun sets RANK/WORLD_SIZE) takes every WORLD_SIZE-th clip; a clip whose file exists is
skipped, so an interrupted run resumes where it stopped. Clips that cannot be read are recorded in
`rejects.csv` and the rest go on. Rank 0 finally writes `index.csv` and `cache.json` (see data/cache.py).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ophora import __version__
from ophora.data.cache import CACHE_FORMAT, clip_file, encoder_fingerprint, save_clip, write_index
from ophora.files import write_csv, write_text
from ophora.ranks import barrier, init_ranks
from ophora.data.dataset import read_pairs
from ophora.data.frames import FrameSettings, decode_frames, to_vae_input
from ophora.errors import InputError, OphoraError
from ophora.models import REQUIRED_PARTS, parse_dtype, resolve_model

log = logging.getLogger(__name__)

ENCODER_PARTS = {k: v for k, v in REQUIRED_PARTS.items() if not k.startswith("transformer")}
MAX_TOKENS = 226


@dataclass
class PrepareConfig:
    """Everything `ophora prepare` needs; the CLI flags map one to one."""

    dataset: Path
    model: str
    out: Path
    csv: str = "instructions.csv"
    frame_buckets: tuple[int, ...] = (49,)
    target_fps: float = 8.0
    heights: tuple[int, ...] = (480, 720)
    widths: tuple[int, ...] = (720, 960)
    dtype: str | None = None
    device: str | None = None
    vae_tiling: bool = False

    @property
    def frames(self) -> FrameSettings:
        return FrameSettings(tuple(self.frame_buckets), self.target_fps, tuple(self.heights), tuple(self.widths))


@dataclass
class PrepareSummary:
    made: int = 0
    skipped: int = 0
    rejected: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)


def cache_settings(config: PrepareConfig, fingerprint: str, dtype: torch.dtype) -> dict:
    """What the cache's content depends on: two runs may share a cache only if these agree."""
    settings = {"encoder_fingerprint": fingerprint, "frames": asdict(config.frames),
                "dtype": str(dtype).removeprefix("torch."), "max_tokens": MAX_TOKENS}
    return json.loads(json.dumps(settings))  # tuples become lists, as when read back from prepare.json


def claim_cache(out: Path, settings: dict, rank: int) -> None:
    """Record the settings in a new cache, or check that an existing cache was made with the same ones."""
    path = out / "prepare.json"
    if path.is_file():
        old = json.loads(path.read_text())["settings"]
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise InputError(f"{out} holds a cache made with other settings ({', '.join(changed)} differ); "
                             "use another --out or delete it")
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no latent cache; choose another --out")
    barrier()
    if rank == 0 and not path.is_file():
        write_text(path, json.dumps({"settings": settings}, indent=1))
    barrier()


def encode_prompt(tokenizer, text_encoder, text: str, device: str) -> torch.Tensor:
    """T5 embeddings (226, D) exactly as CogVideoXPipeline makes them."""
    ids = tokenizer(text, padding="max_length", max_length=MAX_TOKENS, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(device))[0][0]


def encode_video(vae, frames, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, logvar), each (C, F', H/8, W/8), of uint8 frames (F, H, W, 3)."""
    with torch.no_grad():
        dist = vae.encode(to_vae_input(frames).to(device, dtype)).latent_dist
    return dist.mean[0], dist.logvar[0]


def load_encoders(folder: Path, device: str, dtype: torch.dtype):
    """Tokenizer, T5 encoder and VAE of a pipeline folder, frozen, in eval mode."""
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype).to(device).eval()
    vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae", torch_dtype=dtype).to(device).eval()
    return tokenizer, text_encoder, vae


def prepare(config: PrepareConfig) -> PrepareSummary:
    """Encode the dataset's clips into the cache `config.out`; returns this rank's counts."""
    config.frames.check()
    pairs = read_pairs(config.dataset, config.csv)
    folder = resolve_model(config.model, ENCODER_PARTS)
    rank, world, local_rank = astuple(init_ranks())
    device = config.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(config.dtype, device)
    out = Path(config.out)
    settings = cache_settings(config, encoder_fingerprint(folder), dtype)
    claim_cache(out, settings, rank)

    tokenizer, text_encoder, vae = load_encoders(folder, device, dtype)
    if config.vae_tiling:
        vae.enable_tiling()
    summary = PrepareSummary()
    mine = pairs[rank::world]
    for pair in tqdm(mine, desc=f"prepare (rank {rank})", disable=None if rank == 0 else True):
        if clip_file(out, pair.clip_id).is_file():
            summary.skipped += 1
            continue
        try:
            if not pair.instruction:
                raise InputError("empty instruction")
            frames, info = decode_frames(pair.path, config.frames)
            mean, logvar = encode_video(vae, frames, device, dtype)
            embeds = encode_prompt(tokenizer, text_encoder, pair.instruction, device)
        except OphoraError as exc:
            log.warning("skipping %s: %s", pair.clip_id, exc)
            summary.rejects.append((pair.clip_id, str(exc)))
            continue
        meta = {"clip id": pair.clip_id, "instruction": pair.instruction, "size": list(frames.shape[1:3]), **info}
        save_clip(out, pair.clip_id, {"latent_mean": mean.cpu(), "latent_logvar": logvar.cpu(),
                                      "prompt_embeds": embeds.cpu()}, meta)
        summary.made += 1
    summary.rejected = len(summary.rejects)
    _write_rejects(out / f".rejects-rank{rank}.csv", summary.rejects)
    barrier()
    if rank == 0:
        _finish(out, config, settings, folder, world, vae.config.scaling_factor)
    barrier()
    log.info("rank %d: %d clips encoded, %d already done, %d rejected", rank, summary.made, summary.skipped, summary.rejected)
    return summary


def _write_rejects(path: Path, rejects: list[tuple[str, str]]) -> None:
    write_csv(path, ["clip id", "reason"], rejects)


def _finish(out: Path, config: PrepareConfig, settings: dict, folder: Path, world: int, scaling_factor: float) -> None:
    """Gather the ranks' rejects, index the clip files and write cache.json."""
    rejects = []
    for rank in range(world):
        part = out / f".rejects-rank{rank}.csv"
        with part.open(newline="", encoding="utf-8") as f:
            rejects += list(csv.reader(f))[1:]
        part.unlink()
    _write_rejects(out / "rejects.csv", rejects)
    rows = write_index(out)
    shapes = sorted({r["latent shape"] for r in rows})
    info = {
        "format": CACHE_FORMAT, **settings, "model": config.model, "model_folder": str(folder),
        "vae_scaling_factor": scaling_factor, "latent_shapes": [json.loads(s) for s in shapes],
        "counts": {"clips": len(rows), "rejected": len(rejects)}, "csv": config.csv, "dataset": str(config.dataset),
        "versions": _versions(), "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(out / "cache.json", json.dumps(info, indent=1))


def _versions() -> dict:
    import diffusers
    import transformers

    return {"ophora": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}
