"""`ophora sample` on a CUDA GPU (bf16, fused attention projections); skipped without one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ophora.core.media import probe_video, read_video
from ophora.sample.config import SampleConfig
from ophora.sample.generate import generate, prepare_pipeline
from ophora.sample.jobs import plan_jobs
from ophora.sample.run import sample

pytestmark = pytest.mark.gpu


def test_gpu_sample_bf16_outputs(tiny_model, tmp_path):
    out = tmp_path / "out"
    summary = sample(SampleConfig(model=str(tiny_model), out=out, prompt="Create the main incision.",
                                  frames=17, height=64, width=96, steps=4, videos_per_prompt=2))
    assert (summary.made, summary.failed) == (2, 0)
    info = probe_video(out / "prompt" / "1.mp4")
    assert (info.width, info.height, info.frames) == (96, 64, 17)
    assert read_video(out / "prompt" / "0.mp4")[0].std() > 0


def test_gpu_fused_projections_match_unfused(tiny_model, tmp_path):
    config = SampleConfig(model=str(tiny_model), out=tmp_path, prompt="Inject viscoelastic.", frames=9, height=64,
                          width=64, steps=4, dtype="fp32")
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    fused = generate(prepare_pipeline(config, "cuda"), config, job, "cuda")
    plain_config = dataclasses.replace(config, fuse_qkv=False)
    plain = generate(prepare_pipeline(plain_config, "cuda"), plain_config, job, "cuda")
    assert np.abs(fused.astype(int) - plain.astype(int)).max() <= 2  # fp32 rounding of one fused matmul
