"""The trainer on a GPU (skipped without one): fp16/bf16 mixed precision, the speed switches and the fa4 kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ophora.prepare.run import PrepareConfig, prepare
from ophora.train.config import load_config
from ophora.train.trainer import train
from test_prepare import SMALL, write_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cache(tiny_model, tmp_path_factory) -> Path:
    dataset = write_synthetic_dataset(tmp_path_factory.mktemp("dataset"), bad=False)
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, **SMALL))
    return out


def run(tiny_model, cache, out: Path, *overrides: str) -> list[float]:
    train(load_config(CONFIGS / "tiny-tpt.yaml", [f"model={tiny_model}", f"cache={cache}", f"out={out}", "steps=4",
                                                  "validation_prompts=[]", *overrides]))
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_and_exports(tiny_model, cache, tmp_path, precision):
    losses = run(tiny_model, cache, tmp_path / "run", f"mixed_precision={precision}")
    assert len(losses) == 4 and np.isfinite(losses).all()
    assert (tmp_path / "run" / "final" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_speed_switches_keep_the_losses(tiny_model, cache, tmp_path):
    plain = run(tiny_model, cache, tmp_path / "plain", "mixed_precision=bf16", "allow_tf32=false")
    fast = run(tiny_model, cache, tmp_path / "fast", "mixed_precision=bf16", "allow_tf32=false",
               "selective_checkpointing=true", "checkpoint_blocks=1", "compile_blocks=true")
    np.testing.assert_allclose(fast, plain, rtol=2e-2)  # bf16 kernels differ slightly once compiled


def test_fp8_linears_train_near_the_bf16_losses_and_export_plain_weights(tiny_model, cache, tmp_path, caplog):
    import logging

    from safetensors import safe_open

    from ophora.train.fp8 import fp8_unavailable

    if (missing := fp8_unavailable()) is not None:
        pytest.skip(f"fp8 linears cannot run here: {missing}")
    plain = run(tiny_model, cache, tmp_path / "plain", "mixed_precision=bf16")
    with caplog.at_level(logging.INFO, logger="ophora.train.fp8"):
        fp8 = run(tiny_model, cache, tmp_path / "fp8", "mixed_precision=bf16", "fp8_linears=true",
                  "compile_blocks=true", "selective_checkpointing=true")
    assert any(r.getMessage().startswith("fp8_linears: on, ") for r in caplog.records)
    assert np.isfinite(fp8).all()
    np.testing.assert_allclose(fp8, plain, rtol=0.1)  # float8 matmuls: close to bf16, not equal
    weights = "final/transformer/diffusion_pytorch_model.safetensors"
    with safe_open(tmp_path / "plain" / weights, "pt") as a, safe_open(tmp_path / "fp8" / weights, "pt") as b:
        assert set(a.keys()) == set(b.keys())  # the export is a plain diffusers transformer


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[Path, Path]:
    """A random model with CogVideoX's head size (3 heads of 64) and a cache made with it."""
    from ophora.synthetic.random_pipeline import make_random_model

    model = make_random_model(tmp_path_factory.mktemp("mini-model"), size="mini")
    dataset = write_synthetic_dataset(tmp_path_factory.mktemp("mini-dataset"), bad=False)
    out = tmp_path_factory.mktemp("mini-cache") / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(model), out=out, **SMALL))
    return model, out


def test_fa4_trains_the_sdpa_losses_compiled_and_selectively_checkpointed(mini, tmp_path, caplog):
    import logging

    from ophora.core.attention import fa4_unavailable

    if (missing := fa4_unavailable("cuda")) is not None:
        pytest.skip(f"FlashAttention-4 cannot run here: {missing}")
    model, cache = mini
    fast = ("mixed_precision=bf16", "allow_tf32=false", "gradient_checkpointing=true", "selective_checkpointing=true",
            "checkpoint_blocks=4", "compile_blocks=true")
    sdpa = run(model, cache, tmp_path / "sdpa", *fast, "attention=sdpa")
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        fa4 = run(model, cache, tmp_path / "fa4", *fast, "attention=auto")
    assert [r.getMessage() for r in caplog.records if r.name == "ophora.core.attention"][0].startswith(
        "attention kernel: fa4 (")
    assert np.isfinite(fa4).all()
    np.testing.assert_allclose(fa4, sdpa, rtol=2e-2)  # bf16 kernels: close, not equal
