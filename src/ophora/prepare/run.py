"""`ophora prepare`: encode every clip of a dataset once (VAE latents + T5 embeddings) for training.

Each rank (torchrun sets RANK/WORLD_SIZE) takes every WORLD_SIZE-th clip; a clip whose file exists, intact
and made from the same instruction and video file, is skipped, so an interrupted run resumes where it stopped
(an outdated one is encoded again, and the index lists only the dataset's clips). Clips that cannot be used (undecodable,
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

import numpy as np
import torch
from tqdm.auto import tqdm

from ophora.core.latent_cache import CACHE_FORMAT, clip_file, clip_problem, read_clip_header, save_clip, write_index
from ophora.core.files import as_json_value, claim_folder, remove_partials, write_csv, write_json
from ophora.core.ranks import barrier, init_ranks, pick_device
from ophora.core.versions import versions
from ophora.core.dataset import Pair, read_pairs
from ophora.prepare.encode import MAX_TOKENS, Encoders
from ophora.prepare.frames import FrameSettings, decode_frames
from ophora.core.config import option
from ophora.core.errors import ConfigError, InputError, OphoraError, failure_record
from ophora.core.models import REQUIRED_PARTS, encoder_fingerprint, file_digest, parse_dtype, resolve_model
from ophora.core.signals import stop_requests
from ophora.core.vae_speed import AUTO_ON_OFF, compile_wanted, speed_up_vae

log = logging.getLogger(__name__)

ENCODER_PARTS = {k: v for k, v in REQUIRED_PARTS.items() if not k.startswith("transformer")}
DTYPES = ("bf16", "fp16", "fp32")
# --vae-compile auto compiles the encoder for this many clips: on the H200 each clip size compiles in ~90 s and
# then saves ~0.23 s a clip (benchmarks/results/prepare_gpu_h200.json), so it pays from about 400 clips of a size
VAE_COMPILE_MIN_CLIPS = 1000


@dataclass
class PrepareConfig:
    """Everything `ophora prepare` needs; the CLI flags are made from the fields."""

    dataset: Path = option(help="dataset folder in the Ophora-160K layout: clips/<clip id>.mp4 + CSV 'clip id,instruction'",
                           positional=True)
    model: str = option(help="pipeline whose VAE and T5 encode the clips (hub id or local folder)")
    out: Path = option(help="cache folder (clips/*.safetensors, index.csv, cache.json, rejects.csv)")
    csv: str = option("instructions.csv", "CSV in the dataset folder (privacy_preserved.csv for P2FT)")
    frame_buckets: tuple[int, ...] = option((49,), "frames per training sample, 8k+1 each, e.g. 49 or 17,33,49",
                                            metavar="N[,N...]", deprecated=("--frames",))
    target_fps: float = option(8.0, "frame rate at which frames are taken from each clip", deprecated=("--fps",))
    heights: tuple[int, ...] = option((480, 720), "height buckets (multiples of 16)", metavar="H[,H...]")
    widths: tuple[int, ...] = option((720, 960), "width buckets (multiples of 16)", metavar="W[,W...]")
    dtype: str | None = option(None, "encoder precision; default: bf16 on GPU, fp32 on CPU", choices=DTYPES)
    device: str | None = option(None, "default: cuda:<local rank> if a GPU is present, else cpu")
    vae_tiling: bool = option(False, "encode in tiles (less GPU memory; without it a clip that does not fit untiled "
                                     "is encoded in tiles anyway, with a warning)")
    encode_batch: int | None = option(None, "clips of one size bucket encoded together by the VAE and T5 (default: 4 "
                                            "on a GPU, 1 on the CPU); a batch that runs out of GPU memory is encoded "
                                            "in halves")
    vae_channels_last: bool = option(False, "GPU: the VAE in channels-last (NDHWC) memory layout")
    vae_compile: str = option("auto", "GPU: torch.compile the VAE encoder (each clip size pays ~90 s of compiling on "
                              "an H200, then 0.52 instead of 0.75 s a 49x480x720 clip at batch 4); auto = on when "
                              f"this rank has at least {VAE_COMPILE_MIN_CLIPS} clips", choices=AUTO_ON_OFF)

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
    if config.encode_batch is not None and config.encode_batch < 1:
        raise ConfigError(f"--encode-batch must be at least 1, got {config.encode_batch}")
    if config.vae_compile not in AUTO_ON_OFF:
        raise ConfigError(f"--vae-compile must be auto, on or off, got {config.vae_compile!r}")
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
    mine = pairs[ranks.rank::ranks.world]
    compile_vae = compile_wanted(config.vae_compile, device, len(mine), VAE_COMPILE_MIN_CLIPS)
    speed_up_vae(vae, config.vae_channels_last, compile_vae, device, "encoder", "prepare")
    batch = config.encode_batch or (4 if device.startswith("cuda") else 1)
    encoders = Encoders(tokenizer, text_encoder, vae, device, dtype, batch)
    log.info("prepare: clips of one size encoded %d at a time%s", batch, ", in tiles" if config.vae_tiling else "")
    summary = PrepareSummary()
    pending: dict[tuple, list[Clip]] = {}  # decoded clips waiting for their size bucket's batch to fill

    def left() -> str:
        return f"{summary.made} clips encoded in this run, {len(mine) - summary.made - summary.skipped} left"

    with stop_requests("clip") as stop:  # SIGINT/SIGTERM: finish the clips in hand, then stop (core/signals.py)
        for pair in tqdm(mine, desc=f"prepare (rank {ranks.rank})", disable=None if ranks.rank == 0 else True):
            if stop.requested:
                _encode_all(pending, out, encoders, summary)
                stop.check(left())
            if _reusable(clip_file(out, pair.clip_id), pair):
                summary.skipped += 1
                continue
            try:
                clip = load_clip(pair, config)
            except Exception as exc:
                _record_failure(summary, pair.clip_id, exc, device)
                continue
            bucket = pending.setdefault(clip.frames.shape, [])
            bucket.append(clip)
            if len(bucket) >= encoders.batch:
                encode_clips(pending.pop(clip.frames.shape), out, encoders, summary)
        _encode_all(pending, out, encoders, summary)
        stop.check(left())
    summary.rejected, summary.failed = len(summary.rejects), len(summary.failures)

    # 3. rank 0 gathers the rejects and failures and writes the index and cache.json
    _write_rejects(out / f".rejects-rank{ranks.rank}.csv", summary.rejects + summary.failures)
    barrier()
    if ranks.rank == 0:
        _finish(out, config, settings, folder, ranks.world, vae.config.scaling_factor, {p.clip_id for p in pairs})
    barrier()
    log.info("rank %d: %d clips encoded, %d already done, %d rejected, %d failed", ranks.rank, summary.made,
             summary.skipped, summary.rejected, summary.failed)
    return summary


def _reusable(path: Path, pair: Pair) -> bool:
    """Whether a clip file of an earlier run can be kept: intact, and made from this pair's instruction and video
    file (a re-curated dataset in the same folder). A damaged or outdated file is removed and encoded again."""
    if not path.is_file():
        return False
    problem = clip_problem(path)
    if problem:
        log.warning("cache clip %s is damaged (%s); encoding it again", path, problem)
    else:
        meta, _ = read_clip_header(path)
        if meta["instruction"] != pair.instruction:
            problem = "its instruction changed"
        elif "source_file" in meta and not _same_file(meta["source_file"], pair.path):  # (older caches lack it)
            problem = f"{pair.path} changed"
        if problem:
            log.warning("cache clip %s is outdated (%s); encoding it again", path, problem)
    if problem:
        path.unlink()  # if the clip now fails, no stale file stands in for it
    return not problem


SOURCE_SAMPLE = 1 << 16  # bytes hashed at each end of a clip's video file


def _file_identity(path: Path) -> dict | None:
    """Size, modification time and a digest of the ends of a clip's video file (None when it cannot be read)."""
    try:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "digest": file_digest(path, with_mtime=False, sample=SOURCE_SAMPLE)}
    except OSError:
        return None


