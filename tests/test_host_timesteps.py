"""Host-side timesteps (sample/host_timesteps.py): the scheduler keeps its timesteps on the host, the transformer
gets the copies made on the model's device once per generation, and the result is bit for bit the same."""

from __future__ import annotations

import pytest
import torch

from ophora.core.models import load_pipeline
from ophora.sample.host_timesteps import keep_timesteps_on_host

RUN = dict(prompt="Rotate the lens.", height=48, width=80, num_frames=9, num_inference_steps=4, guidance_scale=6.0,
           use_dynamic_cfg=True, output_type="latent")


def run(pipe, device: str = "cpu") -> torch.Tensor:
    return pipe(**RUN, generator=torch.Generator(device).manual_seed(3)).frames


def seen_timesteps(pipe) -> list[torch.Tensor]:
    """Record the `timestep` the transformer's forward receives (a hook registered after ophora's)."""
    seen: list[torch.Tensor] = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"]), with_kwargs=True)
    return seen


@pytest.fixture
def pipe(tiny_model):
    return load_pipeline(str(tiny_model), device="cpu", dtype=torch.float32, scheduler="dpm")


def test_same_latents_with_host_timesteps(pipe):
    plain = run(pipe)
    keep_timesteps_on_host(pipe, "cpu")
    keep_timesteps_on_host(pipe, "cpu")  # twice: one hook, one wrapped set_timesteps
    seen = seen_timesteps(pipe)
    assert torch.equal(run(pipe), plain)
    assert pipe.scheduler.timesteps.device.type == "cpu"
    copies = pipe.scheduler._ophora_on_device
    assert len(seen) == RUN["num_inference_steps"]
    for step, t in zip(pipe.scheduler.timesteps.tolist(), seen):
        assert t.shape == (2,) and t.untyped_storage().data_ptr() == copies[step].untyped_storage().data_ptr()


def test_a_replaced_scheduler_is_wrapped_again(pipe):
    keep_timesteps_on_host(pipe, "cpu")
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    keep_timesteps_on_host(pipe, "cpu")
    seen = seen_timesteps(pipe)
    run(pipe)
    assert hasattr(pipe.scheduler, "_ophora_on_device") and len(seen) == RUN["num_inference_steps"]


def test_a_callers_own_timestep_passes_through(pipe):
    keep_timesteps_on_host(pipe, "cpu")
    seen = seen_timesteps(pipe)
    hidden = torch.zeros(1, 3, 16, 6, 10)
    text = torch.zeros(1, pipe.transformer.config.max_text_seq_length, pipe.transformer.config.text_embed_dim)
    with torch.no_grad():
        pipe.transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([417]))
    assert seen[-1].tolist() == [417]


@pytest.mark.gpu
def test_gpu_denoising_loop_never_waits_for_the_gpu(tiny_model):
    """With the timesteps on the host, the whole denoising loop runs without one host-device sync."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pipe = load_pipeline(str(tiny_model), device="cuda", dtype=torch.bfloat16, scheduler="dpm")
    plain = run(pipe, "cuda")
    keep_timesteps_on_host(pipe, "cuda")
    prompt = pipe.encode_prompt(RUN["prompt"], device="cuda")  # the text encoder's mask handling may sync
    args = {k: v for k, v in RUN.items() if k != "prompt"}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pipe(**args, prompt_embeds=prompt[0], negative_prompt_embeds=prompt[1],
                   generator=torch.Generator("cuda").manual_seed(3)).frames
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out, plain)
