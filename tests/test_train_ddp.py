"""Two-process DDP on the CPU (gloo, torchrun) equals its documented single-process equivalent:
one process with the whole global batch (batch_size x 2) and `strata=2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ophora.prepare.run import PrepareConfig, prepare
from ophora.train.config import load_config
from ophora.train.trainer import train
from conftest import torch_threads
from test_prepare import SMALL, free_port, write_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_two_process_ddp_equals_the_single_process_equivalent(tiny_model, tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "dataset", bad=False)
    cache = tmp_path / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=cache, **SMALL))
    common = [f"model={tiny_model}", f"cache={cache}", "steps=5", "validation_prompts=[]", "grad_accum=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "ophora", "train", str(CONFIGS / "tiny-tpt.yaml"), *common, "batch_size=1", f"out={tmp_path / 'ddp'}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch_threads(1):  # as the DDP processes (OMP_NUM_THREADS=1): the same float reduction order
        single = train(load_config(CONFIGS / "tiny-tpt.yaml", [*common, "batch_size=2", "strata=2", f"out={tmp_path / 'one'}"]))

    def records(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    ddp, one = records(tmp_path / "ddp"), records(single)
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    assert [r["step"] for r in ddp] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["loss"] for r in ddp], [r["loss"] for r in one], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in ddp], [r["grad_norm"] for r in one], rtol=1e-4)
    a = load_file(tmp_path / "ddp" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(single / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)  # Adam magnifies float-level gradient noise