def _same_file(recorded, path: Path) -> bool:
    """Whether `path` is the video file a clip was encoded from: the same size and modification time (a stat), or,
    for a copy whose time changed, the same digest."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if not isinstance(recorded, dict) or recorded.get("size") != stat.st_size:
        return False
    return recorded.get("mtime_ns") == stat.st_mtime_ns or \
        recorded.get("digest") == file_digest(path, with_mtime=False, sample=SOURCE_SAMPLE)


@dataclass
class Clip:
    """One clip decoded into its training frames (F, H, W, 3), waiting to be encoded."""

    pair: Pair
    frames: np.ndarray
    info: dict


def load_clip(pair, config: PrepareConfig) -> Clip:
    """Decode one clip's frames; raises InputError/MediaError for a clip that cannot be used."""
    if not pair.instruction:
        raise InputError("empty instruction")
    source = _file_identity(pair.path)  # before decoding: a file replaced meanwhile is not taken for this one
    frames, info = decode_frames(pair.path, config.frames)
    return Clip(pair, frames, {**info, "source_file": source})


def encode_clips(clips: list[Clip], out: Path, encoders: Encoders, summary: PrepareSummary) -> None:
    """Encode clips of one size together and save each; if the batch fails, each clip is tried alone, so a
    failure is recorded for the clip that causes it."""
    try:
        encoded = encoders.encode([c.frames for c in clips], [c.pair.instruction for c in clips])
    except Exception as exc:
        if len(clips) == 1:
            _record_failure(summary, clips[0].pair.clip_id, exc, encoders.device)
            return
        for clip in clips:
            encode_clips([clip], out, encoders, summary)
        return
    for clip, tensors in zip(clips, encoded):
        meta = {"clip id": clip.pair.clip_id, "instruction": clip.pair.instruction,
                "size": list(clip.frames.shape[1:3]), **clip.info}
        try:
            save_clip(out, clip.pair.clip_id, tensors, meta)
        except Exception as exc:
            _record_failure(summary, clip.pair.clip_id, exc, encoders.device)
            continue
        summary.made += 1


