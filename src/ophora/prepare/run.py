"""`ophora prepare`: encode every clip of a dataset once (VAE latents + T5 embeddings) for training.

Each rank (torchrun sets RANK/WORLD_SIZE) takes every WORLD_SIZE-th clip; a clip whose file exists is
skipped, so an interrupted run resumes where it stopped. Clips that cannot be used (undecodable,
too short, no instruction) and clips that failed unexpectedly are recorded in `rejects.csv` with the error
type, and the rest go on. Rank 0 finally writes `index.csv` and `cache.json` (see core/latent_cache.py).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ophora.core.latent_cache import CACHE_FORMAT, clip_file, clip_problem, save_clip, write_index
from ophora.core.files import as_json_value, claim_folder, remove_partials, write_csv, write_json
from ophora.core.ranks import barrier, init_ranks, pick_device
from ophora.core.versions import versions
from ophora.core.dataset import read_pairs
from ophora.prepare.frames import FrameSettings, decode_frames, to_vae_input
from ophora.core.config import option
from ophora.core.errors import InputError, OphoraError, failure_record
from ophora.core.models import REQUIRED_PARTS, encoder_fingerprint, parse_dtype, resolve_model
from ophora.core.signals import stop_requests

log = logging.getLogger(__name__)

ENCODER_PARTS = {k: v for k, v in REQUIRED_PARTS.items() if not k.startswith("transformer")}
MAX_TOKENS = 226
DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class PrepareConfig:
    """Everything `ophora prepare` needs; the CLI flags are made from the fields."""

    dataset: Path = option(help="dataset folder in the Ophora-160K layout: clips/<clip id>.mp4 + CSV 'clip id,instruction'",
                           positional=True)
    model: str = option(help="pipeline whose VAE and T5 encode the clips (hub id or local folder)")
    out: Path = option(help="cache folder (clips/*.safetensors, index.csv, cache.json, rejects.csv)")
    csv: str = option("instructions.csv", "CSV in the dataset folder (privacy_preserved.csv for P2FT)")
    frame_buckets: tuple[int, ...] = option((49,), "frames per training sample, 4k+1 each, e.g. 49 or 17,33,49",
                                            metavar="N[,N...]", deprecated=("--frames",))
    target_fps: float = option(8.0, "frame rate at which frames are taken from each clip", deprecated=("--fps",))
    heights: tuple[int, ...] = option((480, 720), "height buckets (multiples of 16)", metavar="H[,H...]")
    widths: tuple[int, ...] = option((720, 960), "width buckets (multiples of 16)", metavar="W[,W...]")
    dtype: str | None = option(None, "encoder precision; default: bf16 on GPU, fp32 on CPU", choices=DTYPES)
    device: str | None = option(None, "default: cuda:<local rank> if a GPU is present, else cpu")
    vae_tiling: bool = option(False, "encode in tiles (less GPU memory)")

    def __post_init__(self) -> None:
        self.dataset, self.out = Path(self.dataset), Path(self.out)
        self.frame_buckets, self.heights, self.widths = (tuple(self.frame_buckets), tuple(self.heights),
                                                         tuple(self.widths))

    @property
    def frames(self) -> FrameSettings:
        return FrameSettings(self.frame_buckets, self.target_fps, self.heights, self.widths)


@dataclass
class PrepareSummary:
    made: int = 0
    skipped: int = 0
    rejected: int = 0
    failed: int = 0
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # clip id, error type, reason: bad input
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # unexpected errors (retried on a rerun)


def cache_settings(config: PrepareConfig, fingerprint: str, dtype: torch.dtype) -> dict:
    """What the cache's content depends on: two runs may share a cache only if these agree."""
    return as_json_value({"encoder_fingerprint": fingerprint, "frames": asdict(config.frames),
                          "dtype": str(dtype).removeprefix("torch."), "max_tokens": MAX_TOKENS})


