"""Batch text-to-video generation from a prompt file, sharded over ranks, resumable.

Every video is one job `(clip id, n)`. Its seed is derived from `(seed, clip id, n)`, so a video is the
same whichever rank makes it and however many ranks run. A finished job leaves `<clip id>/<n>.mp4` and
its record `<clip id>/<n>.json`; rank 0 gathers the records into `manifest.csv` and `index.html`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ophora import __version__
from ophora.cfg_parallel import pair_groups, split_cfg_batch
from ophora.errors import InputError, OphoraError
from ophora.files import write_csv, write_json
from ophora.gallery import write_gallery
from ophora.media import write_video
from ophora.models import load_pipeline, parse_dtype
from ophora.ranks import Ranks, barrier, init_ranks
from ophora.tables import read_id_text_rows, read_text_file

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["clip id", "n", "prompt", "seed", "model", "steps", "guidance", "frames", "fps", "size", "seconds", "path"]


@dataclass
class SampleConfig:
    """Everything `ophora sample` needs; the CLI flags map one to one."""

    model: str
    out: Path
    prompts: Path | None = None
    prompt: str | None = None
    prompt_column: str = "caption prompt"
    id_column: str = "clip id"
    videos_per_prompt: int = 1
    steps: int = 50
    guidance: float = 6.0
    dynamic_cfg: bool = True
    negative_prompt: str = ""
    frames: int = 49
    height: int = 480
    width: int = 720
    fps: int = 8
    seed: int = 42
    dtype: str | None = None
    device: str | None = None
    scheduler: str = "dpm"
    lora: str | None = None
    lora_scale: float = 1.0
    vae_tiling: str = "auto"
    fuse_qkv: bool | None = None
    cfg_parallel: bool = False
    qp: int = 18
    overwrite: bool = False
    step_progress: bool | None = None

    def settings(self) -> dict:
        """The settings a finished video depends on (besides its prompt and seed)."""
        keys = ["model", "steps", "guidance", "dynamic_cfg", "negative_prompt", "frames", "height", "width",
                "fps", "scheduler", "lora", "lora_scale"]
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Job:
    clip_id: str
    n: int
    prompt: str
    seed: int


@dataclass
class SampleSummary:
    made: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def seconds_per_video(self) -> float:
        return self.seconds / self.made if self.made else 0.0


# ------------------------------------------------------------------------------------------- inputs


def check_settings(config: SampleConfig) -> None:
    """Catch every bad setting before any model is loaded."""
    if (config.prompts is None) == (config.prompt is None):
        raise InputError("give exactly one of --prompts FILE or --prompt TEXT")
    if config.frames < 1 or (config.frames - 1) % 4:
        raise InputError(f"--frames must be of the form 4k+1 (9, 17, ..., 49), got {config.frames}")
    if (config.frames - 1) % 8:
        # The causal VAE decodes an even number of latent frames ((frames - 1) / 4 + 1) to 4 frames each.
        raise InputError(f"--frames {config.frames} gives an even number of latent frames, which CogVideoX's VAE "
                         f"decodes to {4 * ((config.frames - 1) // 4 + 1)} frames; use 8k+1 (9, 17, 25, 33, 41, 49)")
    for name in ("height", "width"):
        value = getattr(config, name)
        if value <= 0 or value % 16:
            raise InputError(f"--{name} must be a positive multiple of 16, got {value}")
    for name in ("steps", "videos_per_prompt", "fps"):
        if getattr(config, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.cfg_parallel and config.guidance <= 1.0:
        raise InputError("--cfg-parallel splits classifier-free guidance over two ranks and needs --guidance > 1")
    if config.vae_tiling not in ("auto", "on", "off"):
        raise InputError(f"--vae-tiling must be auto, on or off, got {config.vae_tiling!r}")
    if config.lora is not None and not Path(config.lora).exists():
        raise InputError(f"LoRA weights not found: {config.lora}")


def read_prompts(config: SampleConfig) -> list[tuple[str, str]]:
    """(clip id, prompt) pairs from --prompt, a .txt file (one a line) or a CSV file."""
    if config.prompt is not None:
        prompt = config.prompt.strip()
        if not prompt:
            raise InputError("--prompt is empty")
        return [("prompt", prompt)]
    path = Path(config.prompts)
    if path.suffix.lower() == ".csv":
        rows = read_id_text_rows(path, config.id_column, config.prompt_column, "prompts file",
                                 hint=" (choose with --id-column / --prompt-column)")
        for line, clip_id, prompt in rows:
            if not prompt:
                raise InputError(f"{path} line {line}: empty prompt for clip id {clip_id!r}")
        prompts = [(clip_id, prompt) for _, clip_id, prompt in rows]
    else:
        lines = (ln.strip() for ln in read_text_file(path, "prompts file").splitlines())
        prompts = [(f"{i:04d}", ln) for i, ln in enumerate((ln for ln in lines if ln), start=1)]
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts


def video_seed(seed: int, clip_id: str, n: int) -> int:
    """A 63-bit seed that depends only on the run seed, the clip id and the video's index."""
    digest = hashlib.sha256(f"{seed}\x1f{clip_id}\x1f{n}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def plan_jobs(prompts: list[tuple[str, str]], videos_per_prompt: int, seed: int) -> list[Job]:
    return [Job(cid, n, p, video_seed(seed, cid, n)) for cid, p in prompts for n in range(videos_per_prompt)]


def shard(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """The jobs of one rank: round-robin, so ranks get near-equal work."""
    return jobs[rank::world]


# ------------------------------------------------------------------------------------------- outputs


def video_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.mp4"


def record_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.json"


def error_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.error.json"


def is_done(out: Path, job: Job, config: SampleConfig) -> bool:
    """True when the job's video and record exist; raises if they were made with other settings."""
    video, record = video_path(out, job), record_path(out, job)
    if not (video.is_file() and record.is_file()):
        return False
    old = json.loads(record.read_text())
    theirs = {**old.get("settings", {}), "prompt": old.get("prompt"), "seed": old.get("seed")}
    ours = {**config.settings(), "prompt": job.prompt, "seed": job.seed}
    changed = [k for k in ours if theirs.get(k) != ours[k]]
    if changed:
        diffs = ", ".join(f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in changed[:3])
        raise InputError(f"{video} was made with other settings ({diffs}); use --overwrite or another --out")
    return True


def collect_records(out: Path) -> list[dict]:
    """Every finished video's record under `out`, in clip id then index order."""
    records = []
    for path in sorted(out.glob("*/*.json")):
        if not path.stem.isdigit():
            continue
        record = json.loads(path.read_text())
        if (out / record["path"]).is_file():
            records.append(record)
    return sorted(records, key=lambda r: (r["clip id"], r["n"]))


def collect_failures(out: Path) -> list[dict]:
    """The error records of videos that failed and have not been made since."""
    failures = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.error.json"))]
    return [f for f in failures if not (out / f["clip id"] / f"{f['n']}.mp4").is_file()]


# ------------------------------------------------------------------------------------------- ranks


def pick_device(config: SampleConfig, ranks: Ranks) -> str:
    if config.device:
        return config.device
    return f"cuda:{ranks.local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------- generation


def prepare_pipeline(config: SampleConfig, device: str):
    """Load the pipeline named by `config.model` and configure it for sampling."""
    pipe = load_pipeline(config.model, device=device, dtype=parse_dtype(config.dtype, device), scheduler=config.scheduler)
    return configure_pipeline(pipe, config, device)


def configure_pipeline(pipe, config: SampleConfig, device: str):
    """Apply LoRA, fused attention projections, the VAE memory mode and progress settings."""
    if config.lora:
        try:
            pipe.load_lora_weights(config.lora, adapter_name="ophora")
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load LoRA weights from {config.lora}: {exc}") from None
        pipe.set_adapters(["ophora"], [config.lora_scale])
    fuse = config.fuse_qkv if config.fuse_qkv is not None else device.startswith("cuda")
    if fuse and not config.lora:  # LoRA layers wrap the separate q/k/v projections
        pipe.transformer.fuse_qkv_projections()
    tiling = config.vae_tiling == "on" or (config.vae_tiling == "auto" and not _untiled_decode_fits(config, device))
    if tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    show_steps = config.step_progress if config.step_progress is not None else device.startswith("cuda")
    pipe.set_progress_bar_config(disable=not show_steps, leave=False, position=1, desc="steps")
    return pipe


def _untiled_decode_fits(config: SampleConfig, device: str) -> bool:
    """Whether decoding the whole video at once fits in free GPU memory (always true on the CPU)."""
    if not device.startswith("cuda"):
        return True
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    # Measured: 18.5 GiB peak for 49x480x720 in bf16; activation memory scales with pixels x frames.
    need = 18.5 * 2**30 * (config.frames * config.height * config.width) / (49 * 480 * 720)
    return free > 1.3 * need


def generate(pipe, config: SampleConfig, job: Job, device: str, decode: bool = True) -> np.ndarray | None:
    """One video as uint8 frames (F, H, W, 3); with `decode=False` only the denoising runs."""
    generator = torch.Generator(device=device).manual_seed(job.seed)
    frames = pipe(
        prompt=job.prompt,
        negative_prompt=config.negative_prompt or None,
        height=config.height,
        width=config.width,
        num_frames=config.frames,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        use_dynamic_cfg=config.dynamic_cfg,
        generator=generator,
        output_type="np" if decode else "latent",
    ).frames[0]
    return to_uint8(frames) if decode else None


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8, rounding to nearest."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def run_job(pipe, config: SampleConfig, job: Job, device: str) -> dict:
    """Generate, encode and record one video; returns its manifest record."""
    start = time.perf_counter()
    frames = generate(pipe, config, job, device)
    video = video_path(config.out, job)
    write_video(video, frames, fps=config.fps, qp=config.qp)
    record = {
        "clip id": job.clip_id, "n": job.n, "prompt": job.prompt, "seed": job.seed, "model": config.model,
        "steps": config.steps, "guidance": config.guidance, "frames": config.frames, "fps": config.fps,
        "size": f"{config.width}x{config.height}", "seconds": round(time.perf_counter() - start, 3),
        "path": f"{job.clip_id}/{job.n}.mp4", "settings": config.settings(), "ophora": __version__,
    }
    write_json(record_path(config.out, job), record)
    error_path(config.out, job).unlink(missing_ok=True)
    return record


def sample(config: SampleConfig) -> SampleSummary:
    """Make every video of the prompt file that this rank owns, then (rank 0) the manifest and gallery."""
    check_settings(config)
    prompts = read_prompts(config)
    config.out = Path(config.out)
    ranks = init_ranks(cuda_collectives=config.cfg_parallel)
    if config.cfg_parallel and ranks.world % 2:
        raise InputError(f"--cfg-parallel pairs ranks and needs an even number of them, got {ranks.world}")
    all_jobs = plan_jobs(prompts, config.videos_per_prompt, config.seed)
    if config.cfg_parallel:  # rank pairs share each video; the pair's first rank decodes and writes it
        groups = pair_groups(ranks.world) if ranks.world > 1 else []
        pair, half = divmod(ranks.rank, 2)
        jobs, writes = shard(all_jobs, pair, max(ranks.world // 2, 1)), half == 0
    else:
        jobs, writes = shard(all_jobs, ranks.rank, ranks.world), True
    todo = jobs if config.overwrite else [j for j in jobs if not is_done(config.out, j, config)]
    summary = SampleSummary(skipped=len(jobs) - len(todo))
    if ranks.rank == 0:
        config.out.mkdir(parents=True, exist_ok=True)
        write_json(config.out / "sample_config.json", {**asdict(config), "ophora": __version__,
                                                        "torch": torch.__version__, "world_size": ranks.world})
    barrier()  # every rank has decided what to do before any video is written
    if todo:
        device = pick_device(config, ranks)
        pipe = prepare_pipeline(config, device)
        if config.cfg_parallel and ranks.world > 1:
            split_cfg_batch(pipe.transformer, groups[pair], half)
        bar = tqdm(todo, desc=f"videos (rank {ranks.rank})" if ranks.world > 1 else "videos", unit="video",
                   disable=None if ranks.rank == 0 else True)
        for job in bar:
            bar.set_postfix_str(f"{job.clip_id}/{job.n}")
            try:
                if writes:
                    seconds = run_job(pipe, config, job, device)["seconds"]
                else:
                    start = time.perf_counter()
                    generate(pipe, config, job, device, decode=False)
                    seconds = time.perf_counter() - start
            except (OphoraError, RuntimeError, ValueError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                summary.failed += 1
                summary.failures.append((job.clip_id, job.n, reason))
                if writes:
                    write_json(error_path(config.out, job), {"clip id": job.clip_id, "n": job.n, "error": reason})
                log.error("video %s/%d failed: %s", job.clip_id, job.n, reason)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            summary.made += 1
            summary.seconds += seconds
    barrier()
    if ranks.rank == 0:
        records = collect_records(config.out)
        write_csv(config.out / "manifest.csv", MANIFEST_COLUMNS, records)
        write_csv(config.out / "failures.csv", ["clip id", "n", "error"], collect_failures(config.out))
        write_gallery(config.out, records, title=f"ophora sample: {config.model}")
    _log_summary(summary, ranks)
    return summary


def _log_summary(summary: SampleSummary, ranks: Ranks) -> None:
    prefix = f"rank {ranks.rank}: " if ranks.world > 1 else ""
    log.info("%smade %d, skipped %d (already done), failed %d; %.2f s per video",
             prefix, summary.made, summary.skipped, summary.failed, summary.seconds_per_video)
    for clip_id, n, reason in summary.failures:
        log.info("%sfailed %s/%d: %s", prefix, clip_id, n, reason)
