"""The training configuration: one flat dataclass, loaded from YAML with `key=value` overrides."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ophora.core.attention import TRAIN_CHOICES
from ophora.core.config import apply_values
from ophora.core.errors import ConfigError
from ophora.core.models import frames_problem

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults are the paper's TPT settings (configs/tpt.yaml)."""

    # what to train, on what, where
    model: str = ""                    # base pipeline: a diffusers folder or hub id (TPT: CogVideoX-2b; P2FT: the TPT output)
    cache: str = ""                    # latent cache made by `ophora prepare`
    out: str = ""                      # run folder: checkpoints, logs, validation videos, final/
    subset_csv: str | None = None      # train only on the clip ids of this CSV (P2FT: privacy_preserved.csv)
    # schedule
    steps: int = 65000
    learning_rate: float = 1e-4
    lr_schedule: str = "cosine_with_restarts"  # any diffusers.optimization scheduler name
    lr_cycles: int = 1
    warmup_steps: int = 800
    # optimizer
    optimizer: str = "adamw"           # adamw (fused on GPU) | adamw8bit (bitsandbytes, `pip install ophora[bnb]`)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1e-3
    epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # batch
    batch_size: int = 8                # per process
    grad_accum: int = 1
    num_workers: int = 2
    # diffusion
    timestep_sampling: str = "stratified"  # stratified | uniform
    strata: int | None = None          # number of timestep sub-intervals; default: the number of processes
    posterior_draws: bool = True        # draw from the VAE posterior (as CogVideoX's script) instead of its mean
    # model
    mode: str = "full"                 # full | lora
    lora_rank: int = 64
    lora_alpha: int = 64
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    mixed_precision: str = "fp16"      # fp16 | bf16 | no  (the weights stay fp32: master copy)
    gradient_checkpointing: bool = True
    checkpoint_blocks: int | None = None  # checkpoint only the first N blocks (faster, more memory); None: all
    selective_checkpointing: bool = False  # keep attention outputs instead of recomputing them (see train/blocks.py)
    compile_blocks: bool = False       # torch.compile each transformer block
    fp8_linears: bool = False          # float8 matmuls in the blocks' linears (torchao, SM89+ GPU; else bf16: train/fp8.py)
    attention: str = "sdpa"            # sdpa | fa4 (FlashAttention-4, exact) | auto (fa4 where it runs, else sdpa);
    #                                    sdpa stays the default until fa4 has run on a GPU (benchmarks/gpu_fa4.sh)
    allow_tf32: bool = True
    seed: int = 42
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 0            # 0: only at the end (when there are validation prompts)
    validation_prompts: list[str] = field(default_factory=list)
    validation_frames: int | None = None   # None: the cache's (largest frame bucket, most common size)
    validation_height: int | None = None
    validation_width: int | None = None
    validation_steps: int = 50
    validation_guidance: float = 6.0
    export: bool = True                # write <out>/final, a diffusers pipeline folder
    stop_at_step: int | None = None    # stop early as if interrupted (resume later with the same config)

    def identity(self) -> dict:
        """The settings a run's result depends on; a run folder may only be resumed with the same ones."""
        free = {"out", "steps", "num_workers", "checkpoint_blocks", "selective_checkpointing", "compile_blocks",
                "fp8_linears", "attention", "log_every", "checkpoint_every", "keep_checkpoints", "validate_every",
                "validation_prompts",
                "validation_frames", "validation_height", "validation_width", "validation_steps", "validation_guidance",
                "export", "stop_at_step"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in free}

    def check(self) -> None:
        """Raise ConfigError for any setting the trainer cannot use, before anything is loaded."""
        for name in ("model", "cache", "out"):
            if not getattr(self, name):
                raise ConfigError(f"config key {name!r} is required")
        choices = {"optimizer": ("adamw", "adamw8bit"), "timestep_sampling": ("stratified", "uniform"),
                   "mode": ("full", "lora"), "mixed_precision": ("fp16", "bf16", "no"),
                   "attention": TRAIN_CHOICES}
        from diffusers.optimization import SchedulerType

        choices["lr_schedule"] = tuple(s.value for s in SchedulerType)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                     "validation_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "max_grad_norm", "epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "num_workers", "validate_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.lr_cycles < 1:
            raise ConfigError(f"lr_cycles must be at least 1, got {self.lr_cycles}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ConfigError(f"stop_at_step must be at least 1, got {self.stop_at_step}")
        if self.mode == "lora" and not self.lora_targets:
            raise ConfigError("lora_targets is empty: name the modules LoRA adapts (e.g. to_q, to_k, to_v, to_out.0)")
        if self.fp8_linears and self.mode == "lora":
            raise ConfigError("fp8_linears applies to full fine-tuning only (mode: full); turn it off for LoRA")
        if self.checkpoint_blocks is not None and self.checkpoint_blocks < 0:
            raise ConfigError(f"checkpoint_blocks must be 0 or more, got {self.checkpoint_blocks}")
        if self.strata is not None and self.strata < 1:
            raise ConfigError(f"strata must be at least 1, got {self.strata}")
        if self.validation_frames is not None and (problem := frames_problem(self.validation_frames)):
            raise ConfigError(f"validation_frames {problem}")
        for name in ("validation_height", "validation_width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 16):
                raise ConfigError(f"{name} must be a positive multiple of 16, got {value}")


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' -> (key, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: cannot parse the value") from None


def find_config(path: str | Path) -> Path:
    """`path` itself, or the config of that name shipped with ophora (`tpt`, `p2ft.yaml`, `configs/tiny-tpt.yaml`)."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = Path(__file__).resolve().parents[1] / "configs" / Path(path).with_suffix(".yaml").name
    if bundled.is_file():
        return bundled
    shipped = sorted(p.stem for p in bundled.parent.glob("*.yaml"))
    raise ConfigError(f"config file not found: {path} (configs shipped with ophora: {', '.join(shipped)})")


def read_config_file(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """The keys of a YAML config, with those of its `base:` config (a shipped name or a path) underneath."""
    path = find_config(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: its base: chain comes back to itself")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = values.pop("base", None)
    if base is None:
        return values
    sibling = (path.parent / str(base)).with_suffix(".yaml")  # a base beside the config, else a path or shipped name
    return {**read_config_file(sibling if sibling.is_file() else str(base), (*seen, path.resolve())), **values}


RENAMED_KEYS = {"sample_latents": "posterior_draws"}  # old key -> new key, still read with a warning


def _renamed(values: dict, source: str) -> dict:
    for old, new in RENAMED_KEYS.items():
        if old in values:
            log.warning("config key %r in %s is deprecated; use %r", old, source, new)
            values = {(new if k == old else k): v for k, v in values.items()}
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A checked TrainConfig from the defaults, a YAML file (over its `base:`) and `key=value` overrides, in order."""
    config = TrainConfig()
    if path is not None:
        apply_values(config, _renamed(read_config_file(path), str(path)), str(path))
    apply_values(config, _renamed(dict(parse_override(o) for o in overrides), "the overrides"), "the overrides")
    config.check()
    return config
