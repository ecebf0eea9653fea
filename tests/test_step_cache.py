"""Step caching (`ophora sample --cache`) on the tiny model: every mode runs, skips work, stays near exact sampling;
``none`` is exact; the cache setting is part of a video's identity."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from ophora import cli
from ophora.core.attention import CogVideoXAttention
from ophora.core.errors import ConfigError
from ophora.sample.cache_spec import MODES, CacheSpec, full_steps
from ophora.sample.config import SampleConfig
from ophora.sample.generate import configure_pipeline, generate, prepare_pipeline
from ophora.sample.jobs import plan_jobs
from ophora.sample.speed import compile_blocks
from ophora.sample.step_cache import remove_cache, use_cache

STEPS = 8
SMALL = dict(frames=9, height=48, width=80, steps=STEPS)
LAYERS = 2  # the tiny model's transformer blocks


class CountingAttention(CogVideoXAttention):
    """ophora's processor, counting the attention computations it is asked for."""

    calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        CountingAttention.calls += 1
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def latents(pipe, config: SampleConfig, seed: int) -> torch.Tensor:
    from ophora.sample.step_cache import reset

    reset(pipe.transformer)
    return pipe(prompt=config.prompt, height=48, width=80, num_frames=9, num_inference_steps=STEPS,
                guidance_scale=config.guidance, generator=torch.Generator().manual_seed(seed),
                output_type="latent").frames


def counted(pipe, config: SampleConfig, seed: int) -> tuple[torch.Tensor, int]:
    """Final latents and how many attention computations the generation made."""
    pipe.transformer.set_attn_processor(CountingAttention("sdpa"))
    CountingAttention.calls = 0
    out = latents(pipe, config, seed)
    return out, CountingAttention.calls


