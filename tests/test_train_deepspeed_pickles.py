"""Resuming under DeepSpeed, which unpickles its own checkpoint files fully: a checkpoint holding a file that names
anything beyond tensors and plain data is refused (naming the file), every file is loaded weights-only whatever
the loader asks, and a planted payload never runs. A stand-in for DeepSpeed's loader here (`torch.load(...,
weights_only=False)`, as DeepSpeed calls it); the real DeepSpeed where it is installed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ophora.core.errors import InputError
from ophora.train.checkpoint import resume

ROOT = Path(__file__).resolve().parents[1]
MODEL_STATES = "pytorch_model/mp_rank_00_model_states.pt"


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class FakeDeepSpeedAccelerator:
    """What accelerate's load_state does under DeepSpeed: the engine reads its files with full unpickling."""

    def __init__(self):
        self.loaded: dict | None = None

    def load_state(self, input_dir: str, load_kwargs: dict) -> None:
        self.loaded = torch.load(Path(input_dir) / MODEL_STATES, map_location="cpu", weights_only=False)


def run_with_checkpoint(tmp_path: Path, content, **save) -> Path:
    folder = tmp_path / "run" / "checkpoints" / "step-0000001"
    (folder / "pytorch_model").mkdir(parents=True)
    state = {"step": 1, "micro_step": 1, "skipped": 0, "lr_scheduler": scheduler().state_dict()}
    (folder / "state.json").write_text(json.dumps(state))
    torch.save(content, folder / MODEL_STATES, **save)
    return tmp_path / "run"


def scheduler():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_a_deepspeed_checkpoint_of_tensors_and_plain_data_resumes(tmp_path):
    content = {"module": OrderedDict(weight=torch.arange(6.0).reshape(2, 3)), "param_shapes": [OrderedDict(w=torch.Size([2, 3]))],
               "sparse_tensor_module_names": set(), "ds_version": "0.19.8", "global_steps": 1}
    accelerator = FakeDeepSpeedAccelerator()
    assert resume(accelerator, run_with_checkpoint(tmp_path, content), scheduler()).step == 1
    assert torch.equal(accelerator.loaded["module"]["weight"], content["module"]["weight"])
    assert accelerator.loaded["param_shapes"] == content["param_shapes"]


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_planted_pickle_in_a_deepspeed_file_never_runs(tmp_path, caplog, zip_format):
    marker = tmp_path / "owned"
    run = run_with_checkpoint(tmp_path, {"module": Payload(marker)}, _use_new_zipfile_serialization=zip_format)
    accelerator = FakeDeepSpeedAccelerator()
    with pytest.raises(InputError, match="every checkpoint under .* is damaged"):
        resume(accelerator, run, scheduler())
    assert not marker.exists() and accelerator.loaded is None
    if zip_format:  # refused before loading, naming the file and what it names
        assert f"{MODEL_STATES} (it names posix.system)" in caplog.text and "loads only weights-only" in caplog.text
    else:  # a format torch cannot scan: the weights-only load refuses it
        assert "cannot be loaded weights-only" in caplog.text


DEEPSPEED_RUN = """
import os, shlex, sys, torch
from pathlib import Path
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin
from ophora.core.errors import InputError
from ophora.train.checkpoint import TrainState, resume, save_checkpoint
out = Path(sys.argv[1])
accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1))
accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 2
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
def step():
    accelerator.backward(model(torch.randn(2, 8)).pow(2).mean()); optimizer.step(); schedule.step(); optimizer.zero_grad()
step()
save_checkpoint(accelerator, out, TrainState(step=1, micro_step=1), schedule, keep=2)
saved = {k: v.clone() for k, v in model.module.state_dict().items()}
step()
assert resume(accelerator, out, schedule).step == 1
assert all(torch.equal(saved[k], v) for k, v in model.module.state_dict().items()), "weights not restored"
class Payload:
    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(out / 'owned'))}",)
torch.save({"module": Payload()}, out / "checkpoints" / "step-0000001" / "pytorch_model" / "mp_rank_00_model_states.pt")
try:
    resume(accelerator, out, schedule)
    raise SystemExit("a planted payload was loaded")
except InputError:
    pass
assert not (out / "owned").exists()
print("OK")
"""


def test_real_deepspeed_resumes_weights_only_and_refuses_a_payload(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    from test_prepare import free_port

    done = subprocess.run([sys.executable, "-c", DEEPSPEED_RUN, str(tmp_path / "run"), str(free_port())],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
