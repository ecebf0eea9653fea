"""ophora's CogVideoX attention processor: equality with diffusers', kernel choice and fallback, each option."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ophora.core import attention as attn_mod
from ophora.core.attention import CogVideoXAttention, attention, choose_kernel, rope, use_attention
from ophora.sample.config import SampleConfig
from ophora.sample.generate import generate, prepare_pipeline
from ophora.sample.jobs import plan_jobs
from ophora.sample.speed import compile_blocks

SMALL = dict(frames=9, height=48, width=80, steps=2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def fake_fa3(q, k, v, k_new=None, v_new=None, qv=None, out_=None, *args, q_descale=None, k_descale=None,
             v_descale=None, softmax_scale=None, causal=False, **kwargs):
    """FlashAttention-3's forward op on the CPU, for tests: dequantizes FP8 operands with their descales."""
    def deq(x, d):
        return x.float() * d[:, None, :, None] if d is not None else x.float()

    q, k, v = deq(q, q_descale), deq(k, k_descale), deq(v, v_descale)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
    return out.transpose(1, 2).to(torch.bfloat16 if q_descale is not None else q.dtype), None, None, None


@pytest.fixture
def with_fake_fa3(monkeypatch):
    monkeypatch.setattr(attn_mod, "_fa3_forward", lambda: fake_fa3)
    monkeypatch.setattr(attn_mod, "fa3_unavailable", lambda device: None)


def cogvideox_attention_layer(heads=2, head_dim=16, seed=0):
    """One diffusers attention layer set up as in a CogVideoX block (LayerNorm on q and k, biases)."""
    from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0

    torch.manual_seed(seed)
    layer = Attention(query_dim=heads * head_dim, dim_head=head_dim, heads=heads, qk_norm="layer_norm", eps=1e-6,
                      bias=True, out_bias=True, processor=CogVideoXAttnProcessor2_0())
    for p in layer.parameters():  # LayerNorm starts at (1, 0): move it so its weights matter
        p.data.add_(0.1 * torch.randn_like(p))
    return layer.eval()


