"""`ophora sample`: batch text-to-video generation from a prompt file, sharded over ranks, resumable.

Every video is one job `(clip id, n)` (sample/jobs.py). Its seed is derived from `(seed, clip id, n)`, so a
video is the same whichever rank makes it and however many ranks run. Rank 0 finally gathers the records
into `manifest.csv`, `failures.csv` and `index.html`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ophora.core.errors import ConfigError, failure_record
from ophora.core.files import write_csv, write_json
from ophora.core.media import write_video
from ophora.core.models import parse_dtype, resolve_model, video_settings, weights_fingerprint
from ophora.core.ranks import Ranks, barrier, init_ranks, pick_device
from ophora.core.signals import Interrupted, stop_requests
from ophora.core.tables import csv_row
from ophora.core.versions import versions
from ophora.sample.cfg_parallel import pair_groups, split_cfg_batch
from ophora.sample.config import SampleConfig
from ophora.sample.gallery import write_gallery
from ophora.sample.generate import generate, prepare_pipeline
from ophora.sample.jobs import (Job, collect_failures, collect_records, error_path, identity, is_done, plan_jobs,
                                read_prompts, record_path, shard, video_path)

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["clip id", "n", "prompt", "seed", "model", "steps", "guidance", "frames", "fps", "size", "seconds", "path"]


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


def run_job(pipe, config: SampleConfig, job: Job, device: str, wanted: dict) -> dict:
    """Generate, encode and record one video; returns its record."""
    start = time.perf_counter()
    frames = generate(pipe, config, job, device)
    write_video(video_path(config.out, job), frames, fps=config.fps, qp=config.qp)
    record = {
        "clip_id": job.clip_id, "n": job.n, "prompt": job.prompt, "seed": job.seed, "model": config.model,
        "steps": config.steps, "guidance": config.guidance, "frames": config.frames, "fps": config.fps,
        "size": f"{config.width}x{config.height}", "seconds": round(time.perf_counter() - start, 3),
        "path": f"{job.clip_id}/{job.n}.mp4", "identity": wanted, "versions": versions(),
    }
    write_json(record_path(config.out, job), record)
    error_path(config.out, job).unlink(missing_ok=True)
    return record


def resolve_settings(config: SampleConfig, ranks: Ranks) -> tuple[SampleConfig, str]:
    """The config with the model's frame settings and the device's dtype filled in, and the weights' fingerprint."""
    folder = resolve_model(config.model)
    resolved = config.with_video(video_settings(folder))
    device = pick_device(config.device, ranks)
    dtype = str(parse_dtype(config.dtype, device)).removeprefix("torch.").replace("bfloat16", "bf16")
    resolved = replace(resolved, dtype={"float16": "fp16", "float32": "fp32"}.get(dtype, dtype))
    extra = [Path(config.lora)] if config.lora else []
    return resolved, weights_fingerprint(folder, extra)


def sample(config: SampleConfig) -> SampleSummary:
    """Make every video of the prompt file that this rank owns, then (rank 0) the manifest and gallery."""
    # 1. settings, prompts and the model's identity, all checked before any weights are loaded
    config.check()
    prompts = read_prompts(config)
    ranks = init_ranks(cuda_collectives=config.cfg_parallel)
    config, weights = resolve_settings(config, ranks)
    if config.cfg_parallel and ranks.world % 2:
        raise ConfigError(f"--cfg-parallel pairs ranks and needs an even number of them, got {ranks.world}")

    # 2. the jobs of this rank, and which of them are done
    all_jobs = plan_jobs(prompts, config.videos_per_prompt, config.seed, fixed_seed=config.fixed_seed,
                         one_based=config.one_based)
    wanted = {job: identity(config, job, weights) for job in all_jobs}
    if config.cfg_parallel:  # rank pairs share each video; the pair's first rank decodes and writes it
        groups = pair_groups(ranks.world) if ranks.world > 1 else []
        pair, half = divmod(ranks.rank, 2)
        jobs, writes = shard(all_jobs, pair, max(ranks.world // 2, 1)), half == 0
    else:
        jobs, writes = shard(all_jobs, ranks.rank, ranks.world), True
    todo = jobs if config.overwrite else [j for j in jobs if not is_done(config.out, j, wanted[j])]
    summary = SampleSummary(skipped=len(jobs) - len(todo))
    if ranks.rank == 0:
        write_json(config.out / "sample_config.json", {**asdict(config), "weights": weights,
                                                        "versions": versions(), "world_size": ranks.world})
    barrier()  # every rank has decided what to do before any video is written

    # 3. generate
    if todo:
        device = pick_device(config.device, ranks)
        pipe = prepare_pipeline(config, device, len(todo))
        if config.cfg_parallel and ranks.world > 1:
            split_cfg_batch(pipe.transformer, groups[pair], half)
        bar = tqdm(todo, desc=f"videos (rank {ranks.rank})" if ranks.world > 1 else "videos", unit="video",
                   disable=None if ranks.rank == 0 else True)
        # SIGINT/SIGTERM: a video takes minutes, so the one in hand is abandoned (its files are atomic; core/signals.py)
        with stop_requests("video", at_once=True):
            try:
                for job in bar:
                    bar.set_postfix_str(f"{job.clip_id}/{job.n}")
                    start = time.perf_counter()
                    try:
                        if writes:
                            run_job(pipe, config, job, device, wanted[job])
                        else:
                            generate(pipe, config, job, device, decode=False)
                    except Exception as exc:  # one video's failure is recorded; the others go on (core/errors.py)
                        failure = failure_record(exc, log, f"video {job.clip_id}/{job.n}")
                        summary.failed += 1
                        summary.failures.append((job.clip_id, job.n, failure["error"]))
                        if writes:
                            write_json(error_path(config.out, job), {"clip_id": job.clip_id, "n": job.n, **failure})
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                        continue
                    summary.made += 1
                    summary.seconds += time.perf_counter() - start
            except Interrupted as stop:
                raise stop.with_detail(f"{summary.made} videos made in this run, "
                                       f"{len(todo) - summary.made - summary.failed} left") from None

    # 4. the manifest, failures and gallery of exactly these settings' videos, in prompt-file order
    barrier()
    if ranks.rank == 0:
        records = collect_records(config.out, all_jobs, wanted)
        write_csv(config.out / "manifest.csv", MANIFEST_COLUMNS, [csv_row(r) for r in records])
        write_csv(config.out / "failures.csv", ["clip id", "n", "error_type", "error"],
                  [csv_row(f) for f in collect_failures(config.out, all_jobs)])
        write_gallery(config.out, records, title=f"ophora sample: {config.model}")
    _log_summary(summary, ranks)
    return summary


def _log_summary(summary: SampleSummary, ranks: Ranks) -> None:
    prefix = f"rank {ranks.rank}: " if ranks.world > 1 else ""
    log.info("%smade %d, skipped %d (already done), failed %d; %.2f s per video",
             prefix, summary.made, summary.skipped, summary.failed, summary.seconds_per_video)
    for clip_id, n, reason in summary.failures:
        log.info("%sfailed %s/%d: %s", prefix, clip_id, n, reason)
