"""`ophora downstream`: phase recognition trained on real clips, and on real plus generated clips, tested alike.

Read top to bottom: annotations -> splits by video -> the videos they name and the generated videos with
their phases -> clips (decoded once into OUT/clips/) -> one training run per training set (OUT/runs/<name>/)
-> results.json, refused.csv, failures.csv and report.html. Every row that cannot be used (an inconsistent
annotation, a missing video, a segment past its video's end, a generated video of an unknown phase) is
listed in refused.csv with its reason and the run goes on; a video that cannot be decoded is a failure
(failures.csv, exit 1; a rerun retries it).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ophora.core.errors import ConfigError, InputError, failure_record
from ophora.core.files import claim_folder, remove_partials, write_csv, write_json
from ophora.core.manifests import MANIFEST, VIDEO_EXTENSIONS, Video, is_manifest, read_manifest
from ophora.core.media import probe_video
from ophora.core.models import fingerprint
from ophora.core.pools import kill_pool, start_pool
from ophora.core.ranks import Ranks, barrier, init_ranks, pick_device
from ophora.core.signals import Interrupted, stop_requests
from ophora.core.tables import ID_COLUMN, csv_text, slug
from ophora.core.versions import versions
from ophora.downstream.annotations import Segment, read_annotations, summary
from ophora.downstream.clips import Clip, ClipSettings, cached_clips, decode_clips, plan_clips, plan_digest, \
    video_key, write_clip_file
from ophora.downstream.config import DownstreamConfig
from ophora.downstream.models import read_weights
from ophora.downstream.report import write_report
from ophora.downstream.shards import agreed_stop
from ophora.downstream.splits import assign_splits, read_split_file
from ophora.downstream.train import Item, Run, train_run

log = logging.getLogger(__name__)
RECORD = "downstream.json"
REFUSED_COLUMNS = ("source", "video", "reason")


@dataclass(frozen=True)
class Job:
    """One video to cut clips from: its id, file and the segments (or, generated, the whole video) to use."""

    video: str
    path: Path
    segments: tuple[Segment, ...]
    generated: bool = False


def index_videos(folder: Path) -> tuple[dict[str, Path], set[str]]:
    """(file stem -> video under `folder`, stems found more than once)."""
    if not folder.is_dir():
        raise InputError(f"--videos {folder}: no such folder")
    found: dict[str, Path] = {}
    twice: set[str] = set()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file() and not path.name.startswith("."):
            if path.stem in found:
                twice.add(path.stem)
            found.setdefault(path.stem, path)
    return found, twice


def read_phase_map(path: Path) -> dict[str, str]:
    """clip id -> phase from a CSV with columns `clip id` and `phase`."""
    reader = csv.DictReader(csv_text(path, "--phase-map file"))
    if ID_COLUMN not in (reader.fieldnames or []) or "phase" not in (reader.fieldnames or []):
        raise InputError(f"--phase-map {path} needs columns '{ID_COLUMN}' and 'phase' (its columns are "
                         f"{', '.join(map(repr, reader.fieldnames or [])) or 'none'})")
    return {(r[ID_COLUMN] or "").strip(): (r["phase"] or "").strip() for r in reader if (r["phase"] or "").strip()}


def read_generated(specs: list[Path]) -> list[tuple[Path, Video]]:
    """(manifest, video) for the videos of `ophora sample` output folders or manifests."""
    videos = []
    for spec in specs:
        manifest = spec / MANIFEST if spec.is_dir() else spec
        if not manifest.is_file() or not is_manifest(manifest):
            raise InputError(f"--synthetic {spec}: not an `ophora sample` output folder or its manifest.csv "
                             f"(columns 'clip id', 'prompt', 'path')")
        videos += [(manifest, v) for v in read_manifest(manifest)]
    return videos


def generated_jobs(videos: list[tuple[Path, Video]], phases: list[str], mapping: dict[str, str], refuse) -> list[Job]:
    """One job per generated video whose phase is an annotated one; the others are refused with a reason."""
    known = {slug(p): p for p in phases}  # compared loosely: `Irrigation/Aspiration` = `irrigation_aspiration`
    jobs = []
    for manifest, video in videos:
        source = f"{manifest}:{video.line}"
        named = mapping.get(video.id.rsplit("/", 1)[0], video.phase)
        phase = known.get(slug(named))
        if phase is None:
            refuse(source, video.id, f"phase {named!r} is not an annotated phase ({', '.join(phases)}); "
                                     "name it in --phase-map")
        elif not video.path.is_file():
            refuse(source, video.id, f"video {video.path} not found")
        else:
            jobs.append(Job(video.id, video.path, (Segment(video.id, phase, 0.0, 0.0, source),), generated=True))
    return jobs


def _plan(job: Job, settings: ClipSettings, refuse) -> list[Clip]:
    info = probe_video(job.path)
    duration = info.duration or (info.frames / info.fps if info.fps else 0.0)
    slack = 2.0 / info.fps if info.fps else 0.1
    clips = []
    for segment in job.segments:
        start, end = (0.0, duration) if job.generated else (segment.start, segment.end)
        if end > duration + slack:
            refuse(segment.source, job.video, f"segment {start:g}-{end:g} s ends past the end of {job.path} "
                                              f"({duration:.3f} s)")
            continue
        clips += [Clip(segment.source, segment.phase, times) for times in plan_clips(start, end, settings)]
    return clips


def extract(job: Job, settings: ClipSettings, folder: Path) -> tuple[str, list[tuple[str, Clip]], list[dict]]:
    """Cut (or find cached) the clips of one video: (clip file name, [(tensor name, clip)], refused rows)."""
    refused: list[dict] = []

    def refuse(source: str, video: str, reason: str) -> None:
        refused.append({"source": source, "video": video, "reason": reason})

    clips = _plan(job, settings, refuse)
    path = folder / f"{video_key(job.video)}.safetensors"
    if not clips:
        return path.name, [], refused
    digest = plan_digest(clips, settings.size, job.path)
    cached = cached_clips(path, digest)
    if cached is None:
        decoded, last = decode_clips(job.path, clips, settings.size)
        made = {str(i): f for i, f in enumerate(decoded) if f is not None}
        write_clip_file(path, made, digest, last)
        cached = set(made), last
    present, last = cached
    for i, clip in enumerate(clips):
        if str(i) not in present:  # said again on every rerun: refused.csv is the same however often it resumed
            refuse(clip.segment, job.video, f"clip at {clip.times[0]:.2f}-{clip.times[-1]:.2f} s is past the "
                                            f"last decodable frame of {job.path} ({last:.3f} s)")
    return path.name, [(str(i), c) for i, c in enumerate(clips) if str(i) in present], refused


def _extract_mine(jobs: list[Job], settings: ClipSettings, folder: Path, workers: int, ranks: Ranks) -> dict:
    """Cut the clips of this rank's share of `jobs` (every world-th), in `workers` processes when more than one:
    video id -> (clip file name, clips, refused rows), or a failure record."""
    mine = jobs[ranks.rank::ranks.world]
    pool, futures = start_pool(min(workers, len(mine)), extract, [(job, settings, folder) for job in mine]) \
        if workers > 1 and len(mine) > 1 else (None, [])
    outcomes: dict = {}
    try:
        bar = tqdm(mine, desc="clips", unit="video", disable=None if ranks.rank == 0 else True)
        for k, job in enumerate(bar):  # a signal abandons the videos in hand (files are atomic) and kills the pool
            try:
                outcomes[job.video] = futures[k].result() if pool else extract(job, settings, folder)
            except Exception as exc:  # noqa: BLE001 - one video's failure is recorded, the others go on
                outcomes[job.video] = {"video": job.video, "path": str(job.path),
                                       **failure_record(exc, log, f"video {job.path}")}
    finally:
        if pool and len(outcomes) == len(mine):
            pool.shutdown()
        elif pool:
            kill_pool(pool)
    return outcomes


def _extract_all(jobs: list[Job], settings: ClipSettings, folder: Path, workers: int, ranks: Ranks,
                 refused: list[dict], failures: list[dict]) -> dict[str, tuple[str, list[tuple[str, Clip]]]]:
    """Every job's clips, the ranks sharing the work; refused rows and failures are added in job order."""
    outcomes = _extract_mine(jobs, settings, folder, workers, ranks)
    if ranks.world > 1:
        shares: list = [None] * ranks.world
        dist.all_gather_object(shares, outcomes)  # between this run's own processes
        outcomes = {video: outcome for share in shares for video, outcome in share.items()}
    done = {}
    for job in jobs:
        outcome = outcomes[job.video]
        if isinstance(outcome, dict):
            failures.append(outcome)
        else:
            name, clips, rows = outcome
            refused += rows
            done[job.video] = (name, clips)
    return done


