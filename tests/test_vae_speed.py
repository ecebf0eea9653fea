"""The VAE's GPU levers (core/vae_speed.py) as sample uses them: channels-last decoding equals the stock layout
within far less than bf16's rounding; on the CPU the levers are off with a log line; compiled decoding on a GPU."""

from __future__ import annotations

import logging

import pytest
import torch

from ophora.core.models import load_pipeline
from ophora.core.vae_speed import speed_up_vae, to_channels_last


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def pipe(tiny_model):
    return load_pipeline(str(tiny_model), device="cpu", dtype=torch.float32, scheduler="dpm")


def test_channels_last_decoder_decodes_the_same(pipe):
    latents = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = pipe.vae.decode(latents).sample
        to_channels_last(pipe.vae)
        ours = pipe.vae.decode(latents).sample
    assert ours.shape == reference.shape == (1, 3, 9, 64, 96)
    assert rel(ours, reference) < 2**-8 / 10


def test_levers_are_off_on_the_cpu_with_a_log_line(pipe, caplog):
    weights = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    with caplog.at_level(logging.INFO):
        speed_up_vae(pipe.vae, True, True, "cpu", "decoder", "sample")
    assert "sample: VAE channels-last/compile off" in caplog.text
    assert not getattr(pipe.vae, "_ophora_channels_last", False)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.vae.state_dict().items())


@pytest.mark.gpu
def test_gpu_compiled_channels_last_decoder_within_bf16_rounding(tiny_model, caplog):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pipe = load_pipeline(str(tiny_model), device="cuda", dtype=torch.bfloat16, scheduler="dpm")
    latents = torch.randn(1, 16, 3, 8, 12, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        reference = pipe.vae.decode(latents).sample
        with caplog.at_level(logging.INFO):
            speed_up_vae(pipe.vae, True, True, "cuda", "decoder", "sample")
        ours = pipe.vae.decode(latents).sample
    assert "sample: VAE decoder channels-last, compiled" in caplog.text
    assert rel(ours, reference) < 2e-2


def test_vae_compile_auto_compiles_the_decoder_only_for_long_gpu_runs():
    from ophora.core.errors import ConfigError
    from ophora.sample.config import VAE_COMPILE_MIN_VIDEOS, SampleConfig

    auto = SampleConfig(model="m", out="o", prompt="a")
    assert auto.vae_compile == "auto"
    assert auto.compiles_decoder("cuda:0", VAE_COMPILE_MIN_VIDEOS)
    assert not auto.compiles_decoder("cuda:0", VAE_COMPILE_MIN_VIDEOS - 1)
    assert not auto.compiles_decoder("cuda:0", None)  # Generator: how many videos is not known
    assert not auto.compiles_decoder("cpu", 10_000)
    assert SampleConfig(model="m", out="o", prompt="a", vae_compile="on").compiles_decoder("cuda", 1)
    assert not SampleConfig(model="m", out="o", prompt="a", vae_compile="off").compiles_decoder("cuda", 10_000)
    with pytest.raises(ConfigError, match="--vae-compile must be auto, on or off"):
        SampleConfig(model="m", out="o", prompt="a", vae_compile="yes").check()


def test_a_long_cpu_run_keeps_the_stock_decoder(pipe):
    from ophora.sample.config import SampleConfig
    from ophora.sample.generate import configure_pipeline

    configure_pipeline(pipe, SampleConfig(model="m", out="o", prompt="a", compile=False), "cpu", videos=10_000)
    assert not getattr(pipe.vae, "_ophora_channels_last", False)
    assert getattr(pipe.vae.decoder, "_compiled_call_impl", None) is None