def claim_cache(out: Path, settings: dict, rank: int) -> None:
    """Record the settings in a new cache, or check that an existing cache was made with the same ones."""
    resumed = claim_folder(out, "prepare.json", settings, "latent cache", "use another --out or delete it")
    barrier()
    if rank == 0 and not resumed:
        write_json(out / "prepare.json", {"identity": settings})
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
    # 1. settings, dataset and model, checked before anything is loaded
    config.frames.check()
    pairs = read_pairs(config.dataset, config.csv)
    folder = resolve_model(config.model, ENCODER_PARTS)
    ranks = init_ranks()
    device = pick_device(config.device, ranks)
    dtype = parse_dtype(config.dtype, device)
    out = Path(config.out)
    settings = cache_settings(config, encoder_fingerprint(folder), dtype)
    claim_cache(out, settings, ranks.rank)
    if ranks.rank == 0:
        remove_partials(out / "clips")  # half-written clip files of a killed run

    # 2. encode this rank's clips; one clip's failure is recorded and the rest go on (core/errors.py)
    tokenizer, text_encoder, vae = load_encoders(folder, device, dtype)
    if config.vae_tiling:
        vae.enable_tiling()
    summary = PrepareSummary()
    mine = pairs[ranks.rank::ranks.world]
    with stop_requests("clip") as stop:  # SIGINT/SIGTERM: finish the clip in hand, then stop (core/signals.py)
        for pair in tqdm(mine, desc=f"prepare (rank {ranks.rank})", disable=None if ranks.rank == 0 else True):
            stop.check(f"{summary.made} clips encoded in this run, {len(mine) - summary.made - summary.skipped} left")
            if _intact(clip_file(out, pair.clip_id)):
                summary.skipped += 1
                continue
            try:
                encode_pair(pair, out, config, (tokenizer, text_encoder, vae), device, dtype)
            except Exception as exc:
                failure = failure_record(exc, log, f"clip {pair.clip_id}")
                if isinstance(exc, OphoraError):
                    summary.rejects.append((pair.clip_id, failure["error_type"], failure["error"]))
                else:
                    summary.failures.append((pair.clip_id, failure["error_type"], failure["error"]))
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                continue
            summary.made += 1
    summary.rejected, summary.failed = len(summary.rejects), len(summary.failures)

    # 3. rank 0 gathers the rejects and failures and writes the index and cache.json
    _write_rejects(out / f".rejects-rank{ranks.rank}.csv", summary.rejects + summary.failures)
    barrier()
    if ranks.rank == 0:
        _finish(out, config, settings, folder, ranks.world, vae.config.scaling_factor)
    barrier()
    log.info("rank %d: %d clips encoded, %d already done, %d rejected, %d failed", ranks.rank, summary.made,
             summary.skipped, summary.rejected, summary.failed)
    return summary


def _intact(path: Path) -> bool:
    """Whether a clip file of an earlier run can be kept; a damaged one is encoded again."""
    if not path.is_file():
        return False
    problem = clip_problem(path)
    if problem:
        log.warning("cache clip %s is damaged (%s); encoding it again", path, problem)
    return not problem


def encode_pair(pair, out: Path, config: PrepareConfig, encoders, device: str, dtype: torch.dtype) -> None:
    """Decode, encode and save one clip."""
    tokenizer, text_encoder, vae = encoders
    if not pair.instruction:
        raise InputError("empty instruction")
    frames, info = decode_frames(pair.path, config.frames)
    mean, logvar = encode_video(vae, frames, device, dtype)
    embeds = encode_prompt(tokenizer, text_encoder, pair.instruction, device)
    meta = {"clip id": pair.clip_id, "instruction": pair.instruction, "size": list(frames.shape[1:3]), **info}
    save_clip(out, pair.clip_id, {"latent_mean": mean.cpu(), "latent_logvar": logvar.cpu(),
                                  "prompt_embeds": embeds.cpu()}, meta)


def _write_rejects(path: Path, rejects: list[tuple[str, str, str]]) -> None:
    write_csv(path, ["clip id", "error_type", "reason"], rejects)


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
        "versions": versions(), "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "cache.json", info)
