"""`ophora train`: one training loop for CogVideoX-family transformers (TPT and P2FT are configs).

Read top to bottom: check inputs, build (accelerator, model, optimizer, data), resume, loop (loss,
backward, clip, step, log, checkpoint, validate), export. The loss is `diffusion_loss` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ophora.train.batches import MicroBatches
from ophora.core.dataset import read_csv_pairs
from ophora.core.errors import ConfigError, InputError
from ophora.core.latent_cache import (cache_state, cache_video_settings, intact_entries, read_cache_info,
                                     read_index)
from ophora.core.models import TRAIN_RECORD, encoder_fingerprint, fingerprint, resolve_model
from ophora.core.signals import Interrupted, die_with_parent, stop_requests
from ophora.core.versions import versions
from ophora.train.blocks import AUTOCAST_DTYPES, configure_attention, configure_blocks
from ophora.train.checkpoint import (TrainState, checkpoints, claim_run, resume, save_checkpoint, truncate_metrics,
                                     write_run_record)
from ophora.train.config import TrainConfig
from ophora.train.export import export_pipeline, merged_lora_state_dict
from ophora.train.fp8 import apply_fp8_linears
from ophora.train.positions import rotary_embeddings
from ophora.train.report import write_report
from ophora.train.timesteps import sample_seed, sample_timesteps

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- inputs


def check_cache(config: TrainConfig, model_dir: Path) -> tuple[dict, list, int]:
    """The cache's info, its intact entries and how many damaged ones were left out (each named in a warning),
    after checking it was made with this model's VAE and text encoder."""
    cache = Path(config.cache)
    info = read_cache_info(cache)
    fingerprint = encoder_fingerprint(model_dir)
    if info["encoder_fingerprint"] != fingerprint:
        raise InputError(f"cache {cache} was made with another VAE/text encoder ({info['model']}) than {config.model}; "
                         f"prepare a cache with --model {config.model}")
    subset = None
    if config.subset_csv:
        subset = {clip_id for clip_id, _ in read_csv_pairs(Path(config.subset_csv))}
    entries, damaged = intact_entries(cache, read_index(cache, subset))
    for entry, problem in damaged:
        log.warning("cache clip %s is damaged and left out of training: %s", cache / entry.file, problem)
    if damaged:
        log.warning("%d damaged cache clip(s) left out; rerun `ophora prepare` with the same settings to re-encode them",
                    len(damaged))
    if not entries:
        raise InputError(f"cache {cache} holds none of the clips of {config.subset_csv or 'its index'}"
                         + (f" intact ({len(damaged)} damaged)" if damaged else ""))
    return info, entries, len(damaged)


def check_model_fits_cache(transformer, info: dict, entries: list) -> None:
    """The transformer must take the cache's latent channels and text embedding width."""
    cfg = transformer.config
    channels = {e.latent_shape[0] for e in entries}
    if channels != {cfg.in_channels}:
        raise InputError(f"cache latents have {sorted(channels)} channels, the transformer takes {cfg.in_channels}")
    for shape in info["latent_shapes"]:
        if shape[2] % cfg.patch_size or shape[3] % cfg.patch_size:
            raise InputError(f"cache latent size {shape[2]}x{shape[3]} is not divisible by the patch size {cfg.patch_size}")
    if cfg.get("patch_size_t") is not None:
        raise ConfigError("CogVideoX 1.5 models (temporal patches) are not supported by this trainer yet")


# ------------------------------------------------------------------------------------------- build


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    # accelerate keeps one state per process; a second run in the same process (TPT then P2FT in
    # `ophora demo`, or tests) may use another precision, so start from a fresh state.
    AcceleratorState._reset_state()
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a GPU; use mixed_precision=bf16 or no on the CPU")
    return Accelerator(
        mixed_precision=config.mixed_precision, log_with="tensorboard", cpu=not torch.cuda.is_available(),
        project_config=ProjectConfiguration(project_dir=config.out, logging_dir=str(Path(config.out) / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )


def load_transformer(model_dir: Path, config: TrainConfig, device: torch.device):
    """The transformer in fp32 (the master weights), with LoRA layers, FP8 linears, the attention kernel for
    `device`, gradient checkpointing and compilation as configured (float8 conversion and the kernel come before
    compilation, as torchao asks)."""
    from diffusers import CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel.from_pretrained(model_dir / "transformer", torch_dtype=torch.float32)
    if config.mode == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)
        check_lora_targets(transformer, config.lora_targets)
        transformer.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights=True,
                                           target_modules=config.lora_targets))
    apply_fp8_linears(transformer, config.fp8_linears)
    configure_attention(transformer, config.attention, device, config.mixed_precision)
    configure_blocks(transformer, config.gradient_checkpointing, config.checkpoint_blocks,
                     config.selective_checkpointing, config.compile_blocks)
    return transformer.train()


