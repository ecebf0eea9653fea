"""The training configuration: one flat dataclass, loaded from YAML with `key=value` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ophora.errors import ConfigError


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
    sample_latents: bool = True        # draw from the VAE posterior (as CogVideoX's script) instead of its mean
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
    allow_tf32: bool = True
    seed: int = 42
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 0            # 0: only at the end (when there are validation prompts)
    validation_prompts: list[str] = field(default_factory=list)
    validation_frames: int = 49
    validation_height: int = 480
    validation_width: int = 720
    validation_steps: int = 50
    validation_guidance: float = 6.0
    export: bool = True                # write <out>/final, a diffusers pipeline folder
    stop_at_step: int | None = None    # stop early as if interrupted (resume later with the same config)

    def identity(self) -> dict:
        """The settings a run's result depends on; a run folder may only be resumed with the same ones."""
        free = {"out", "steps", "num_workers", "checkpoint_blocks", "selective_checkpointing", "compile_blocks",
                "log_every", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_prompts",
                "validation_frames", "validation_height", "validation_width", "validation_steps", "validation_guidance",
                "export", "stop_at_step"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in free}

    def check(self) -> None:
        """Raise ConfigError for any setting the trainer cannot use, before anything is loaded."""
        for name in ("model", "cache", "out"):
            if not getattr(self, name):
                raise ConfigError(f"config key {name!r} is required")
        choices = {"optimizer": ("adamw", "adamw8bit"), "timestep_sampling": ("stratified", "uniform"),
                   "mode": ("full", "lora"), "mixed_precision": ("fp16", "bf16", "no")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                     "validation_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0:
            raise ConfigError("learning_rate and max_grad_norm must be positive")
        if self.checkpoint_blocks is not None and self.checkpoint_blocks < 0:
            raise ConfigError(f"checkpoint_blocks must be 0 or more, got {self.checkpoint_blocks}")
        if self.strata is not None and self.strata < 1:
            raise ConfigError(f"strata must be at least 1, got {self.strata}")
        if (self.validation_frames - 1) % 8:
            raise ConfigError(f"validation_frames must be 8k+1 (9, 17, ..., 49), got {self.validation_frames}")


def _coerce(name: str, value, hint):
    """Convert a YAML value to the field's type, or raise ConfigError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r} wants a list, got {value!r}")
        return [_coerce(name, v, args[0]) for v in value]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r} wants {getattr(hint, '__name__', hint)}, got {value!r}") from None


def _apply(config: TrainConfig, values: dict, source: str) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for key, value in values.items():
        if key not in hints:
            near = difflib.get_close_matches(key, hints, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        setattr(config, key, _coerce(key, value, hints[key]))


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A checked TrainConfig from a YAML file (or the defaults) and `key=value` overrides, applied in order."""
    config = TrainConfig()
    if path is not None:
        path = find_config(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        _apply(config, values, str(path))
    _apply(config, dict(parse_override(o) for o in overrides), "the overrides")
    config.check()
    return config
