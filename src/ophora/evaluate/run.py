"""`ophora evaluate`: FID, FVD, CLIPScore, privacy leakage, memorisation and temporal consistency of generated
videos against real ones, written to `OUT/metrics.json` and `OUT/report.html`.

Every network value is kept in a feature cache (`OUT/cache` unless `--cache`), so a second run on the same
videos decodes and computes nothing. Metrics whose weights were not given are skipped, with the file, where
it is published and the flag to pass; the others still run. docs/evaluate.md states each protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ophora.core.config import option
from ophora.core.errors import ConfigError, InputError
from ophora.core.files import write_json
from ophora.core.media import read_video
from ophora.core.privacy import PrivacyConfig
from ophora.core.ranks import Ranks, pick_device
from ophora.core.versions import versions
from ophora.evaluate import memorisation as memo
from ophora.evaluate.cache import FeatureCache
from ophora.evaluate.clipscore import CLIP_HINT, ClipScorer, video_clipscore
from ophora.evaluate.frechet import frechet_from_features
from ophora.evaluate.i3d import VARIANTS, i3d_features, load_i3d
from ophora.evaluate.inception import inception_features, load_inception
from ophora.evaluate.inputs import Video, check_videos, read_videos, short_message
from ophora.evaluate.leakage import leakage_record
from ophora.evaluate.temporal import temporal_stats
from ophora.evaluate.weights import I3D, INCEPTION, sha256

log = logging.getLogger(__name__)

METRICS = ("fid", "fvd", "clipscore", "leakage", "memorisation", "temporal")
MIN_FVD_FRAMES = 9  # I3D's temporal strides leave fewer than the final pool's 2 steps below this
THUMB_HEIGHT = 120

PROTOCOLS = {
    "fid": "pytorch-fid's protocol over frames: every decoded frame of every video (or --fid-frames N evenly "
           "spaced per video), uint8 RGB / 255, bilinear resize of the whole frame to 299x299 (half-pixel "
           "centres, no antialiasing), scaled to [-1, 1], FID Inception-v3 (pt_inception-2015-12-05) 2048-d "
           "final-pool features; Frechet distance of Gaussians with numpy's unbiased covariance (N-1).",
    "fvd": "StyleGAN-V's fvd2048_16f: {frames} consecutive frames per video (real videos from a seeded random "
           "offset, generated from frame 0), {resize}, scaled to [-1, 1], I3D Kinetics-400 logits (400-d, "
           "before the softmax), Frechet distance of Gaussians with the 1/N covariance (as StyleGAN-V and "
           "cd-fvd); the published protocol uses 2048 videos per side, this run used the counts given.",
    "clipscore": "100 * max(cos(frame, prompt), 0) per frame with the CLIP model's own image processor and "
                 "tokenizer, averaged over a video's frames (all, or --clip-frames N evenly spaced), then over "
                 "videos (the paper's definition; torchmetrics clamps only the final mean, given as "
                 "clipscore_torchmetrics).",
    "leakage": "share of generated videos on which the curation stage's privacy detector (ophora.core.privacy, "
               "the same backend, settings and thresholds as `ophora curate`) flags burned-in text or a static "
               "overlay; frames fed as curate feeds a clip.",
    "memorisation": "share of generated videos whose best pixel match among their {k} nearest training clips "
                    "(cosine similarity of {descriptor} descriptors) reaches SSIM {threshold} over 8 aligned grey "
                    "frames at 256 px wide.",
    "temporal": "weight-free: mean SSIM (luma, 11x11 Gaussian window, sigma 1.5) and PSNR (RGB) between "
                "consecutive frames, and flicker = mean absolute change of a frame's mean luma between "
                "consecutive frames, in grey levels; temporal_consistency is the generated videos' mean SSIM.",
}


@dataclass
class EvaluateConfig:
    real: Path = option(help="real videos: a folder (recursive), a sample manifest.csv, or an Ophora-160K dataset "
                             "folder or CSV")
    generated: Path = option(help="generated videos: `ophora sample`'s output folder or manifest.csv (prompts and "
                                  "phases), a dataset, or a plain folder")
    out: Path = option(help="output folder: metrics.json, report.html, report/ and the feature cache")
    metrics: list[str] = option(list(METRICS), "comma-separated metrics to compute", metavar="LIST")
    inception_weights: Path | None = option(None, f"FID Inception weights: {INCEPTION.name} (pytorch-fid's release)",
                                            metavar="FILE")
    i3d_weights: Path | None = option(None, "FVD I3D weights: i3d_pretrained_400.pt (state dict) or StyleGAN-V's "
                                            "i3d_torchscript.pt", metavar="FILE")
    clip_model: str | None = option(None, "CLIP model in the transformers layout: a folder, or a hub id already in "
                                          "the local cache (nothing is downloaded)", metavar="PATH_OR_ID")
    train_set: Path | None = option(None, "training clips for the memorisation check (any form --real takes)",
                                    metavar="DATASET")
    frames: int = option(16, "frames per FVD clip")
    fid_frames: int | None = option(None, "N evenly spaced frames per video for FID (default: every frame)",
                                    metavar="N")
    clip_frames: int | None = option(None, "N evenly spaced frames per video for CLIPScore (default: every frame)",
                                     metavar="N")
    max_videos: int | None = option(None, "use at most the first N videos of each set", metavar="N")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: the GPU if there is one)")
    batch_size: int = option(16, "frames per batch for Inception and CLIP, clips per batch for I3D")
    fvd_variant: str = option("fvd2048_16f", "fvd2048_16f: whole frame resized to 224x224 (StyleGAN-V); "
                                             "center_crop: short side to 224, central crop", choices=VARIANTS)
    seed: int = option(0, "seed of the real clips' random FVD offsets")
    memorisation_threshold: float = option(0.85, "SSIM at which a generated video counts as a copy of a "
                                                 "training clip")
    candidates: int = option(3, "nearest training clips (by features) checked pixel by pixel per generated video")
    cache: Path | None = option(None, "feature cache folder (default: OUT/cache)", metavar="DIR")
    examples: int = option(4, "example videos shown in the report per set")
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def check(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"--metrics {','.join(self.metrics)}: choose from {','.join(METRICS)}")
        if self.frames < MIN_FVD_FRAMES:
            raise ConfigError(f"--frames {self.frames}: I3D needs at least {MIN_FVD_FRAMES} frames per clip")
        for name in ("fid_frames", "clip_frames", "max_videos"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be 1 or more, got {value}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be 1 or more, got {self.batch_size}")
        if not 0 < self.memorisation_threshold <= 1:
            raise ConfigError(f"--memorisation-threshold must be in (0, 1], got {self.memorisation_threshold}")
        if self.candidates < 1:
            raise ConfigError(f"--candidates must be 1 or more, got {self.candidates}")
        self.privacy.check()


def spread(n: int, count: int | None) -> np.ndarray:
    """Indices of `count` evenly spaced frames among `n` (all of them when `count` is None or >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(int))


