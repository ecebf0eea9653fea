"""`ophora curate`: a folder of narrated videos -> clips, instructions and a privacy-preserved subset.

Stages: (1) find sources, (2) plan each source (probe, narration, clip spans), (3) refine all narrations
at once, (4) process each source on the engine (one decode pass, filters, privacy, clip files), (5) gather
the per-source records into the dataset files. Stage 4 leaves `OUT/.work/<stem>.json` per finished source,
keyed by a fingerprint of the source and the settings, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ophora.curate.filters import (FilterConfig, content_decision, longest_cut_free, motion_scores,
                                   non_surgical_scores, resolution_ok, scan_source, snap_to_keyframe)
from ophora.core.privacy import PrivacyConfig, privacy_reason, privacy_scores
from ophora.curate.refine import RefineConfig, make_refiner
from ophora.curate.report import write_report
from ophora.curate.segment import Span, clip_spans, sentence_spans
from ophora.core.config import option
from ophora.core.errors import ConfigError, InputError, MediaError, OphoraError, failure_record
from ophora.core.endpoint import public_url
from ophora.core.files import as_json_value, atomic_path, remove_partials, write_bytes, write_csv, write_json, write_text
from ophora.core.pools import kill_pool, start_pool
from ophora.core.signals import Interrupted, stop_requests
from ophora.core.tables import ID_COLUMN, csv_row
from ophora.core.versions import versions
from ophora.core.media import (NoVideoStreamError, copy_segment, cut_segments, encode_segment, probe_video,
                               video_rotation)
from ophora.core.smart_cut import SmartCutUnavailable
from ophora.curate.subtitles import Cue, find_sidecar, normalize_cues, read_subtitles

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
CSV_COLUMNS = [ID_COLUMN, "instruction"]
ENGINES = ("local", "ray")
TRANSIENT = ("write_failed",)  # reasons that are no decision about the content: retried on a rerun
CLIP_MODES = ("smart", "reencode", "copy")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
SCORE_COLUMNS = ["cuts_inside", "motion", "frozen_fraction", "black_fraction", "blank_fraction",
                 "text_area", "text_boxes", "overlay_area", "vlm_flag"]
MANIFEST_COLUMNS = ["clip_id", "source", "start", "end", "duration", "width", "height", "fps", "narration",
                    "instruction", "decision", "reason", "privacy_reason", "trimmed", *SCORE_COLUMNS]


@dataclass
class CurateConfig:
    """Everything `ophora curate` needs; the CLI flags are made from the fields (and the nested configs')."""

    input: Path = option(help="folder of narrated videos (recursive) with .srt/.vtt/.json sidecars of the same stem",
                         positional=True)
    out: Path = option(help="dataset folder: clips/, instructions.csv, privacy_preserved.csv, manifest.parquet, "
                            "summary.json, report.html")
    workers: int | None = option(None, "local processes (default: all cores)")
    engine: str = option("local", "where sources are processed; ray needs the extra ophora[ray]", choices=ENGINES)
    ray_address: str | None = option(None, "Ray cluster address (default: start or join a local one)")
    clip_mode: str = option("smart", "smart: exact frames, only those before the first and after the last keyframe "
                            "group re-encoded; reencode: every frame re-encoded; copy: no re-encoding, clips start at "
                            "a keyframe (inexact). Clips are always H.264 yuv420p .mp4", choices=CLIP_MODES)
    crf: int = option(18, "H.264 quality (0-51) of re-encoded frames")
    preset: str = option("ultrafast", "x264 preset of re-encoded frames (ultrafast: 0.63x superfast's encode time at "
                         "about its quality, 1.9x its bits; smart clips re-encode only their ends)", flag="--clip-preset",
                         choices=PRESETS)
    max_height: int = option(0, "--clip-mode reencode: scale clips down to at most this height (0: source size)",
                             flag="--clip-max-height")
    min_s: float = option(2.0, "shortest clip kept, in seconds", flag="--min-seconds")
    max_s: float = option(10.0, "longest clip, in seconds", flag="--max-seconds")
    target_s: float = option(5.5, "clip length aimed at when narration is split or merged", flag="--target-seconds")
    asr: str | None = option(None, "transcribe videos without a sidecar", choices=("faster-whisper",))
    asr_model: str | None = option(None, "faster-whisper model folder or id")
    examples_per_reason: int = 3
    filters: FilterConfig = field(default_factory=FilterConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        self.input, self.out = Path(self.input), Path(self.out)

    def check(self) -> None:
        """Catch every setting mistake before any work starts."""
        if not self.input.is_dir():
            raise InputError(f"input folder not found: {self.input}")
        if self.out.resolve() == self.input.resolve():
            raise ConfigError(f"--out {self.out} is the input folder; give the dataset a folder of its own")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"--crf must be between 0 and 51, got {self.crf}")
        if self.max_height < 0 or self.max_height % 2:
            raise ConfigError(f"--clip-max-height must be 0 or a positive even number, got {self.max_height}")
        if self.preset not in PRESETS:
            raise ConfigError(f"--clip-preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not 0 < self.min_s <= self.target_s <= self.max_s:
            raise ConfigError(f"clip lengths need 0 < min ({self.min_s}) <= target ({self.target_s}) <= max ({self.max_s})")
        if self.asr and not self.asr_model:
            raise ConfigError("--asr faster-whisper needs --asr-model (a local CTranslate2 folder or model id)")
        for name, allowed in (("engine", ENGINES), ("clip_mode", CLIP_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self.filters.check()
        self.privacy.check()
        self.refine.check()

    def settings(self) -> dict:
        """The settings a source's clips depend on (its fingerprint includes them)."""
        privacy = {k: v for k, v in asdict(self.privacy).items() if k != "threads"}
        return {"clip_mode": self.clip_mode, "crf": self.crf, "preset": self.preset, "max_height": self.max_height,
                "min_s": self.min_s, "filters": asdict(self.filters),
                "privacy": privacy}


@dataclass
class SourceJob:
    """One source video with its planned clips, ready for stage 4."""

    path: str
    source: str  # path relative to the input folder
    stem: str
    spans: list[tuple[float, float, str, str]]  # start, end, narration, instruction
    fingerprint: str = ""


class SkipSource(OphoraError):
    """A source that cannot be curated; `reason` is a short code for the summary."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# ------------------------------------------------------------------------------------------- stage 1-2: plan


def find_sources(folder: Path) -> list[Path]:
    """Video files under `folder` (recursive, hidden folders and our own output skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


_ASR_MODELS: dict[str, object] = {}


def transcribe(path: Path, model: str) -> list[Cue]:
    """Narration cues from faster-whisper; a missing package or model skips the source with that reason."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise SkipSource("asr_unavailable", "faster-whisper is not installed (pip install 'ophora[asr]')") from None
    if model not in _ASR_MODELS:
        try:
            _ASR_MODELS[model] = WhisperModel(model)
        except Exception as exc:  # the loader raises many kinds (missing files, bad format, no network)
            raise SkipSource("asr_unavailable", f"cannot load ASR model {model}: {type(exc).__name__}: {exc}") from None
    segments, _ = _ASR_MODELS[model].transcribe(str(path))
    return normalize_cues([Cue(s.start, s.end, s.text.strip()) for s in segments])


def plan_source(path: Path, config: CurateConfig) -> list[Span]:
    """The clip spans of one source; raises SkipSource when it cannot be curated."""
    if path.stat().st_size == 0:
        raise SkipSource("empty_file", "the file is empty")
    try:
        info = probe_video(path)
    except NoVideoStreamError as exc:
        raise SkipSource("no_video_stream", str(exc)) from None
    except MediaError as exc:
        raise SkipSource("unreadable", str(exc)) from None
    sidecar = find_sidecar(path)
    if sidecar is not None:
        try:
            cues = read_subtitles(sidecar)
        except MediaError as exc:
            raise SkipSource("bad_subtitles", str(exc)) from None
    elif config.asr:
        cues = transcribe(path, config.asr_model)
    else:
        raise SkipSource("no_narration", "no .srt/.vtt/.json sidecar with the same name (and --asr not set)")
    duration = info.duration or float("inf")
    spans = clip_spans(sentence_spans(cues), duration, config.min_s, config.max_s, config.target_s)
    if not spans:
        raise SkipSource("no_narration", f"none of the {len(cues)} narration cues falls inside the video")
    return spans


def _fingerprint(path: Path, spans: list, settings: dict) -> str:
    stat = path.stat()
    payload = json.dumps([stat.st_size, stat.st_mtime_ns, spans, settings], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- stage 4: process


def _row(job: SourceJob, index: int, span: tuple, **values) -> dict:
    start, end, narration, instruction = span
    row = {"clip_id": f"{job.stem}_{index}", "source": job.source, "start": start, "end": end,
           "duration": end - start, "width": 0, "height": 0, "fps": 0.0, "narration": narration,
           "instruction": instruction, "decision": "drop", "reason": "", "privacy_reason": "",
           "trimmed": False, **{k: float("nan") for k in SCORE_COLUMNS}}
    row.update(values)
    return row


def _thumbnail(scan, start: float, end: float, path: Path) -> None:
    """A small JPEG of the clip for the report (a colour OCR frame, else a grey frame)."""
    frames = scan.ocr_stack(start, end, 1) or list(scan.grey_stack(start, end)[:1])
    if not frames:
        return
    image = frames[0]
    size = (240, max(2, round(240 * image.shape[0] / image.shape[1])))
    _, data = cv2.imencode(".jpg", cv2.resize(image, size, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 80])
    write_bytes(path, data.tobytes())


def judge_clip(job: SourceJob, index: int, scan, rotation: int, config: CurateConfig) -> dict:
    """Scores and decision of one candidate clip (`write_clips` writes the kept ones)."""
    span = job.spans[index]
    start, _, _, instruction = span
    end = min(span[1], scan.end_time)
    row = _row(job, index, span, width=scan.width, height=scan.height, fps=scan.fps, end=end, duration=end - start)
    clip_id = row["clip_id"]
    (config.out / "thumbs").mkdir(parents=True, exist_ok=True)
    _thumbnail(scan, start, end, config.out / "thumbs" / f"{clip_id}.jpg")
    if end - start < config.min_s:
        return {**row, "reason": "too_short"}
    a, b, cuts = longest_cut_free(start, end, scan.cuts, 1.0 / (scan.fps or 30.0))
    row.update(cuts_inside=cuts, trimmed=cuts > 0, start=a, end=b, duration=b - a)
    copy = config.clip_mode == "copy" and not rotation
    reason = "scene_cut" if b - a < config.min_s else ""
    if copy and not reason:
        snapped = snap_to_keyframe(a, scan.keyframes)
        if snapped is None or b - snapped < config.min_s:
            reason = "keyframe_gap"
        else:
            a = snapped
            row.update(start=a, duration=b - a)
    if reason:  # too little is left: judge and report the whole span (its content says more)
        a, b = start, end
        row.update(start=a, end=b, duration=b - a)
    greys = scan.grey_stack(a, b)
    scores = {**motion_scores(greys, config.filters), **non_surgical_scores(greys)}
    row.update(scores)
    reason = content_decision(scores, config.filters) or reason
    if reason:
        return {**row, "reason": reason}
    if not instruction:
        return {**row, "reason": "no_instruction"}
    pscores = privacy_scores(scan.ocr_stack(a, b, config.privacy.frames), greys, config.privacy,
                             scan.ocr_stack(a, b, config.privacy.frames, strips=True))
    row.update(pscores, privacy_reason=privacy_reason(pscores, config.privacy))
    return {**row, "start": a, "end": b, "duration": b - a, "decision": "keep"}


def write_clips(src: str, rows: list[dict], rotation: int, config: CurateConfig) -> list[dict]:
    """Write the clip file of every kept row in `config.clip_mode`; a clip that cannot be written is dropped
    (`write_failed`), and each kept row gets the span its file holds."""
    kept = [r for r in rows if r["decision"] == "keep"]
    targets = [(config.out / "clips" / f"{r['clip_id']}.mp4", r["start"], r["end"]) for r in kept]
    encode = dict(crf=config.crf, preset=config.preset)
    if config.clip_mode == "smart" and not rotation:
        results = cut_segments(src, targets, **encode)
    else:
        results = [_write_one(src, target, a, b, rotation, config, encode) for target, a, b in targets]
    written = {}
    for row, result in zip(kept, results):
        if isinstance(result, Exception):
            log.warning("%s: cannot write the clip (%s)", row["clip_id"], result)
            written[row["clip_id"]] = {**row, "decision": "drop", "reason": "write_failed"}
        else:
            a, b = result
            written[row["clip_id"]] = {**row, "start": a, "end": b, "duration": b - a}
    return [written.get(r["clip_id"], r) for r in rows]


def _write_one(src: str, target: Path, start: float, end: float, rotation: int, config: CurateConfig,
               encode: dict) -> tuple[float, float] | Exception:
    """One clip in `copy` or `reencode` mode (or rotated); its span, or the error that stopped it."""
    try:
        if config.clip_mode == "copy" and not rotation:
            try:
                return copy_segment(src, target, start, end)
            except SmartCutUnavailable:
                pass  # packets an .mp4 player cannot take: re-encoded, exactly
        return encode_segment(src, target, start, end, rotation=rotation, max_height=config.max_height, **encode)
    except (MediaError, OSError) as exc:
        return exc
    except av.error.FFmpegError as exc:
        return MediaError(f"cannot cut {src}: {exc}")


def process_source(job: SourceJob, config: CurateConfig) -> dict:
    """Stage 4 for one source: decode once, judge every clip, write kept clips and the source record."""
    record_path = config.out / ".work" / f"{job.stem}.json"
    started = time.perf_counter()
    record = {"source": job.source, "fingerprint": job.fingerprint, "skipped": "", "detail": "", "rows": []}
    try:
        info = probe_video(job.path)
        rotation = video_rotation(job.path)
        width, height = (info.height, info.width) if rotation in (90, 270) else (info.width, info.height)
        if not resolution_ok(width, height, config.filters):
            record["rows"] = [_row(job, i, s, width=width, height=height, fps=info.fps, reason="resolution")
                              for i, s in enumerate(job.spans)]
        else:
            spans = [Span(s[0], s[1], s[2]) for s in job.spans]
            band = config.privacy.margin_band if config.privacy.backend == "ocr" else 0.0  # only the detector reads them
            scan = scan_source(Path(job.path), spans, config.filters, rotation, config.privacy.ocr_long_side,
                               band, config.privacy.margin_long_side)
            scan.fps = info.fps
            rows = [judge_clip(job, i, scan, rotation, config) for i in range(len(job.spans))]
            record["rows"] = write_clips(job.path, rows, rotation, config)
    except (MediaError, av.error.FFmpegError) as exc:
        record.update(skipped="undecodable", detail=str(exc), rows=[])
    except Exception as exc:  # a bug or a transient failure: recorded, retried on a rerun (core/errors.py)
        failure = failure_record(exc, log, f"source {job.source}")
        record.update(skipped="failed", detail=f"{failure['error_type']}: {failure['error']}", rows=[])
    record["seconds"] = time.perf_counter() - started
    if record["skipped"] != "failed" and not any(r["reason"] in TRANSIENT for r in record["rows"]):
        write_text(record_path, json.dumps(record, default=_json_default))  # only final decisions are kept
    return record


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _load_record(job: SourceJob, out: Path) -> dict | None:
    """The source's record of an earlier run, if it is whole, of these settings and its kept clips are there; else
    None (a missing, damaged or foreign file: the source is processed again)."""
    path = out / ".work" / f"{job.stem}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != job.fingerprint or \
            not {"skipped", "detail"} <= record.keys():
        return None
    rows = record.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"clip_id", "decision"} <= r.keys() for r in rows):
        return None
    kept = [r for r in rows if r["decision"] == "keep"]
    return record if all((out / "clips" / f"{r['clip_id']}.mp4").is_file() for r in kept) else None


def run_local(jobs: list[SourceJob], config: CurateConfig, workers: int):
    """Yield each job's record, computed in `workers` local processes (in this process when 1).

    The workers ignore SIGINT/SIGTERM and die with this process however it ends (core/signals.py); when the
    iteration stops early (an interruption), the sources in hand are abandoned and the workers killed at once.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_source(job, config)
        return
    pool, futures = start_pool(min(workers, len(jobs)), process_source, [(job, config) for job in jobs])
    finished = False
    try:
        for future in as_completed(futures):
            yield future.result()
        finished = True
    finally:
        if finished:
            pool.shutdown()
        else:
            kill_pool(pool)


def run_ray(jobs: list[SourceJob], config: CurateConfig):
    """Yield each job's record, computed as Ray tasks (one CPU each) on `config.ray_address` or a local Ray."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'ophora[ray]'") from None
    import signal
    from unittest import mock

    from ophora.core.reaper import reaped_children
    from ophora.core.signals import as_interrupted, starting_helpers

    with contextlib.ExitStack() as local:
        if not ray.is_initialized():  # a local Ray started here ends with this run, however it ends
            local.enter_context(reaped_children())
            local.callback(ray.shutdown)
            # ray.init must not be cut short (a driver stopped inside it aborts at exit): signals wait for its end,
            # and its own SIGTERM handler (sys.exit, from inside ray.init) is not installed
            with starting_helpers(), mock.patch.object(ray._private.utils, "set_sigterm_handler", lambda handler: None,
                                                       create=True):
                ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False)
                signal.alarm(0)  # Ray's C++ SIGTERM handler, if a SIGTERM came meanwhile, armed an alarm that aborts
        task = ray.remote(num_cpus=1)(process_source)
        pending = [task.remote(job, config) for job in jobs]
        try:
            while pending:
                try:
                    done, pending = ray.wait(pending, num_returns=1, timeout=0.5)  # a timeout lets handlers run
                    record = ray.get(done[0]) if done else None
                except KeyboardInterrupt as exc:  # Ray re-raises our handler's Interrupted as a bare one
                    raise as_interrupted(exc) from None
                if record is not None:
                    yield record
        finally:
            for ref in pending:  # an interruption: the tasks not finished are cancelled, their workers killed
                ray.cancel(ref, force=True)


# ------------------------------------------------------------------------------------------- stage 5: outputs


def write_outputs(rows: list[dict], skipped: list[dict], summary: dict, out: Path, examples_per_reason: int = 3) -> None:
    """instructions.csv, privacy_preserved.csv, manifest.parquet, skipped_sources.csv, summary.json, report.html."""
    kept = [r for r in rows if r["decision"] == "keep"]
    write_csv(out / "instructions.csv", CSV_COLUMNS, [csv_row(r) for r in kept])
    write_csv(out / "privacy_preserved.csv", CSV_COLUMNS, [csv_row(r) for r in kept if not r["privacy_reason"]])
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).rename(columns={"clip_id": ID_COLUMN})
    manifest["privacy_preserved"] = (manifest["decision"] == "keep") & (manifest["privacy_reason"] == "")
    with atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    buffer = io.StringIO()
    pd.DataFrame(skipped, columns=["source", "reason", "detail"]).to_csv(buffer, index=False)
    write_text(out / "skipped_sources.csv", buffer.getvalue())
    write_json(out / "summary.json", summary)
    write_report(manifest, skipped, summary, out, examples_per_reason)


def _versions(refiner) -> dict:
    record = versions("scenedetect", "opencv-python-headless", "rapidocr-onnxruntime")
    record["refiner"] = refiner.summary() if hasattr(refiner, "summary") else getattr(refiner, "name", "")
    return record


def curate(config: CurateConfig) -> dict:
    """Run the whole pipeline; returns the summary also written to OUT/summary.json."""
    # 1. check inputs and find the sources
    config.check()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    remove_partials(config.out)  # half-written files of a killed run
    workers = config.workers or os.cpu_count() or 1
    config = replace(config, privacy=replace(config.privacy, threads=max(1, (os.cpu_count() or 1) // workers)),
                     refine=replace(config.refine, cache_dir=config.refine.cache_dir or config.out / "refine_cache"))
    refiner = make_refiner(config.refine)
    sources = [p for p in find_sources(config.input) if config.out.resolve() not in p.resolve().parents]
    if not sources:
        raise InputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {config.input}")
    log.info("%d source videos under %s", len(sources), config.input)

    # 2. plan each source: probe, narration, clip spans
    skipped: list[dict] = []
    planned: list[tuple[Path, str, list[Span]]] = []
    stems: set[str] = set()
    for path in tqdm(sources, desc="plan", unit="video"):
        source = str(path.relative_to(config.input))
        try:
            if path.stem in stems:
                raise SkipSource("duplicate_stem", f"another source already has the stem {path.stem!r}")
            planned.append((path, source, plan_source(path, config)))
            stems.add(path.stem)
        except SkipSource as exc:
            skipped.append({"source": source, "reason": exc.reason, "detail": str(exc)})
            log.warning("skipping %s: %s", source, exc)
        except Exception as exc:  # a bug or a transient failure: recorded, retried on a rerun (core/errors.py)
            failure = failure_record(exc, log, f"source {source}")
            skipped.append({"source": source, "reason": "failed",
                            "detail": f"{failure['error_type']}: {failure['error']}"})
    timings["plan_s"] = time.perf_counter() - t0

    # 3. refine every narration at once (the openai backend batches and caches)
    t1 = time.perf_counter()
    narrations = sorted({s.text for _, _, spans in planned for s in spans})
    instructions = dict(zip(narrations, refiner.refine(narrations)))
    timings["refine_s"] = time.perf_counter() - t1

    # 4. process each source on the engine; finished sources are read back from their records
    t2 = time.perf_counter()
    jobs = []
    for path, source, spans in planned:
        spans_t = [(s.start, s.end, s.text, instructions[s.text]) for s in spans]
        jobs.append(SourceJob(str(path), source, path.stem, spans_t, _fingerprint(path, spans_t, config.settings())))
    records, todo = {}, []
    for job in jobs:
        record = _load_record(job, config.out)
        if record is None:
            todo.append(job)
        else:
            records[job.source] = record
    log.info("%d sources to process, %d already done", len(todo), len(records))
    engine = run_ray(todo, config) if config.engine == "ray" else run_local(todo, config, workers)
    with stop_requests("source video", at_once=True), contextlib.closing(engine):  # sources take minutes: abandon
        try:
            for record in tqdm(engine, total=len(todo), desc="curate", unit="video"):
                records[record["source"]] = record
        except Interrupted as stop:
            raise stop.with_detail(f"{len(records)} of {len(jobs)} source videos done (their records are kept in "
                                   f"{config.out / '.work'})") from None
    timings["process_s"] = time.perf_counter() - t2

    # 5. gather the records into the dataset files
    rows = []
    for job in jobs:
        record = records[job.source]
        if record["skipped"]:
            skipped.append({"source": job.source, "reason": record["skipped"], "detail": record["detail"]})
        rows.extend(record["rows"])
    timings["total_s"] = time.perf_counter() - t0
    summary = _summary(config, refiner, len(sources), rows, skipped, timings, workers)
    write_outputs(rows, skipped, summary, config.out, config.examples_per_reason)
    log.info("kept %d of %d candidate clips (%d privacy-preserved) in %s", summary["clips"]["kept"],
             summary["clips"]["candidates"], summary["clips"]["privacy_preserved"], config.out)
    return summary


def _summary(config: CurateConfig, refiner, n_sources: int, rows: list[dict], skipped: list[dict],
             timings: dict, workers: int) -> dict:
    kept = [r for r in rows if r["decision"] == "keep"]
    settings = as_json_value({**asdict(config), "workers": workers})
    settings["refine"]["url"] = public_url(config.refine.url) if config.refine.url else None
    settings["privacy"]["vlm_url"] = public_url(config.privacy.vlm_url) if config.privacy.vlm_url else None
    return {
        "config": settings,
        "versions": _versions(refiner),
        "sources": {"found": n_sources, "skipped": len(skipped),
                    "failed": sum(1 for s in skipped if s["reason"] == "failed"),
                    "skipped_by_reason": dict(Counter(s["reason"] for s in skipped))},
        "clips": {"candidates": len(rows), "kept": len(kept),
                  "failed": sum(1 for r in rows if r["reason"] in TRANSIENT),  # not decided: retried on a rerun
                  "dropped_by_reason": dict(Counter(r["reason"] for r in rows if r["decision"] != "keep")),
                  "privacy_flagged_by_reason": dict(Counter(r["privacy_reason"] for r in kept if r["privacy_reason"])),
                  "privacy_preserved": sum(1 for r in kept if not r["privacy_reason"]),
                  "trimmed_at_cut": sum(1 for r in kept if r["trimmed"]),
                  "kept_seconds": round(sum(r["duration"] for r in kept), 3),
                  "mean_kept_seconds": round(float(np.mean([r["duration"] for r in kept])), 3) if kept else 0.0},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
