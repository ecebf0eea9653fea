"""`ophora sample`'s settings: one dataclass, from which the CLI flags are made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophora.core.config import option
from ophora.core.errors import ConfigError, InputError
from ophora.core.models import frames_problem
from ophora.core.vae_speed import AUTO_ON_OFF, compile_wanted
from ophora.sample.cache_spec import MODES as CACHE_MODES
from ophora.sample.cache_spec import NEEDS_WHOLE_CFG_BATCH, CacheSpec

DTYPES = ("bf16", "fp16", "fp32")
AUTHOR_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# --vae-compile auto compiles the decoder for runs this long: on the H200 compiling takes ~100 s and saves ~1.2 s
# a video (benchmarks/results/sample_gpu_h200.json, exact-vae-compiled), so it pays from about 85 videos
VAE_COMPILE_MIN_VIDEOS = 100


@dataclass
class SampleConfig:
    """Everything `ophora sample` needs. Frames, size and fps default to what the model was trained for."""

    model: str = option(help="hub id (e.g. General-Medical-AI/Ophora) or local diffusers pipeline folder")
    out: Path = option(help="output folder: <out>/<clip id>/<n>.mp4, manifest.csv, index.html")
    prompts: Path | None = option(None, "CSV (see --prompt-column/--id-column) or .txt file with one prompt a line")
    prompt: str | None = option(None, "a single prompt (instead of --prompts)")
    prompt_column: str = option("caption prompt", "CSV column holding the prompts")
    id_column: str = option("clip id", "CSV column naming each prompt's videos")
    videos_per_prompt: int = option(1, "videos made from each prompt (different seeds)")
    steps: int = option(50, "denoising steps", aliases=("--num_inference_steps",))
    guidance: float = option(6.0, "classifier-free guidance scale", aliases=("--guidance_scale",))
    dynamic_cfg: bool = option(True, "CogVideoX's dynamic CFG (the guidance scale follows a cosine over the steps)")
    negative_prompt: str = option("", "negative prompt for the unconditional half of CFG")
    frames: int | None = option(None, "frames per video, 8k+1 (9, 17, ..., 49); default: the model's (49 for CogVideoX-2b)",
                                aliases=("--num_frames",))
    height: int | None = option(None, "video height, a multiple of 16; default: the model's")
    width: int | None = option(None, "video width, a multiple of 16; default: the model's")
    fps: float | None = option(None, "frame rate of the written videos; default: the model's")
    seed: int = option(42, "run seed; each video's seed is derived from (seed, clip id, n)")
    fixed_seed: bool = option(False, "authors-compatible sampling: every video uses --seed itself instead of a seed "
                                     "derived from (seed, clip id, n)", group="authors-compatible sampling")
    one_based: bool = option(False, "authors-compatible sampling: number each prompt's videos 1, 2, ... "
                                    "(<clip id>/1.mp4) instead of 0, 1, ...", group="authors-compatible sampling")
    dtype: str | None = option(None, "weights and activations: bf16, fp16 or fp32; default: bf16 on GPU, fp32 on CPU",
                               choices=(*DTYPES, *AUTHOR_DTYPES))
    device: str | None = option(None, "default: cuda:<local rank> if a GPU is present, else cpu")
    scheduler: str = option("dpm", "sampler", choices=("dpm", "ddim"))
    lora: str | None = option(None, "LoRA weights (folder or .safetensors) to apply")
    lora_scale: float = option(1.0, "LoRA strength")
    vae_tiling: str = option("auto", "auto: decode untiled when it fits in free GPU memory", choices=AUTO_ON_OFF)
    vae_compile: str = option("auto", "GPU: torch.compile the VAE decoder, in channels-last layout (changes only bf16 "
                              f"rounding; H200: ~100 s of compiling, then 0.95 s instead of 2.15 s a 49x480x720 "
                              f"decode); auto = on when the run has at least {VAE_COMPILE_MIN_VIDEOS} videos to make",
                              choices=AUTO_ON_OFF)
    vae_channels_last: bool = option(False, "GPU: the VAE's convolutions in channels-last (NDHWC) memory layout, "
                                            "also uncompiled (slower on the H200: 3.15 s a decode)")
    qp: int = option(18, "H.264 constant quantizer, 0-51 (lower is better quality)")
    overwrite: bool = option(False, "redo videos that already exist")
    cfg_parallel: bool = option(False, "with torchrun: each pair of ranks shares one video, one CFG half each")
    attention: str = option("auto", "attention kernel: auto = FlashAttention-3 (fa3-fwd package) on Hopper GPUs, else "
                            "PyTorch SDPA; fa3, fa4 (FlashAttention-4, flash-attn-4 package, SM90/SM100) and sdpa are "
                            "exact; fp8 (FA3 with FP8 operands, per-head scales) is faster and inexact",
                            choices=("auto", "fa3", "fa4", "sdpa", "fp8"))
    compile: bool | None = option(None, "torch.compile the repeated transformer block (default: on with a CUDA GPU "
                                         "unless --lora is given, off on the CPU): faster steps, exact up to bf16 rounding; the first video "
                                         "pays the compiling (its time is logged), later runs load it from the "
                                         "on-disk cache")
    cache: str = option("none", "step caching, faster and inexact (see docs/sample.md): fixed = ophora's fixed "
                                "schedule (skipped steps known in advance), fbc = First Block Cache, taylorseer, pab = "
                                "Pyramid Attention Broadcast, fastercache (diffusers' hooks)", choices=CACHE_MODES,
                        group="step caching")
    cache_interval: int | None = option(None, "fixed/taylorseer: run the blocks every N-th step after the warm-up "
                                              "(default 3/5); pab/fastercache: compute attention every N-th step "
                                              "(default 2)", group="step caching")
    cache_warmup: int | None = option(None, "fixed/taylorseer: the first N steps always run (default 5/3)",
                                      group="step caching")
    cache_order: int | None = option(None, "fixed: 0 reuses the block residual, 1 extrapolates it linearly "
                                           "(default 1); taylorseer: Taylor order (default 1)", group="step caching")
    cache_threshold: float | None = option(None, "fbc: skip while the first block's residual changes less than "
                                                 "this (default 0.05)", group="step caching")
    fuse_qkv: bool | None = option(None, "fuse the attention projections (default: on GPU)", cli=False)
    step_progress: bool | None = option(None, "a progress bar over the denoising steps of each video (default: on "
                                              "GPU, where one video takes minutes)")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.prompts = Path(self.prompts) if self.prompts is not None else None
        self.dtype = AUTHOR_DTYPES.get(self.dtype, self.dtype)

    def check(self) -> None:
        """Catch every bad setting before any model is loaded (frames/size only once they are resolved)."""
        if (self.prompts is None) == (self.prompt is None):
            raise InputError("give exactly one of --prompts FILE or --prompt TEXT")
        for name in ("steps", "videos_per_prompt"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.qp <= 51:
            raise ConfigError(f"--qp must be between 0 and 51, got {self.qp}")
        if self.fixed_seed and self.videos_per_prompt > 1:
            raise ConfigError(f"--fixed-seed gives every video of a prompt the same seed, so --videos-per-prompt "
                              f"{self.videos_per_prompt} would make identical videos; drop one of the two")
        if self.cfg_parallel and self.guidance <= 1.0:
            raise ConfigError("--cfg-parallel splits classifier-free guidance over two ranks and needs --guidance > 1")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.lora is not None and not Path(self.lora).exists():
            raise InputError(f"LoRA weights not found: {self.lora}")
        if self.frames is not None:
            check_video_shape(self.frames, self.height or 16, self.width or 16, self.fps or 1)
        for name in ("vae_tiling", "vae_compile"):
            if getattr(self, name) not in AUTO_ON_OFF:
                raise ConfigError(f"--{name.replace('_', '-')} must be auto, on or off, got {getattr(self, name)!r}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        problems = self.cache_spec.problems()
        if problems:
            raise ConfigError(problems[0])
        if self.cfg_parallel and self.cache in NEEDS_WHOLE_CFG_BATCH:
            raise ConfigError(f"--cache {self.cache} decides from the whole CFG batch, which --cfg-parallel splits "
                              "over two ranks; use --cache fixed, taylorseer or pab with --cfg-parallel")

    def compiles_decoder(self, device: str, videos: int | None) -> bool:
        """Whether --vae-compile compiles the VAE decoder for a run of `videos` videos (None: not known) on `device`."""
        return compile_wanted(self.vae_compile, device, videos, VAE_COMPILE_MIN_VIDEOS)

    @property
    def cache_spec(self) -> CacheSpec:
        """The step-cache mode with its parameters (the mode's defaults where none was given)."""
        return CacheSpec.make(self.cache, self.cache_interval, self.cache_warmup, self.cache_order,
                              self.cache_threshold)

    def with_video(self, video: dict) -> "SampleConfig":
        """This config with unset frames/height/width/fps taken from `video` (the model's settings), checked."""
        import dataclasses

        filled = {k: getattr(self, k) if getattr(self, k) is not None else video[k]
                  for k in ("frames", "height", "width", "fps")}
        if self.frames is None and frames_problem(int(filled["frames"])):
            raise ConfigError(f"the model was trained on {filled['frames']}-frame clips, which CogVideoX cannot "
                              "decode back to that length; give --frames (9, 17, 25, 33, 41 or 49)")
        filled = {k: int(v) for k, v in filled.items() if k != "fps"} | {"fps": whole(filled["fps"])}
        check_video_shape(**filled)
        return dataclasses.replace(self, **filled)

    def settings(self) -> dict:
        """The settings a finished video's pixels depend on (besides its prompt, seed and the weights)."""
        keys = ["model", "steps", "guidance", "dynamic_cfg", "negative_prompt", "frames", "height", "width",
                "fps", "scheduler", "lora", "lora_scale", "dtype", "qp"]
        if self.attention == "fp8":  # the exact kernels (and compiling) only change bf16 rounding
            keys.append("attention")
        return {**{k: getattr(self, k) for k in keys}, **self.cache_spec.identity()}


def whole(fps: float) -> float | int:
    """A frame rate as an int when it is whole (8.0 -> 8), so that records and identities read as before."""
    return int(fps) if float(fps).is_integer() else float(fps)


def check_video_shape(frames: int, height: int, width: int, fps: float) -> None:
    """Frames must be 8k+1 (see core.models.frames_problem) and sides multiples of 16."""
    if problem := frames_problem(frames):
        raise ConfigError(f"--frames {problem}: CogVideoX's VAE turns (frames - 1) / 4 + 1 latent "
                          "frames into video and needs that number odd")
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 16:
            raise ConfigError(f"--{name} must be a positive multiple of 16, got {value}")
    if not fps > 0:
        raise ConfigError(f"--fps must be positive, got {fps}")
