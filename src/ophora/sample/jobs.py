"""What to make and where it goes: prompts -> jobs `(clip id, n)` with derived seeds, their files and records.

A finished job leaves `<clip id>/<n>.mp4` and its record `<clip id>/<n>.json`; a failed one leaves
`<clip id>/<n>.error.json` until it succeeds. The record holds the settings identity (every setting the
pixels depend on, and a fingerprint of the weights loaded), so a video is reused only if that is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.files import differences, read_json
from ophora.core.seeds import derived_seed
from ophora.core.tables import read_id_text_rows, read_text_file
from ophora.sample.config import SampleConfig


@dataclass(frozen=True)
class Job:
    clip_id: str
    n: int
    prompt: str
    seed: int


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
    return derived_seed(seed, clip_id, n)


def plan_jobs(prompts: list[tuple[str, str]], videos_per_prompt: int, seed: int, *, fixed_seed: bool = False,
              one_based: bool = False) -> list[Job]:
    """Every video to make, in prompt order, numbered from 0 (from 1 with `one_based`), each with its seed derived
    from (seed, clip id, n), or `seed` itself with `fixed_seed` (the authors' sampling)."""
    first = 1 if one_based else 0
    return [Job(cid, n, p, seed if fixed_seed else video_seed(seed, cid, n))
            for cid, p in prompts for n in range(first, first + videos_per_prompt)]


def shard(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """The jobs of one rank: round-robin, so ranks get near-equal work."""
    return jobs[rank::world]


def video_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.mp4"


def record_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.json"


def error_path(out: Path, job: Job) -> Path:
    return out / job.clip_id / f"{job.n}.error.json"


def identity(config: SampleConfig, job: Job, weights: str) -> dict:
    """Everything one video's pixels depend on: the settings, its prompt and seed, and the weights loaded."""
    return {**config.settings(), "prompt": job.prompt, "seed": job.seed, "weights": weights}


def read_record(out: Path, job: Job) -> dict | None:
    """The job's record when its video and record are both there, inside `out`, and readable; else None."""
    video, record = video_path(out, job), record_path(out, job)
    root = out.resolve()
    for path in (video, record):
        if not path.is_file() or path.is_symlink() or root not in path.resolve().parents:
            return None
    try:
        data = read_json(record, "video record")
    except InputError:
        return None
    return data if isinstance(data.get("identity"), dict) else None


def is_done(out: Path, job: Job, wanted: dict) -> bool:
    """True when the job's video exists with the identity `wanted`; raises if it was made otherwise."""
    record = read_record(out, job)
    if record is None:
        return False
    changed = differences(record["identity"], wanted)
    if changed:
        diffs = ", ".join(f"{k} {record['identity'].get(k)!r} -> {wanted.get(k)!r}" for k in changed[:3])
        raise InputError(f"{video_path(out, job)} was made with other settings ({diffs}); "
                         "use --overwrite or another --out")
    return True


def collect_records(out: Path, jobs: list[Job], wanted: dict[Job, dict]) -> list[dict]:
    """The records of the planned jobs whose video exists with the wanted identity, in prompt-file order.

    What names the video (its id, number, prompt, seed and file) comes from the job, never from the record: a
    crafted record cannot make the manifest or gallery point outside the folder.
    """
    records = []
    for job in jobs:
        record = read_record(out, job)
        if record is not None and not differences(record["identity"], wanted[job]):
            records.append({**record, "clip_id": job.clip_id, "n": job.n, "prompt": job.prompt, "seed": job.seed,
                            "path": video_path(out, job).relative_to(out).as_posix()})
    return records


def collect_failures(out: Path, jobs: list[Job]) -> list[dict]:
    """The error records of planned videos that failed and have not been made since."""
    failures = []
    for job in jobs:
        path = error_path(out, job)
        if path.is_file() and not video_path(out, job).is_file():
            try:
                failures.append(read_json(path, "error record"))
            except InputError:
                continue
    return failures