def downstream(config: DownstreamConfig) -> dict:
    """Run the experiment (see the module docstring); returns what results.json holds."""
    config.check()
    ranks = init_ranks(cuda_collectives=True)  # gradients are summed on the GPUs
    device = torch.device(pick_device(config.device or None, ranks))  # a --device this machine lacks: before work
    shards = config.batch_shards or ranks.world
    if shards % ranks.world:
        raise ConfigError(f"--batch-shards {shards} cannot be shared by {ranks.world} processes: use a multiple of "
                          f"{ranks.world}")
    annotations = read_annotations(config.annotations)
    refused = list(annotations.refused)

    def refuse(source: str, video: str, reason: str) -> None:
        refused.append({"source": source, "video": video, "reason": reason})

    # the real videos the annotations name
    found, twice = index_videos(config.videos)
    segments = []
    for segment in annotations.segments:
        if segment.video in twice:
            refuse(segment.source, segment.video, f"more than one video named {segment.video}.* under {config.videos}")
        elif segment.video not in found:
            refuse(segment.source, segment.video, f"no video {segment.video}.* under {config.videos}")
        else:
            segments.append(segment)
    if not segments:
        raise InputError(f"--videos {config.videos} holds none of the {len({s.video for s in annotations.segments})} "
                         f"annotated videos (e.g. {annotations.segments[0].video}.mp4)")
    phases = sorted({s.phase for s in annotations.segments})
    explicit = read_split_file(config.splits) if config.splits else None
    split_of, split_source = assign_splits(segments, tuple(config.split_fractions), config.seed, explicit)
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for segment in segments:
        by_video[segment.video].append(segment)
    jobs = [Job(v, found[v], tuple(s)) for v, s in sorted(by_video.items())]
    mapping = read_phase_map(config.phase_map) if config.phase_map else {}
    jobs += generated_jobs(read_generated(config.synthetic), phases, mapping, refuse)

    weights = read_weights(config.weights) if config.weights else None
    identity = {**config.identity(shards),
                "weights": fingerprint([config.weights], with_mtime=False) if config.weights else ""}
    claim_folder(config.out, RECORD, identity, "downstream experiment", "use another --out or delete the folder")
    barrier()  # every rank has checked the folder before rank 0 writes into it
    if ranks.rank == 0:
        config.out.mkdir(parents=True, exist_ok=True)
        remove_partials(config.out)
        write_json(config.out / RECORD, {"identity": identity, "versions": versions("torchvision"),
                                         "world_size": ranks.world})
    barrier()

    settings = ClipSettings(config.clip_frames, config.clip_size, config.clip_fps, config.clips_per_segment)
    failures: list[dict] = []
    cut = _extract_all(jobs, settings, config.out / "clips", config.worker_count(), ranks, refused, failures)

    label = {p: k for k, p in enumerate(phases)}
    sets: dict[str, list[Item]] = defaultdict(list)
    for job in jobs:
        name, clips = cut.get(job.video, ("", []))
        part = "generated" if job.generated else split_of[job.video]
        sets[part] += [Item(config.out / "clips" / name, tensor, label[c.phase], c.segment, job.video)
                       for tensor, c in clips]
    if not sets["test"] or not sets["train"]:
        raise InputError(f"no {'test' if not sets['test'] else 'training'} clips could be cut (see "
                         f"{config.out / 'refused.csv'})")
    runs = [Run("real", sets["train"], sets["val"], sets["test"])]
    if sets["generated"]:
        runs.append(Run("real+generated", sets["train"] + sets["generated"], sets["val"], sets["test"]))
        if config.generated_only:
            runs.append(Run("generated", sets["generated"], sets["val"], sets["test"]))
    if ranks.rank == 0:
        write_csv(config.out / "refused.csv", REFUSED_COLUMNS, refused)
        write_csv(config.out / "failures.csv", ("video", "path", "error_type", "error"), failures)

    results = {}
    with stop_requests("training step") as stop:  # a signal between two steps stops after the step, between runs too
        for run in runs:
            signum = agreed_stop(stop.signum)
            if signum:
                raise Interrupted(signum, f"runs {', '.join(results) or 'none'} done")
            results[run.name] = train_run(run, phases, config, shards, ranks, device, config.out / "runs" / run.name,
                                          weights, identity, stop)
            results[run.name].pop("identity")
    result = {"phases": phases, "annotations": {"files": len(annotations.files), **summary(annotations.segments),
                                                "refused_rows": len(annotations.refused)},
              "splits": {"source": split_source,
                         **{s: {"videos": len({i.video for i in sets[s]}), "clips": len(sets[s])}
                            for s in ("train", "val", "test")}},
              "generated": {"videos": len({i.video for i in sets["generated"]}), "clips": len(sets["generated"])},
              "refused": len(refused), "failed": len(failures), "settings": identity, "runs": results,
              "versions": versions("torchvision")}
    if ranks.rank == 0:
        write_json(config.out / "results.json", result)
        write_report(config.out, result)
    barrier()
    return result