@pytest.fixture(scope="module")
def exact(tiny_model, tmp_path_factory):
    """The exact pipeline, its config, the final latents of seed 1 and 2 and the attention calls of one run."""
    config = SampleConfig(model=str(tiny_model), out=tmp_path_factory.mktemp("out"), prompt="Aspirate the cortex.",
                          **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    one, calls = counted(pipe, config, 1)
    return pipe, config, one, latents(pipe, config, 2), calls


def test_exact_pipeline_computes_every_block_every_step(exact):
    *_, calls = exact
    assert calls == STEPS * LAYERS


# each mode's settings here make it skip on 8 steps of random weights (fbc's threshold is high for that reason)
CACHED = {
    "fixed": dict(cache_warmup=2, cache_interval=3),
    "fbc": dict(cache_threshold=10.0),
    "taylorseer": dict(cache_warmup=2, cache_interval=3),
    "pab": dict(cache_interval=2),
    "fastercache": dict(),
}


@pytest.mark.parametrize("mode", list(CACHED))
def test_each_mode_runs_skips_work_and_stays_near_exact(exact, mode, caplog):
    pipe, base, reference, other_seed, exact_calls = exact
    config = dataclasses.replace(base, cache=mode, **CACHED[mode])
    with caplog.at_level(logging.INFO):
        configure_pipeline(pipe, config, "cpu")
    try:
        assert any(r.getMessage().startswith(f"step cache: {mode}") for r in caplog.records)
        out, calls = counted(pipe, config, 1)
        assert out.shape == reference.shape and torch.isfinite(out).all()
        assert calls < exact_calls  # some attention computations were skipped
        error = rel(out, reference)
        print(f"{mode}: {calls}/{exact_calls} attention calls, final-latent error vs exact {error:.4f}")
        # the cached run stays its seed's sample: nearer to the exact one than another seed's exact sample is
        assert error < 0.5 * rel(other_seed, reference)
        frames = generate(pipe, config, plan_jobs([("p", base.prompt)], 1, 1)[0], "cpu")
        assert frames.shape == (9, 48, 80, 3) and frames.dtype == np.uint8
    finally:
        configure_pipeline(pipe, base, "cpu")


def test_fixed_skips_exactly_the_scheduled_steps(exact):
    pipe, base, *_ = exact
    config = dataclasses.replace(base, cache="fixed", cache_warmup=2, cache_interval=3)
    assert full_steps(STEPS, 2, 3) == [0, 1, 2, 5, 7]  # warm-up 0-1, every 3rd from 2, the last
    configure_pipeline(pipe, config, "cpu")
    try:
        _, calls = counted(pipe, config, 1)
        assert calls == 5 * LAYERS
        again, calls_again = counted(pipe, config, 1)  # the state is reset between videos
        assert calls_again == calls
        first, _ = counted(pipe, config, 1)
        assert torch.equal(again, first)
    finally:
        configure_pipeline(pipe, base, "cpu")


def test_fixed_without_skipped_steps_equals_exact_bit_for_bit(exact):
    pipe, base, reference, *_ = exact
    for params in (dict(cache_interval=1), dict(cache_warmup=STEPS)):
        configure_pipeline(pipe, dataclasses.replace(base, cache="fixed", **params), "cpu")
        try:
            assert torch.equal(latents(pipe, base, 1), reference)
        finally:
            configure_pipeline(pipe, base, "cpu")


def test_order_one_differs_from_reuse(exact):
    pipe, base, reference, *_ = exact
    outs = {}
    for order in (0, 1):
        configure_pipeline(pipe, dataclasses.replace(base, cache="fixed", cache_warmup=2, cache_interval=3,
                                                     cache_order=order), "cpu")
        outs[order] = latents(pipe, base, 1)
    configure_pipeline(pipe, base, "cpu")
    assert not torch.equal(outs[0], outs[1])
    print(f"fixed order 0: error {rel(outs[0], reference):.4f}; order 1: {rel(outs[1], reference):.4f}")


@pytest.mark.parametrize("mode", list(CACHED))
def test_none_after_a_cached_mode_is_exact_again(exact, mode):
    pipe, base, reference, *_ = exact
    configure_pipeline(pipe, dataclasses.replace(base, cache=mode, **CACHED[mode]), "cpu")
    latents(pipe, base, 1)
    configure_pipeline(pipe, base, "cpu")
    assert torch.equal(latents(pipe, base, 1), reference)


def test_block_level_modes_work_on_compiled_blocks(tiny_model, tmp_path):
    """fixed and fbc wrap the compiled block forward (eager backend on the CPU): same result as uncompiled."""
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Aspirate the cortex.", cache="fixed",
                          cache_warmup=2, cache_interval=3, **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    torch._dynamo.reset()
    try:
        for mode in ("fixed", "fbc"):
            spec = CacheSpec.make(mode, 3, 2, threshold=10.0)
            configure_pipeline(pipe, dataclasses.replace(config, cache="none"), "cpu")
            use_cache(pipe, spec)
            uncompiled = latents(pipe, config, 1)
            remove_cache(pipe.transformer)
            compile_blocks(pipe.transformer, backend="eager")
            calls = []
            for block in pipe.transformer.transformer_blocks:  # count compiled-forward calls, outside the compiled code
                block.forward = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(block.forward)
            use_cache(pipe, spec)  # the hooks wrap the compiled forwards
            compiled = latents(pipe, config, 1)
            assert rel(compiled, uncompiled) < 1e-6 and 0 < len(calls) < STEPS * LAYERS
            remove_cache(pipe.transformer)
            for block in pipe.transformer.transformer_blocks:
                del block.forward  # the counter; the next round compiles afresh
                del block._ophora_eager_forward
    finally:
        torch._dynamo.reset()


def test_modes_inside_the_blocks_turn_compiling_off(tiny_model, tmp_path, caplog, monkeypatch):
    from ophora.sample import speed

    monkeypatch.setattr(speed, "compile_blocks", lambda transformer: pytest.fail("compiled with a pab cache"))
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="p", cache="pab", compile=True, **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    with caplog.at_level(logging.INFO):
        speed.configure_speed(pipe, "sdpa", True, "cuda:0", config.cache_spec)  # device name only: no GPU used
    assert any("compile: off (--cache pab hooks inside the blocks" in r.getMessage() for r in caplog.records)


def test_cache_is_part_of_the_identity_with_resolved_parameters():
    base = SampleConfig(model="m", out=".", prompt="p")
    assert not any(k.startswith("cache") for k in base.settings())
    fixed = dataclasses.replace(base, cache="fixed").settings()
    assert {k: v for k, v in fixed.items() if k.startswith("cache")} == {
        "cache": "fixed", "cache_interval": 3, "cache_warmup": 5, "cache_order": 1}
    assert dataclasses.replace(base, cache="fbc", cache_interval=7).settings()["cache_threshold"] == 0.05
    assert "cache_interval" not in dataclasses.replace(base, cache="fbc", cache_interval=7).settings()
    assert dataclasses.replace(base, cache="fixed", cache_interval=4).settings() != fixed


def test_cached_video_is_not_reused_for_exact_settings(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sample", "--model", str(tiny_model), "--out", str(out), "--prompt", "Rotate the lens.", "--frames", "9",
            "--height", "48", "--width", "80", "--steps", "3"]
    assert cli.main([*args, "--cache", "fixed", "--cache-warmup", "1", "--cache-interval", "2"]) == 0
    assert cli.main(args) == 2
    assert "cache 'fixed' -> None" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--cache-interval", "0", "--cache", "fixed"], "--cache-interval must be at least 1"),
    (["--cache", "fixed", "--cache-order", "2"], "order 0 or 1"),
    (["--cache", "fbc", "--cache-threshold", "-1"], "--cache-threshold must be 0 or more"),
    (["--cache", "fbc", "--cfg-parallel"], "--cache fbc decides from the whole CFG batch"),
])
def test_bad_cache_settings_are_one_line_errors(tiny_model, tmp_path, capsys, flags, message):
    code = cli.main(["sample", "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--prompt", "p", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_python_api_rejects_an_unknown_mode():
    with pytest.raises(ConfigError, match="--cache must be one of"):
        SampleConfig(model="m", out=".", prompt="p", cache="teacache").check()
    assert CacheSpec.make("none").identity() == {} and set(MODES) >= set(CACHED)


def test_a_failing_compile_falls_back_to_eager_blocks(tiny_model, tmp_path, caplog):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Aspirate the cortex.", cache="fixed",
                          cache_warmup=2, cache_interval=3, **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    eager = latents(pipe, config, 1)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    configure_pipeline(pipe, dataclasses.replace(config, cache="none"), "cpu")
    torch._dynamo.reset()
    try:
        compile_blocks(pipe.transformer, backend=broken_backend)
        use_cache(pipe, config.cache_spec)
        with caplog.at_level(logging.WARNING):
            fallback = latents(pipe, config, 1)
    finally:
        torch._dynamo.reset()
    assert torch.equal(fallback, eager)
    assert any(r.getMessage().startswith("compile: failed") for r in caplog.records)


def test_a_compile_failing_on_a_later_call_falls_back_too(tiny_model, tmp_path, caplog):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Aspirate the cortex.", **SMALL)
    pipe = prepare_pipeline(config, "cpu")
    eager = latents(pipe, config, 1)
    graphs = []

    def second_graph_fails(graph, example_inputs):  # block 1's input strides differ from block 0's: a 2nd graph
        graphs.append(graph)
        if len(graphs) > 1:
            raise RuntimeError("recompile limit")
        return graph.forward

    torch._dynamo.reset()
    try:
        compile_blocks(pipe.transformer, backend=second_graph_fails)
        with caplog.at_level(logging.WARNING):
            fallback = latents(pipe, config, 1)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 2 and torch.equal(fallback, eager)
    assert any(r.getMessage().startswith("compile: failed") for r in caplog.records)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fixed", "fbc"])
def test_gpu_block_level_cache_on_compiled_blocks_matches_eager(tiny_model, tmp_path, mode):
    """On a GPU `ophora sample` compiles by default; a block-level cache then wraps the compiled blocks."""
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Aspirate the cortex.", cache=mode,
                          cache_warmup=2, cache_interval=3, cache_threshold=10.0, **SMALL)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    eager = generate(prepare_pipeline(dataclasses.replace(config, compile=False), "cuda"), config, job, "cuda")
    pipe = prepare_pipeline(config, "cuda")
    assert all("_ophora_eager_forward" in vars(b) for b in pipe.transformer.transformer_blocks)
    compiled = generate(pipe, config, job, "cuda")
    assert compiled.shape == eager.shape == (9, 48, 80, 3)
    diff = np.abs(compiled.astype(int) - eager.astype(int))
    assert diff.mean() < 2.0  # bf16 rounding of compiled vs eager kernels, not a different video
