"""`ophora downstream`'s settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ophora.core.config import option
from ophora.core.errors import ConfigError
from ophora.downstream.models import MODELS
from ophora.downstream.splits import check_fractions


@dataclass
class DownstreamConfig:
    annotations: list[Path] = option(help="phase annotations: Cataract-1K *_annotations_phases.csv files (with their "
                                     "*_video.csv), an OphNet2024_loca_*.csv, or folders holding them")
    videos: Path = option(help="folder of the annotated videos, searched recursively; a video's file name is its "
                          "annotation id (case_4687.mp4, case_0002.mp4)")
    out: Path = option(help="output folder (results.json, report.html, clips/, runs/); rerun to resume")
    synthetic: list[Path] = option([], "generated videos to add: `ophora sample` output folders or their "
                                   "manifest.csv (phase from the 'phase' column or the clip id, e.g. capsulorhexis_1)")
    phase_map: Path | None = option(None, "CSV mapping generated clip ids to phases: columns 'clip id' and "
                                    "'phase' (a prompt CSV with a phase column works); overrides the manifest")
    generated_only: bool = option(False, "also train on generated clips alone (run c)")
    model: str = option("mvit_v2_s", "video network (mvit_v2_tiny: a small MViTv2 for CPU smoke tests)",
                        choices=MODELS)
    weights: Path | None = option(None, "pretrained weights in torchvision's Kinetics-400 layout (.pth read with "
                                  "weights_only, or .safetensors); from scratch when left out")
    clip_frames: int = option(16, "frames per clip")
    clip_size: int = option(224, "clip height and width in pixels (short side resized, centre crop)")
    clip_fps: float = option(8.0, "frames per second sampled into a clip (16 frames at 8 fps cover 2 s)")
    clips_per_segment: int = option(4, "most clips cut from one annotated segment or one generated video")
    epochs: int = option(20, "training epochs, the same for every training set")
    batch_size: int = option(8, "clips per forward pass on one device (a shard of the global batch)")
    batch_shards: int | None = option(None, "shards per global batch (global batch: shards x --batch-size clips); "
                                      "processes run them in turn, gradients summed; default: the number of "
                                      "processes. The same shards and batch size give the same result on any "
                                      "number of GPUs")
    lr: float = option(1e-4, "peak AdamW learning rate (cosine decay after a one-epoch warm-up)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    seed: int = option(0, "seed of the initial weights, data order and seeded splits")
    splits: Path | None = option(None, "CSV with columns 'video' and 'split' (train, val, test) fixing each video's "
                                 "split; else the annotations' own split column (OphNet), else seeded")
    split_fractions: list[float] = option([0.7, 0.1, 0.2], "train,val,test shares of the videos when splits are "
                                          "seeded")
    workers: int | None = option(None, "worker processes cutting clips and loading batches, per process "
                                 "(default: min(4, CPU cores); 0: all in the main process)")
    device: str = option("", "cpu, cuda or cuda:N (default: the GPU when there is one)")
    amp: bool = option(True, "bf16 mixed precision on GPUs")

    def check(self) -> None:
        """Raise a ConfigError naming the first bad setting."""
        if not self.annotations:
            raise ConfigError("--annotations names no file or folder")
        for name in ("clip_frames", "clip_size", "clips_per_segment", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.clip_size < 16:
            raise ConfigError(f"--clip-size must be at least 16 pixels, got {self.clip_size}")
        if self.clip_fps <= 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("--clip-fps and --lr must be above 0 and --weight-decay at least 0")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.batch_shards is not None and self.batch_shards < 1:
            raise ConfigError(f"--batch-shards must be at least 1, got {self.batch_shards}")
        if self.generated_only and not self.synthetic:
            raise ConfigError("--generated-only needs --synthetic videos")
        check_fractions(self.split_fractions)

    def identity(self, shards: int) -> dict:
        """The settings that change a result (not where files are, how fast they are read or on how many GPUs),
        with the batch shards in use."""
        return {**{k: getattr(self, k) for k in ("model", "clip_frames", "clip_size", "clip_fps", "clips_per_segment",
                                                 "epochs", "batch_size", "lr", "weight_decay", "seed",
                                                 "split_fractions", "amp")}, "batch_shards": shards}

    def worker_count(self) -> int:
        """--workers, or min(4, the CPU cores this process may use)."""
        if self.workers is not None:
            return self.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(4, cores)