def rope_freqs(tokens: int, head_dim: int, seed=1):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(tokens, head_dim // 2, generator=g) * 6.3
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("with_rope", [False, True])
def test_processor_equals_diffusers(fused, with_rope):
    from diffusers.models.attention_processor import FusedCogVideoXAttnProcessor2_0

    layer = cogvideox_attention_layer()
    if fused:
        layer.fuse_projections(fuse=True)
        layer.set_processor(FusedCogVideoXAttnProcessor2_0())
    text, video = torch.randn(2, 5, 32), torch.randn(2, 24, 32)
    freqs = rope_freqs(24, 16) if with_rope else None
    with torch.no_grad():
        ref_video, ref_text = layer(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=freqs)
        layer.set_processor(CogVideoXAttention("sdpa"))
        ours_video, ours_text = layer(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=freqs)
    assert ours_video.shape == ref_video.shape and ours_text.shape == ref_text.shape
    assert rel(ours_video, ref_video) < 1e-6 and rel(ours_text, ref_text) < 1e-6


def test_rope_matches_diffusers():
    from diffusers.models.embeddings import apply_rotary_emb

    x = torch.randn(2, 24, 3, 16)  # (batch, tokens, heads, dim)
    freqs = rope_freqs(24, 16)
    ref = apply_rotary_emb(x.transpose(1, 2), freqs).transpose(1, 2)
    assert torch.equal(rope(x, freqs), ref)


def test_pipeline_with_our_processor_equals_stock(tiny_model, tmp_path):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Polish the posterior capsule.", **SMALL)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    pipe = prepare_pipeline(config, "cpu")
    assert all(isinstance(p, CogVideoXAttention) for p in pipe.transformer.attn_processors.values())
    ours = generate(pipe, config, job, "cpu")
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    pipe.transformer.set_attn_processor(CogVideoXAttnProcessor2_0())
    stock = generate(pipe, config, job, "cpu")
    assert np.abs(ours.astype(int) - stock.astype(int)).max() <= 1


def test_fused_projections_with_our_processor(tiny_model, tmp_path):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Inject viscoelastic.", **SMALL)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    plain = generate(prepare_pipeline(config, "cpu"), config, job, "cpu")
    fused_config = dataclasses.replace(config, fuse_qkv=True)
    pipe = prepare_pipeline(fused_config, "cpu")
    assert isinstance(next(iter(pipe.transformer.attn_processors.values())), CogVideoXAttention)
    fused = generate(pipe, fused_config, job, "cpu")
    assert np.abs(fused.astype(int) - plain.astype(int)).max() <= 2


def test_auto_is_sdpa_on_cpu_with_one_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        assert choose_kernel("auto", "cpu") == "sdpa"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("attention kernel: sdpa")


@pytest.mark.parametrize("requested", ["auto", "fa3", "fp8"])
def test_absent_fa3_falls_back_to_sdpa(monkeypatch, caplog, requested):
    monkeypatch.setattr(attn_mod, "_fa3_forward", lambda: "fa3-fwd not importable (ImportError: no module)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        assert choose_kernel(requested, "cuda") == "sdpa"
    assert "not importable" in caplog.records[-1].getMessage()


def test_fa3_needs_hopper_and_bf16(monkeypatch):
    monkeypatch.setattr(attn_mod, "_fa3_forward", lambda: fake_fa3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert choose_kernel("auto", "cuda") == "fa3"
    assert choose_kernel("fp8", "cuda") == "fp8"
    assert choose_kernel("sdpa", "cuda") == "sdpa"
    assert choose_kernel("auto", "cuda", torch.float32) == "sdpa"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert choose_kernel("fa3", "cuda") == "sdpa"


def test_unknown_choice_is_an_error():
    with pytest.raises(ValueError):
        choose_kernel("flash9", "cpu")
    with pytest.raises(ValueError):
        CogVideoXAttention("auto")


def test_kernels_agree_on_the_cpu_with_a_stand_in(with_fake_fa3):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 40, 3, 16) for _ in range(3))
    k = k + 2.0  # an offset shared by all keys: fp8 centres it away
    exact = attention(q, k, v, "sdpa")
    assert rel(attention(q, k, v, "fa3"), exact) < 1e-6
    fp8 = attention(q, k, v, "fp8")
    assert fp8.dtype == q.dtype and torch.isfinite(fp8).all()
    assert rel(fp8.float(), exact) < 0.08  # e4m3 has a 3-bit mantissa


@pytest.mark.parametrize("kernel", ["sdpa", "fa3", "fp8"])
def test_each_kernel_runs_the_pipeline(tiny_model, tmp_path, with_fake_fa3, kernel):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Rotate the lens haptics.", **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    assert use_attention(pipe.transformer, kernel, "cpu") == "sdpa"  # the stand-in is "bf16 only"; the model is fp32
    pipe.transformer.set_attn_processor(CogVideoXAttention(kernel))
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    latents = pipe(prompt=job.prompt, height=48, width=80, num_frames=9, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(job.seed), output_type="latent").frames
    assert torch.isfinite(latents).all()


def test_compile_option_on_cpu_is_a_logged_no_op(tiny_model, tmp_path, caplog):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Flush the anterior chamber.", compile=True,
                          attention="sdpa", **SMALL)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    with caplog.at_level(logging.INFO):
        frames = generate(prepare_pipeline(config, "cpu"), config, job, "cpu")
    assert frames.shape == (9, 48, 80, 3)
    assert any(r.getMessage().startswith("compile: off") for r in caplog.records)


def test_blocks_trace_as_one_graph(tiny_model, tmp_path):
    """fullgraph=True: the block with our processor compiles without graph breaks (eager backend on the CPU)."""
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Implant the lens.", attention="sdpa", **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    run = dict(prompt=job.prompt, height=48, width=80, num_frames=9, num_inference_steps=2, output_type="latent")
    reference = pipe(**run, generator=torch.Generator().manual_seed(job.seed)).frames
    torch._dynamo.reset()
    try:
        assert compile_blocks(pipe.transformer, backend="eager") == 2
        latents = pipe(**run, generator=torch.Generator().manual_seed(job.seed)).frames
    finally:
        torch._dynamo.reset()
    assert rel(latents, reference) < 1e-6


def test_fp8_is_a_pixel_setting_and_exact_kernels_are_not():
    base = SampleConfig(model="m", out=".", prompt="p")
    assert "attention" not in base.settings()
    assert "attention" not in dataclasses.replace(base, attention="fa3", compile=True).settings()
    assert dataclasses.replace(base, attention="fp8").settings()["attention"] == "fp8"