def _encode_all(pending: dict[tuple, list[Clip]], out: Path, encoders: Encoders, summary: PrepareSummary) -> None:
    """Encode every clip still waiting for its batch to fill."""
    while pending:
        encode_clips(pending.pop(next(iter(pending))), out, encoders, summary)


def _record_failure(summary: PrepareSummary, clip_id: str, exc: Exception, device: str) -> None:
    """A clip that cannot be used (an OphoraError) is a reject; anything else a failure, retried on a rerun."""
    failure = failure_record(exc, log, f"clip {clip_id}")
    if isinstance(exc, OphoraError):
        summary.rejects.append((clip_id, failure["error_type"], failure["error"]))
    else:
        summary.failures.append((clip_id, failure["error_type"], failure["error"]))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def _write_rejects(path: Path, rejects: list[tuple[str, str, str]]) -> None:
    write_csv(path, ["clip id", "error_type", "reason"], rejects)


def _finish(out: Path, config: PrepareConfig, settings: dict, folder: Path, world: int, scaling_factor: float,
            clip_ids: set[str]) -> None:
    """Gather the ranks' rejects, index the clip files and write cache.json."""
    rejects = []
    for rank in range(world):
        part = out / f".rejects-rank{rank}.csv"
        with part.open(newline="", encoding="utf-8") as f:
            rejects += list(csv.reader(f))[1:]
        part.unlink()
    _write_rejects(out / "rejects.csv", rejects)
    rows = write_index(out, clip_ids)
    shapes = sorted({r["latent shape"] for r in rows})
    info = {
        "format": CACHE_FORMAT, **settings, "model": config.model, "model_folder": str(folder),
        "vae_scaling_factor": scaling_factor, "latent_shapes": [json.loads(s) for s in shapes],
        "counts": {"clips": len(rows), "rejected": len(rejects)}, "csv": config.csv, "dataset": str(config.dataset),
        "versions": versions(), "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "cache.json", info)
