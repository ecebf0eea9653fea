"""Keep the scheduler's timesteps on the host, so diffusers' denoising loop never waits for the GPU.

diffusers' CogVideoX loop reads the current timestep on the host several times a step (dynamic CFG's
`t.item()`; the DPM and DDIM schedulers index their host-side `alphas_cumprod` with it and compare the
previous timestep with 0). With the timesteps on the GPU each of those reads waits until the GPU has
finished all queued work, so after every step the GPU idles while the host prepares the next one. Here the
scheduler keeps its timesteps on the host (the reads cost nothing) and the transformer receives a copy of each
timestep, copied to the GPU in one transfer per generation. The values are the same integers, so the result is bit for bit
the same.
"""

from __future__ import annotations

import torch

_FLAG = "_ophora_host_timesteps"


def keep_timesteps_on_host(pipe, device: str | torch.device) -> None:
    """Make `pipe.scheduler` keep its timesteps on the host and hand the transformer `device` copies of them.
    Calling it again (also after the scheduler was replaced) is harmless."""
    scheduler = pipe.scheduler
    target = torch.device(device)
    if not getattr(scheduler, _FLAG, False):
        set_timesteps = scheduler.set_timesteps

        def host_set_timesteps(*args, device=None, **kwargs):
            set_timesteps(*args, device="cpu", **kwargs)
            host = scheduler.timesteps
            # one copy of the whole table; from pinned memory it does not make the host wait
            table = host.pin_memory().to(target, non_blocking=True) if target.type == "cuda" else host.to(target)
            scheduler._ophora_on_device = {t: table[i] for i, t in enumerate(host.tolist())}

        scheduler.set_timesteps = host_set_timesteps
        setattr(scheduler, _FLAG, True)
    transformer = pipe.transformer
    if getattr(transformer, "_ophora_timestep_hook", None) is not None:
        transformer._ophora_timestep_hook.remove()
    transformer._ophora_timestep_hook = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: _timestep_on_device(pipe.scheduler, target, args, kwargs), with_kwargs=True)


def _timestep_on_device(scheduler, target: torch.device, args: tuple, kwargs: dict):
    """The transformer's arguments with a host `timestep` keyword swapped for its device copy."""
    t = kwargs.get("timestep")
    if not isinstance(t, torch.Tensor):
        return None
    copies = getattr(scheduler, "_ophora_on_device", {})
    values = t.reshape(-1).tolist() if t.device.type == "cpu" else []
    if t.dim() == 1 and values and all(v == values[0] for v in values) and values[0] in copies:
        kwargs["timestep"] = copies[values[0]].expand(len(values))
    elif t.device != target:  # a timestep the scheduler did not make (a caller's own): copied as is
        kwargs["timestep"] = t.to(target, non_blocking=True)
    else:
        return None
    return args, kwargs