def test_cli_flags_exist():
    import argparse

    from ophora.core.config import add_options, from_args

    parser = argparse.ArgumentParser()
    add_options(parser, SampleConfig)
    args = parser.parse_args(["--model", "m", "--out", "o", "--prompt", "p", "--attention", "sdpa", "--compile"])
    config = from_args(SampleConfig, args)
    assert (config.attention, config.compile) == ("sdpa", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--out", "o", "--attention", "nope"])


# ---- FlashAttention-4: choice, fallback and the custom ops (on the CPU: fake tensors, or a stand-in kernel) ----

def _pretend_hopper(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("requested, training", [("auto", True), ("fa4", True), ("fa4", False)])
def test_fa4_on_the_cpu_falls_back_to_sdpa_with_one_log_line(caplog, requested, training):
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        assert choose_kernel(requested, "cpu", training=training) == "sdpa"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("attention kernel: sdpa (") and "not a CUDA device" in lines[0]
    assert ("falling back" in lines[0]) == (requested == "fa4")


def test_absent_fa4_package_is_named_in_the_fallback(monkeypatch, caplog):
    monkeypatch.setattr(attn_mod, "fa4_interface", lambda: "flash-attn-4 not importable (ImportError: no module)")
    _pretend_hopper(monkeypatch)
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        assert choose_kernel("auto", "cuda", training=True) == "sdpa"
    assert "flash-attn-4 not importable" in caplog.records[-1].getMessage()


def test_fa4_needs_sm90_or_sm100_and_half_precision(monkeypatch):
    monkeypatch.setattr(attn_mod, "fa4_interface", lambda: object())
    monkeypatch.setattr(attn_mod, "_fa3_forward", lambda: "fa3-fwd not importable (ImportError: no module)")
    _pretend_hopper(monkeypatch)
    assert choose_kernel("auto", "cuda", training=True) == "fa4"
    assert choose_kernel("fa4", "cuda", torch.float16, training=True) == "fa4"
    assert choose_kernel("fa4", "cuda", torch.float32, training=True) == "sdpa"
    assert choose_kernel("sdpa", "cuda", training=True) == "sdpa"
    assert choose_kernel("fa4", "cuda") == "fa4"  # offered to sampling on request ...
    assert choose_kernel("auto", "cuda") == "sdpa"  # ... but sampling's auto stays fa3, else sdpa
    _pretend_hopper(monkeypatch, (10, 0))
    assert choose_kernel("auto", "cuda", training=True) == "fa4"
    _pretend_hopper(monkeypatch, (8, 0))
    assert choose_kernel("fa4", "cuda", training=True) == "sdpa"


def test_training_takes_only_kernels_with_a_backward():
    for kernel in ("fa3", "fp8"):
        with pytest.raises(ValueError, match="auto, sdpa, fa4"):
            choose_kernel(kernel, "cpu", training=True)


def test_fa4_ops_have_shape_only_implementations_for_compilers():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4096, 30, 64, dtype=torch.bfloat16)
        out, lse = torch.ops.ophora.fa4_fwd(q, q, q, 0.125)
        grads = torch.ops.ophora.fa4_bwd(out, q, q, q, out, lse, 0.125)
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == (q.shape, q.dtype, (2, 30, 4096), torch.float32)
    assert all(g.shape == q.shape and g.dtype == q.dtype for g in grads)


def _attention_grads(fn, q, k, v, dout):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def test_fa4_forward_and_backward_ops_match_sdpa_with_a_stand_in(with_fake_fa4):
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(2, 40, 3, 16) for _ in range(4))
    ours = _attention_grads(lambda *t: attention(*t, kernel="fa4"), q, k, v, dout)
    ref = _attention_grads(lambda *t: attention(*t, kernel="sdpa"), q, k, v, dout)
    assert all(rel(a, b) < 1e-5 for a, b in zip(ours, ref))


def test_fa4_op_compiles_in_one_graph_with_its_backward(with_fake_fa4):
    """fullgraph=True through aot_eager: the ops' fake implementations and autograd registration trace."""
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(2, 40, 3, 16) for _ in range(4))

    def fn(q, k, v):
        return attention(q * 2, k, v, kernel="fa4").sin()

    torch._dynamo.reset()
    try:
        compiled = _attention_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v, dout)
    finally:
        torch._dynamo.reset()
    assert all(rel(a, b) < 1e-6 for a, b in zip(compiled, _attention_grads(fn, q, k, v, dout)))