def real_offset(seed: int, video: Video, frames: int, length: int) -> int:
    """The seeded random start of a real video's FVD clip (the same whatever the order of the videos)."""
    digest = hashlib.sha256(f"{seed}:{video.id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return int(rng.integers(0, max(length - frames, 0) + 1))


class Decoded:
    """A video decoded at most once, and only if a value has to be computed."""

    def __init__(self, video: Video, cache: FeatureCache):
        self.video, self.cache, self._frames, self.fps = video, cache, None, 0.0

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames, self.fps = read_video(self.video.path)
            self.cache.computed["decode"] += 1
        return self._frames


class Moments:
    """Running sums for a Gaussian fit; keeps the rows too while there are few of them (the exact low-rank path)."""

    def __init__(self, keep: int = 4096):
        self.rows: list[np.ndarray] | None = []
        self.keep, self.n, self.total, self.outer = keep, 0, None, None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        if not len(x):
            return
        if self.total is None:
            self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        if self.rows is not None:
            self.rows.append(x)
            if self.n > self.keep:
                self.rows = None

    def features(self) -> np.ndarray | None:
        return np.concatenate(self.rows) if self.rows else None

    def stats(self, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        mu = self.total / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - ddof)


def frechet(a: Moments, b: Moments, ddof: int) -> float | None:
    """The Frechet distance of two accumulated sets (None when either has too few vectors)."""
    from ophora.evaluate.frechet import frechet_distance

    if a.n <= max(ddof, 1) or b.n <= max(ddof, 1):
        return None
    fa, fb = a.features(), b.features()
    if fa is not None and fb is not None:
        return frechet_from_features(fa, fb, ddof)
    return frechet_distance(*a.stats(ddof), *b.stats(ddof))


def _thumb(frames: np.ndarray) -> np.ndarray:
    """JPEG bytes (as uint8) of the first, middle and last frames side by side, 120 px high."""
    picks = [frames[i] for i in sorted({0, len(frames) // 2, len(frames) - 1})]
    h, w = frames.shape[1:3]
    size = (max(2, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT)
    strip = np.concatenate([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in picks], axis=1)
    return cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])[1]


class Evaluation:
    """One run: the settings, the loaded networks and the cache."""

    def __init__(self, config: EvaluateConfig):
        self.config = config
        self.metrics = list(dict.fromkeys(config.metrics))
        self.skipped: dict[str, str] = {}
        self.cache = FeatureCache(config.cache or config.out / "cache")
        self.weights: dict[str, dict] = {}
        self.inception = self.i3d = self.clip = None

    # ---------------------------------------------------------------- setup: everything checked before any work

    def load(self, generated: list[Video], train: list[Video] | None) -> None:
        c, wanted = self.config, set(self.metrics)
        self.device = pick_device(c.device, Ranks(0, 1, 0))
        if c.inception_weights and wanted & {"fid", "memorisation"}:
            self.inception = load_inception(c.inception_weights, self.device)
            self.weights["inception"] = {"file": str(c.inception_weights), "sha256": sha256(Path(c.inception_weights))}
        elif "fid" in wanted:
            self.skipped["fid"] = INCEPTION.missing()
        if c.i3d_weights and wanted & {"fvd", "memorisation"}:
            self.i3d, kind = load_i3d(c.i3d_weights, self.device)
            self.weights["i3d"] = {"file": str(c.i3d_weights), "sha256": sha256(Path(c.i3d_weights)), "format": kind}
        elif "fvd" in wanted:
            self.skipped["fvd"] = I3D.missing()
        if "clipscore" in wanted:
            if not c.clip_model:
                self.skipped["clipscore"] = CLIP_HINT
            elif not any(v.prompt for v in generated):
                self.skipped["clipscore"] = (f"CLIPScore needs prompts: {c.generated} lists none (give `ophora "
                                             "sample`'s manifest.csv or a dataset with instructions)")
            else:
                self.clip = ClipScorer(c.clip_model, self.device)
                self.weights["clip"] = {"model": c.clip_model, "files": self.clip.files}
        if "leakage" in wanted and c.privacy.backend == "off":
            self.skipped["leakage"] = "leakage needs a privacy detector; --privacy off turns it off"
        if "memorisation" in wanted and train is None:
            self.skipped["memorisation"] = ("memorisation needs --train-set DATASET (the clips the model was "
                                            "trained on)")

    def runs(self, metric: str) -> bool:
        return metric in self.metrics and metric not in self.skipped

    @property
    def descriptor(self) -> str:
        return "inception" if self.inception is not None else "i3d" if self.i3d is not None else "pixels"

    # ---------------------------------------------------------------- per-video values (all through the cache)

    def _inception(self, d: Decoded) -> np.ndarray:
        settings = {"weights": self.weights["inception"]["sha256"], "fid_frames": self.config.fid_frames}
        return self.cache.array(d.video.path, "inception", settings, lambda: inception_features(
            self.inception, d.frames[spread(len(d.frames), self.config.fid_frames)], self.config.batch_size))

    def _i3d(self, d: Decoded, start: int | None, length: int) -> np.ndarray:
        c = self.config
        first = 0 if start is None else start
        settings = {"weights": self.weights["i3d"]["sha256"], "variant": c.fvd_variant, "frames": c.frames,
                    "start": first, "pad": start is None}

        def compute():
            frames = d.frames
            if len(frames) < c.frames and start is not None:
                raise InputError(short_message(d.video.path, len(frames), c.frames))
            begin = min(first, max(len(frames) - c.frames, 0))
            clip = frames[begin:begin + c.frames]
            if len(clip) < c.frames:  # descriptor of a short training clip: its last frame held
                clip = np.concatenate([clip, np.repeat(clip[-1:], c.frames - len(clip), axis=0)])
            return i3d_features(self.i3d, clip[None], c.fvd_variant, c.batch_size)[0]

        return self.cache.array(d.video.path, "i3d", settings, compute)

    def _pixels(self, d: Decoded) -> np.ndarray:
        return self.cache.array(d.video.path, "pixels", {"frames": memo.PIXEL_FRAMES, "width": memo.PIXEL_WIDTH},
                                lambda: memo.pixel_frames(d.frames))

    def _descriptor(self, d: Decoded) -> np.ndarray:
        if self.descriptor == "inception":
            return self._inception(d).mean(axis=0)
        if self.descriptor == "i3d":
            return self._i3d(d, None, 0)
        return memo.thumbnail_descriptor(self._pixels(d))

    def thumb(self, video: Video) -> np.ndarray:
        d = Decoded(video, self.cache)
        return self.cache.array(video.path, "thumb", {"height": THUMB_HEIGHT}, lambda: _thumb(d.frames))

    def video_values(self, video: Video, role: str, length: int, index: int) -> dict:
        """Everything this run needs from one video (`role`: real, generated or train)."""
        c, d, values = self.config, Decoded(video, self.cache), {}
        if role in ("real", "generated") and self.runs("fid"):
            values["inception"] = self._inception(d)
        if role in ("real", "generated") and self.runs("fvd"):
            start = 0
            if role == "real":
                n = length if length > 0 else len(d.frames)
                start = real_offset(c.seed, video, c.frames, n)
            values["i3d"] = self._i3d(d, start, length)
        if role == "generated" and self.runs("clipscore") and video.prompt:
            settings = {"model": self.clip.files or self.clip.name, "prompt": video.prompt, "frames": c.clip_frames}
            values["clip"] = self.cache.record(video.path, "clipscore", settings, lambda: {"frame_scores": [
                float(s) for s in self.clip.frame_scores(d.frames[spread(len(d.frames), c.clip_frames)], video.prompt,
                                                         c.batch_size)]})
        if role == "generated" and self.runs("leakage"):
            settings = dataclasses.asdict(c.privacy)
            values["leakage"] = self.cache.record(video.path, "leakage", settings,
                                                  lambda: leakage_record(d.frames, d.fps or self._fps(d), c.privacy))
        if role in ("real", "generated") and self.runs("temporal"):
            values["temporal"] = self.cache.record(video.path, "temporal", {"v": 1}, lambda: temporal_stats(d.frames))
        if role in ("generated", "train") and self.runs("memorisation"):
            values["descriptor"] = self._descriptor(d)
            values["pixels"] = self._pixels(d)
        if role == "generated" or (role == "real" and index < c.examples):
            values["thumb"] = self.cache.array(video.path, "thumb", {"height": THUMB_HEIGHT}, lambda: _thumb(d.frames))
        return values

    @staticmethod
    def _fps(d: Decoded) -> float:
        _ = d.frames
        return d.fps

    def pass_over(self, videos: list[Video], role: str, lengths: dict[str, int]) -> list[dict]:
        bar = tqdm(videos, desc=f"evaluate {role}", unit="video", disable=None)
        return [self.video_values(v, role, lengths.get(v.id, 0), i) for i, v in enumerate(bar)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _limit(videos: list[Video], n: int | None) -> list[Video]:
    return videos[:n] if n else videos


def evaluate(config: EvaluateConfig) -> dict:
    """Compute the metrics of `config.generated` against `config.real`; writes and returns metrics.json's content."""
    from ophora.evaluate.report import write_report

    config.check()
    run = Evaluation(config)
    generated = _limit(read_videos(config.generated, "--generated"), config.max_videos)
    real = _limit(read_videos(config.real, "--real"), config.max_videos)
    train = None
    if "memorisation" in run.metrics and config.train_set:
        train = _limit(read_videos(config.train_set, "--train-set"), config.max_videos)
    run.load(generated, train)
    need = config.frames if run.runs("fvd") else 0
    lengths = check_videos(real, "--real", need)
    gen_lengths = check_videos(generated, "--generated", need)
    train_lengths = check_videos(train, "--train-set") if train and run.runs("memorisation") else {}
    for name, reason in run.skipped.items():
        log.warning("skipping %s: %s", name, reason)

    real_values = run.pass_over(real, "real", lengths)
    gen_values = run.pass_over(generated, "generated", gen_lengths)
    train_values = run.pass_over(train, "train", train_lengths) if train and run.runs("memorisation") else []

    result = summarise(run, real, real_values, generated, gen_values, train or [], train_values)
    config.out.mkdir(parents=True, exist_ok=True)
    result["report"] = str(config.out / "report.html")
    result["cache"] = {"folder": str(run.cache.folder), **run.cache.counts()}
    write_report(config.out, result, run, real, real_values, generated, gen_values, train or [])
    write_json(config.out / "metrics.json", result)
    return result


def summarise(run: Evaluation, real: list[Video], real_values: list[dict], generated: list[Video],
              gen_values: list[dict], train: list[Video], train_values: list[dict]) -> dict:
    c = run.config
    phases = sorted({v.phase for v in generated if v.phase})
    result: dict = {m: None for m in ("fid", "fvd", "clipscore", "leakage_rate", "memorisation_rate",
                                      "temporal_consistency")}
    counts = {"real_videos": len(real), "generated_videos": len(generated), "train_videos": len(train)}
    per_phase: dict[str, dict] = {p: {"videos": sum(v.phase == p for v in generated)} for p in phases}

    def reference(phase: str) -> tuple[list[int], str]:
        same = [i for i, v in enumerate(real) if v.phase == phase]
        return (same, "real videos of this phase") if len(same) >= 2 else (list(range(len(real))), "all real videos")

    if run.runs("fid"):
        def moments(values, idx):
            m = Moments()
            for i in idx:
                m.add(values[i]["inception"])
            return m
        r, g = moments(real_values, range(len(real))), moments(gen_values, range(len(generated)))
        result["fid"] = frechet(r, g, ddof=1)
        counts.update(fid_real_frames=r.n, fid_generated_frames=g.n)
        for p in phases:
            idx, ref = reference(p)
            value = frechet(moments(real_values, idx), moments(gen_values, [i for i, v in enumerate(generated)
                                                                              if v.phase == p]), ddof=1)
            per_phase[p].update(fid=value, fid_reference=ref)
    if run.runs("fvd"):
        r = np.stack([v["i3d"] for v in real_values]) if real_values else np.zeros((0, 400))
        g = np.stack([v["i3d"] for v in gen_values]) if gen_values else np.zeros((0, 400))
        result["fvd"] = frechet(_m(r), _m(g), ddof=0)
        result["fvd_variant"] = c.fvd_variant
        counts.update(fvd_real_clips=len(r), fvd_generated_clips=len(g))
        for p in phases:
            idx, ref = reference(p)
            gi = [i for i, v in enumerate(generated) if v.phase == p]
            per_phase[p].update(fvd=frechet(_m(r[idx]), _m(g[gi]), ddof=0), fvd_reference=ref)
    if run.runs("clipscore"):
        scored = [(v, vals["clip"]["frame_scores"]) for v, vals in zip(generated, gen_values) if "clip" in vals]
        result["clipscore"] = _mean(video_clipscore(s) for _, s in scored)
        raw = np.concatenate([np.asarray(s, np.float64) for _, s in scored]) if scored else np.zeros(0)
        result["clipscore_torchmetrics"] = float(max(raw.mean(), 0.0)) if len(raw) else None
        counts.update(clip_videos=len(scored), clip_frames=int(len(raw)))
        for p in phases:
            per_phase[p]["clipscore"] = _mean(video_clipscore(s) for v, s in scored if v.phase == p)
    if run.runs("leakage"):
        flagged = [{"video": v.id, "path": str(v.path), **vals["leakage"]}
                   for v, vals in zip(generated, gen_values) if vals["leakage"]["reason"]]
        result["leakage_rate"] = len(flagged) / len(generated)
        result["leakage"] = {"flagged": flagged, "backend": c.privacy.backend}
        for p in phases:
            members = [vals for v, vals in zip(generated, gen_values) if v.phase == p]
            per_phase[p]["leakage_rate"] = sum(bool(m["leakage"]["reason"]) for m in members) / len(members)
    if run.runs("temporal"):
        def block(values):
            return {k: _mean(v["temporal"][k] for v in values) for k in ("ssim", "psnr", "flicker")}
        result["temporal"] = {"generated": block(gen_values), "real": block(real_values)}
        result["temporal_consistency"] = result["temporal"]["generated"]["ssim"]
        for p in phases:
            per_phase[p]["temporal_ssim"] = _mean(vals["temporal"]["ssim"] for v, vals in zip(generated, gen_values)
                                                  if v.phase == p)
    if run.runs("memorisation"):
        result.update(memorisation_summary(run, generated, gen_values, train, train_values, per_phase))
    result.update(counts=counts, per_phase=per_phase, skipped=run.skipped, weights=run.weights,
                  protocols=protocols(run), settings=_settings(c), versions=versions("scipy", "transformers"))
    return result


def _m(x: np.ndarray) -> Moments:
    m = Moments()
    m.add(x)
    return m


def memorisation_summary(run: Evaluation, generated, gen_values, train, train_values, per_phase) -> dict:
    c = run.config
    if not train_values:
        return {"memorisation_rate": None}
    idx, sims = memo.nearest(np.stack([v["descriptor"] for v in gen_values]),
                             np.stack([v["descriptor"] for v in train_values]), c.candidates)
    rows = []
    for gi, (video, vals) in enumerate(zip(generated, gen_values)):
        checks = [(memo.pixel_ssim(vals["pixels"], train_values[ti]["pixels"]), float(s), int(ti))
                  for ti, s in zip(idx[gi], sims[gi])]
        best_ssim, sim, ti = max(checks)
        rows.append({"video": video.id, "path": str(video.path), "nearest": train[ti].id,
                     "nearest_path": str(train[ti].path), "similarity": sim, "ssim": best_ssim,
                     "memorised": best_ssim >= c.memorisation_threshold, "phase": video.phase})
    for p in per_phase:
        members = [r for r in rows if r["phase"] == p]
        per_phase[p]["memorisation_rate"] = sum(r["memorised"] for r in members) / len(members) if members else None
    rows.sort(key=lambda r: -r["ssim"])
    return {"memorisation_rate": sum(r["memorised"] for r in rows) / len(rows),
            "memorisation": {"threshold": c.memorisation_threshold, "descriptor": run.descriptor,
                             "candidates": c.candidates, "flagged": [r for r in rows if r["memorised"]],
                             "closest": rows[:max(c.examples, 8)]}}


def protocols(run: Evaluation) -> dict[str, str]:
    c = run.config
    resize = ("bilinear resize of the whole frame to 224x224 (half-pixel centres)" if c.fvd_variant == "fvd2048_16f"
              else "bilinear resize of the short side to 224 and the central 224x224")
    texts = dict(PROTOCOLS)
    texts["fvd"] = texts["fvd"].format(frames=c.frames, resize=resize)
    if c.fvd_variant != "fvd2048_16f":
        texts["fvd"] = texts["fvd"].replace("StyleGAN-V's fvd2048_16f", f"the {c.fvd_variant} variant of fvd2048_16f")
    texts["memorisation"] = texts["memorisation"].format(k=c.candidates, threshold=c.memorisation_threshold,
                                                         descriptor={"inception": "mean FID-Inception",
                                                                     "i3d": "I3D-logit",
                                                                     "pixels": "grey-thumbnail"}[run.descriptor])
    return {m: texts[m] for m in run.metrics}


def _settings(c: EvaluateConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(c).items()}