def check_lora_targets(transformer: torch.nn.Module, targets: list[str]) -> None:
    """Every LoRA target must name (the end of) a linear layer's name, as peft matches them; else a ConfigError."""
    linear = [name for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in linear)]
    if unmatched:
        names = sorted({n.split(".")[-1] if not n.split(".")[-1].isdigit() else ".".join(n.split(".")[-2:])
                        for n in linear})
        raise ConfigError(f"lora_targets {', '.join(repr(t) for t in unmatched)} match no linear layer of the "
                          f"transformer; its layers end in: {', '.join(names)}")


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on GPU) or bitsandbytes' 8-bit AdamW."""
    kwargs = dict(lr=config.learning_rate, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay,
                  eps=config.epsilon)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer adamw8bit needs bitsandbytes: pip install 'ophora[bnb]'") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, fused=torch.cuda.is_available(), **kwargs)


def make_lr_scheduler(optimizer, config: TrainConfig):
    from diffusers.optimization import get_scheduler

    try:
        return get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                             num_training_steps=config.steps, num_cycles=config.lr_cycles)
    except ValueError as exc:
        raise ConfigError(f"lr_schedule: {exc}") from None


# ------------------------------------------------------------------------------------------- the loss


def diffusion_loss(model, noise_scheduler, batch: dict, config: TrainConfig, scaling_factor: float,
                   global_batch: int, strata: int, model_config) -> torch.Tensor:
    """CogVideoX's loss: v-prediction turned into an x0 estimate, MSE weighted by 1 / (1 - alpha_bar_t).

    (The weighted x0 error equals the plain v-prediction error: both are CogVideoX's objective.) Every random
    draw is seeded by (seed, micro-batch, global position), so it is the same however many processes run.
    """
    device = next(model.parameters()).device
    micro_step, positions = int(batch["micro_step"]), batch["positions"].tolist()
    mean = batch["latent_mean"].to(device, torch.float32)

    def per_sample_normal(purpose: str) -> torch.Tensor:
        draws = [torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(
            sample_seed(config.seed, micro_step, g, purpose))) for g in positions]
        return torch.stack(draws).to(device)

    latents = mean
    if config.posterior_draws:
        latents = mean + torch.exp(0.5 * batch["latent_logvar"].to(device, torch.float32)) * per_sample_normal("latent")
    latents = (latents * scaling_factor).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W) -> (B, F, C, H, W)
    noise = per_sample_normal("noise").permute(0, 2, 1, 3, 4)
    timesteps = sample_timesteps(config.timestep_sampling, positions, global_batch, strata,
                                 noise_scheduler.config.num_train_timesteps, config.seed, micro_step).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    frames, _, height, width = latents.shape[1:]
    prediction = model(hidden_states=noisy, encoder_hidden_states=batch["prompt_embeds"].to(device), timestep=timesteps,
                       image_rotary_emb=rotary_embeddings(model_config, frames, height, width, device),
                       return_dict=False)[0]
    x0 = noise_scheduler.get_velocity(prediction.float(), noisy, timesteps)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)[timesteps]
    weights = (1 / (1 - alphas_cumprod)).view(-1, 1, 1, 1, 1)
    return (weights * (x0 - latents) ** 2).flatten(1).mean(1).mean()


# ------------------------------------------------------------------------------------------- the run