# ---- GPU: the kernels themselves (skipped without a CUDA GPU) ----

def _fp32_reference(q, k, v):
    return F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


@pytest.mark.gpu
def test_gpu_exact_kernels_error_like_cudnn():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4096 + 226, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = _fp32_reference(q, k, v)
    sdpa = rel(attention(q, k, v, "sdpa"), ref)
    assert sdpa < 1e-2
    if choose_kernel("fa3", "cuda") == "fa3":
        assert rel(attention(q, k, v, "fa3"), ref) < 1.5 * sdpa
        assert rel(attention(q, k, v, "fp8"), ref) < 0.08  # measured 5.4% on an H200: FA3 rounds P to e4m3


@pytest.mark.gpu
def test_gpu_processor_sdpa_bitwise_equals_stock_bf16():
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    layer = cogvideox_attention_layer(heads=4, head_dim=64).to("cuda", torch.bfloat16)
    text = torch.randn(2, 226, 256, device="cuda", dtype=torch.bfloat16)
    video = torch.randn(2, 2048, 256, device="cuda", dtype=torch.bfloat16)
    freqs = tuple(f.cuda() for f in rope_freqs(2048, 64))
    with torch.no_grad():
        layer.set_processor(CogVideoXAttnProcessor2_0())
        ref = layer(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=freqs)[0]
        layer.set_processor(CogVideoXAttention("sdpa"))
        ours = layer(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=freqs)[0]
    assert rel(ours.float(), ref.float()) < 2e-3


def _fa4_or_skip():
    if (missing := attn_mod.fa4_unavailable("cuda")) is not None:
        pytest.skip(f"FlashAttention-4 cannot run here: {missing}")


@pytest.mark.gpu
def test_gpu_fa4_output_and_grads_match_fp64_within_bf16_error():
    """At the CogVideoX-2b attention shape (30 heads of 64), error no larger than cuDNN SDPA's, forward and backward."""
    _fa4_or_skip()
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(2, 4096, 30, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    ref = _attention_grads(lambda *t: attention(*t, kernel="sdpa"), *(t.double() for t in (q, k, v, dout)))
    fa4 = _attention_grads(lambda *t: attention(*t, kernel="fa4"), q, k, v, dout)
    sdpa = _attention_grads(lambda *t: attention(*t, kernel="sdpa"), q, k, v, dout)
    for name, ours, cudnn, exact in zip(("out", "dq", "dk", "dv"), fa4, sdpa, ref):
        assert ours.dtype == torch.bfloat16 and ours.shape == exact.shape, name
        assert rel(ours, exact) < max(2 * rel(cudnn, exact), 1e-2), name


@pytest.mark.gpu
def test_gpu_compiled_block_with_fa4_matches_eager():
    """A CogVideoX block with the fa4 processor, selectively checkpointed and compiled: the eager losses and grads."""
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    from ophora.train.blocks import configure_blocks

    _fa4_or_skip()

    def block_grads(compiled: bool):
        torch.manual_seed(0)
        block = CogVideoXBlock(dim=256, num_attention_heads=4, attention_head_dim=64, time_embed_dim=64).cuda()
        block.attn1.set_processor(CogVideoXAttention("fa4"))
        holder = torch.nn.Module()
        holder.transformer_blocks = torch.nn.ModuleList([block])
        torch._dynamo.reset()
        configure_blocks(holder, True, None, selective=True, compile_blocks=compiled)
        video = torch.randn(2, 2048, 256, device="cuda")
        text = torch.randn(2, 226, 256, device="cuda")
        temb = torch.randn(2, 64, device="cuda")
        freqs = tuple(f.cuda() for f in rope_freqs(2048, 64))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, text_out = block(video, text, temb, image_rotary_emb=freqs)
        loss = out.float().square().mean() + text_out.float().square().mean()
        loss.backward()
        return [loss.detach()] + [p.grad for p in block.parameters() if p.grad is not None]

    try:
        compiled, eager = block_grads(True), block_grads(False)
    finally:
        torch._dynamo.reset()
    assert len(compiled) == len(eager) > 1
    assert rel(compiled[0], eager[0]) < 1e-2  # the loss
    assert rel(torch.cat([g.flatten() for g in compiled[1:]]), torch.cat([g.flatten() for g in eager[1:]])) < 2e-2
