"""GPU levers for the CogVideoX VAE, used by prepare (the encoder) and sample (the decoder): channels-last
(NDHWC) convolution weights and `torch.compile` of one half. Both change only rounding."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def to_channels_last(vae) -> None:
    """The VAE's convolution weights in channels-last layout (NDHWC for 3-D, NHWC for 2-D convolutions); the
    convolutions then compute in that layout (prepare's `encode_videos` also hands its inputs over in it)."""
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            layout = torch.channels_last_3d if module.weight.dim() == 5 else torch.channels_last
            module.weight.data = module.weight.data.contiguous(memory_format=layout)
    vae._ophora_channels_last = True


AUTO_ON_OFF = ("auto", "on", "off")  # the values of the VAE switches --vae-compile and --vae-tiling


def compile_wanted(setting: str, device: str, count: int | None, minimum: int) -> bool:
    """Whether a VAE compile setting (auto, on or off) compiles for a run of `count` videos or clips (None: not
    known) on `device`: auto compiles on a GPU from `minimum` of them on, where the compiling pays for itself."""
    if setting == "auto":
        return device.startswith("cuda") and count is not None and count >= minimum
    return setting == "on"


def speed_up_vae(vae, channels_last: bool, compile: bool, device: str, part: str, stage: str) -> None:
    """Put the VAE in channels-last layout and/or compile its `part` ("encoder" or "decoder"; GPU only), with
    one log line prefixed by `stage`."""
    if not device.startswith("cuda"):
        if channels_last or compile:
            log.info("%s: VAE channels-last/compile off (they are for the GPU; the device is %s)", stage, device)
        return
    if channels_last:
        to_channels_last(vae)
    if compile:
        getattr(vae, part).compile(dynamic=False)
    log.info("%s: VAE %s %s", stage, part, ", ".join(
        [w for w, on in (("channels-last", channels_last), ("compiled (the first videos of each size pay the "
                                                            "compiling)", compile)) if on]) or "as stock (eager, NCDHW)")