def train(config: TrainConfig) -> Path:
    """Train as `config` says, resuming the run in `config.out` if there is one; returns the run folder."""
    from diffusers import CogVideoXDDIMScheduler

    # 1. inputs, checked before anything heavy is loaded
    config.check()
    model_dir = resolve_model(config.model)
    info, entries, damaged = check_cache(config, model_dir)
    video = cache_video_settings(info, entries)  # what the trained model makes by default (travels with it)
    out = Path(config.out)
    inputs = {"base_weights_state": fingerprint([model_dir / "transformer"], with_mtime=False),
              "cache_state": cache_state(Path(config.cache), info, entries)}
    claim_run(out, config, inputs)
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    strata = config.strata or world
    global_batch = config.batch_size * world
    if config.timestep_sampling == "stratified" and strata > global_batch:
        raise ConfigError(f"strata {strata} exceeds the global batch {global_batch}: some strata would get no sample")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.allow_tf32

    # 2. model, optimizer, schedule
    transformer = load_transformer(model_dir, config, accelerator.device)
    check_model_fits_cache(transformer, info, entries)
    noise_scheduler = CogVideoXDDIMScheduler.from_pretrained(model_dir / "scheduler")
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    lr_scheduler = make_lr_scheduler(optimizer, config)
    model, optimizer = accelerator.prepare(transformer, optimizer)  # the LR schedule is saved by save_checkpoint
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out, config, inputs, {"world_size": world, "clips": len(entries), "damaged_clips": damaged,
                                       "cache": info["model"],
                                       "trainable_parameters": sum(p.numel() for p in params),
                                       "video": video})
    accelerator.wait_for_everyone()

    # 3. resume
    state = resume(accelerator, out, lr_scheduler)
    if accelerator.is_main_process:
        truncate_metrics(out / "metrics.jsonl", state.step)
    last = min(config.steps, config.stop_at_step or config.steps)
    data = MicroBatches(Path(config.cache), entries, config.batch_size, rank, world, config.seed,
                        start=state.micro_step, count=max(0, last - state.step) * config.grad_accum)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=config.num_workers,
                                              pin_memory=torch.cuda.is_available(),
                                              worker_init_fn=functools.partial(_worker_init, os.getpid())))
    accelerator.init_trackers("train", config={k: v for k, v in dataclasses.asdict(config).items()
                                                if isinstance(v, (int, float, str, bool))})
    log.info("training %s on %d clips: steps %d..%d, %d process(es), global batch %d x %d accumulation",
             config.mode, len(entries), state.step + 1, last, world, global_batch, config.grad_accum)

    # 4. the loop; SIGINT/SIGTERM: checkpoint at the end of the step in hand, then stop (core/signals.py)
    validator = None
    progress = tqdm(range(state.step + 1, last + 1), desc="train", disable=not accelerator.is_main_process)
    tick, samples = time.perf_counter(), 0
    with stop_requests("training step") as stop:
        for step in progress:
            finite, losses = True, []
            for k in range(config.grad_accum):
                batch = next(loader)
                sync = contextlib.nullcontext() if k == config.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss = diffusion_loss(model, noise_scheduler, batch, config, info["vae_scaling_factor"], global_batch,
                                          strata, transformer.config)
                    bad = accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum")
                    if bad.item() > 0:
                        finite = False  # not trained on: no backward, and this step's update is dropped
                    else:
                        accelerator.backward(loss / config.grad_accum)
                losses.append(accelerator.reduce(loss.detach(), "mean"))
                state.micro_step += 1
            grad_norm = torch.tensor(float("nan"))
            if finite:
                norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)  # None under DeepSpeed, which clips itself
                grad_norm = grad_norm if norm is None else norm.detach().float()
                # fp16: the loss scaler skips an overflowing step itself
                finite = norm is None or bool(torch.isfinite(grad_norm)) or config.mixed_precision == "fp16"
            if finite:
                optimizer.step()
            else:
                state.skipped += 1
                log.warning("step %d: non-finite loss or gradient, update skipped (%d so far)", step, state.skipped)
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step = step
            samples += global_batch * config.grad_accum

            loss_value = torch.stack(losses).mean().item()
            line = {"step": step, "loss": loss_value, "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "skipped": not finite}
            if step % config.log_every == 0 or step == last or not finite:
                now = time.perf_counter()
                record = {"step": step, "loss": loss_value, "lr": lr_scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "samples_per_s": samples / (now - tick), "skipped": state.skipped}
                tick, samples = now, 0
                if torch.cuda.is_available():
                    record["memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                accelerator.log({k: v for k, v in record.items() if k != "step" and math.isfinite(v)}, step=step)
                line.update({k: record[k] for k in ("samples_per_s", "memory_gib") if k in record})
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{record['lr']:.2e}")
            if accelerator.is_main_process:
                with (out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(line) + "\n")
            stopping = _stop_agreed(accelerator, stop)
            if stopping or step % config.checkpoint_every == 0 or step == last:
                check_finite(accelerator, model, step, out)
                saved = save_checkpoint(accelerator, out, state, lr_scheduler, config.keep_checkpoints)
            if stopping:
                raise Interrupted(stopping, f"saved checkpoint {saved} (step {step} of {config.steps})")
            if config.validation_prompts and (step == config.steps or (config.validate_every and step % config.validate_every == 0)):
                validator = validate(accelerator, model, model_dir, config, out, step, validator, video)

    # 5. export
    if state.step >= config.steps and config.export and not exported(out, state):
        check_finite(accelerator, model, state.step, out)
        export(accelerator, model, model_dir, config, out, state, video)
    if accelerator.is_main_process:
        write_report(out)  # RUN/report.html: loss, learning rate, grad norm and validation videos over the steps
    accelerator.end_training()
    return out


def _worker_init(parent: int, worker: int) -> None:
    die_with_parent(parent)


def check_finite(accelerator, model, step: int, out: Path) -> None:
    """ConfigError when a trainable weight holds NaN/inf (on any process): the run diverged, nothing of it is kept."""
    weights = [p.detach() for p in model.parameters() if p.requires_grad]
    bad = torch.stack([~torch.isfinite(w).all() for w in weights]).any().float() if weights else torch.zeros(())
    if accelerator.reduce(bad.to(accelerator.device), "sum").item() > 0:
        good = checkpoints(out)
        raise ConfigError(f"training diverged: the weights hold NaN/inf after step {step}, so nothing of it is saved or "
                          f"exported (newest checkpoint: {good[-1] if good else 'none'}); train again in a new out with "
                          "a lower learning_rate or max_grad_norm")


def _stop_agreed(accelerator, stop) -> int:
    """The signal that stops every process at this step boundary (0: go on); all processes decide alike."""
    asked = accelerator.reduce(torch.tensor(float(stop.signum), device=accelerator.device), "sum").item()
    return (stop.signum or signal.SIGTERM) if asked else 0


def validate(accelerator, model, model_dir: Path, config: TrainConfig, out: Path, step: int, validator, video: dict):
    """Render the validation prompts on the main process and log their middle frames to TensorBoard."""
    from ophora.train.validation import Validator

    if accelerator.is_main_process:
        if validator is None:
            validator = Validator(model_dir, accelerator.unwrap_model(model), accelerator.device,
                                  AUTOCAST_DTYPES[config.mixed_precision])
        results = validator.render(config, video, out / "validation" / f"step-{step:07d}", accelerator.autocast)
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        for i, (_, frame) in enumerate(results):
            tracker.add_image(f"validation/{i}", frame, step, dataformats="HWC")
    accelerator.wait_for_everyone()
    return validator


def exported(out: Path, state: TrainState) -> bool:
    """Whether out/final already holds this run's model at this step (a finished run rerun: keep it as is)."""
    record = out / "final" / TRAIN_RECORD
    try:
        return json.loads(record.read_text()).get("steps") == state.step
    except (OSError, ValueError, AttributeError):
        return False


def export(accelerator, model, model_dir: Path, config: TrainConfig, out: Path, state: TrainState, video: dict) -> None:
    """Write out/final: a diffusers pipeline folder with the trained transformer (LoRA merged)."""
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP/ZeRO-3 shards; every process calls it
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if config.mode == "lora":
            state_dict = merged_lora_state_dict(unwrapped)
        record = {"versions": versions(), "base_model": config.model, "steps": state.step,
                  "skipped_steps": state.skipped, "video": video, "config": dataclasses.asdict(config),
                  "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        final = export_pipeline(model_dir, dict(unwrapped.config), state_dict, out / "final", record)
        log.info("exported the trained pipeline to %s", final)
    accelerator.wait_for_everyone()
