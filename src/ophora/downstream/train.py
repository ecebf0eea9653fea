"""One training run: the same network, initial weights, schedule and data order for every training set.

A run's folder holds `checkpoint/` (model.safetensors, optimizer.safetensors, state.json; replaced
atomically after every epoch), `best.safetensors` (the weights of the epoch with the best validation
macro-F1, or the last epoch without a validation split) and `result.json` once tested. A rerun continues
from the checkpoint when the run's settings and clips are the same, and starts over when they are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ophora.core.files import atomic_dir, atomic_path, read_json, write_json
from ophora.core.seeds import derived_seed
from ophora.core.signals import stop_requests
from ophora.downstream.clips import ClipDataset, epoch_order, make_loader, normalise
from ophora.downstream.config import DownstreamConfig
from ophora.downstream.metrics import scores, segment_votes
from ophora.downstream.models import build_model, load_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One clip: its cache file and tensor, label index, and the segment (or generated video) it came from."""

    path: Path
    name: str
    label: int
    segment: str
    video: str


@dataclass
class Run:
    """A training set's run: its name and clips, with the validation and test clips every run shares."""

    name: str
    train: list[Item]
    val: list[Item]
    test: list[Item]


def _dataset(items: list[Item]) -> ClipDataset:
    return ClipDataset([(i.path, i.name, i.label) for i in items])


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model: torch.nn.Module, items: list[Item], config: DownstreamConfig, device: torch.device) -> np.ndarray:
    """Class probabilities of every clip (N, classes)."""
    loader = make_loader(_dataset(items), config.batch_size, None, config.workers, device.type == "cuda")
    model.eval()
    out = []
    with torch.no_grad():
        for clips, _ in loader:
            with _autocast(device, config.amp):
                logits = model(normalise(clips.to(device, non_blocking=True)))
            out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate(model, items: list[Item], phases: list[str], config: DownstreamConfig, device) -> dict:
    """Clip-level and segment-level (mean of a segment's clips) scores."""
    probabilities = predict(model, items, config, device)
    labels = np.array([i.label for i in items])
    segments, votes = segment_votes(probabilities, [i.segment for i in items])
    truth = {i.segment: i.label for i in items}
    return {"clip": scores(labels, probabilities.argmax(1), phases),
            "segment": scores(np.array([truth[s] for s in segments]), votes, phases)}


def _lr(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    saved = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in saved["state"].items() for k, v in s.items()}
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "param_groups": saved["param_groups"]})


def _load_checkpoint(folder: Path, model, optimizer, device) -> dict:
    state = read_json(folder / "state.json", "the training state")
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    per_param: dict[int, dict] = {}
    for key, value in load_file(str(folder / "optimizer.safetensors"), device=str(device)).items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def _save_weights(path: Path, model) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def _train_epoch(run: Run, model, optimizer, loss_fn, state: dict, epoch: int, total: int, per_epoch: int,
                 config: DownstreamConfig, device, stop, checkpoint: Path) -> None:
    """The rest of one epoch from `state["batch"]`; on a stop request the checkpoint is saved mid-epoch."""
    torch.manual_seed(derived_seed(config.seed, "epoch", epoch, state["batch"]))  # dropout, stochastic depth
    order = epoch_order(len(run.train), derived_seed(config.seed, "order", epoch))[state["batch"] * config.batch_size:]
    loader = make_loader(_dataset(run.train), config.batch_size, order, config.workers, device.type == "cuda")
    model.train()
    bar = tqdm(loader, desc=f"{run.name} epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
               initial=state["batch"], total=per_epoch)
    for clips, labels in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(state["step"], total, per_epoch, config.lr)
        with _autocast(device, config.amp):
            logits = model(normalise(clips.to(device, non_blocking=True)))
        loss = loss_fn(logits.float(), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        state["batch"] += 1
        state["losses"].append(loss.item())
        bar.set_postfix(loss=f"{state['losses'][-1]:.3f}")
        if stop.requested:
            _save_checkpoint(checkpoint, model, optimizer, state)
            stop.check(f"{run.name} saved at epoch {epoch + 1}, batch {state['batch']}")


def train_run(run: Run, phases: list[str], config: DownstreamConfig, device: torch.device, folder: Path,
              weights: dict[str, torch.Tensor] | None, identity: dict) -> dict:
    """Train `run` (or continue it), test its selected weights and return its result (also `result.json`)."""
    identity = hashlib.sha256(json.dumps({**identity, "run": run.name, "phases": phases,
                                          "clips": [[i.path.name, i.name, i.label] for i in run.train],
                                          "val": [[i.path.name, i.name] for i in run.val]},
                                         sort_keys=True, default=str).encode()).hexdigest()
    done = folder / "result.json"
    if done.is_file() and read_json(done, "the run result").get("identity") == identity:
        return read_json(done, "the run result")
    torch.manual_seed(derived_seed(config.seed, "init"))  # the same initial weights for every training set
    model = build_model(config.model, len(phases), config.clip_frames, config.clip_size)
    if weights is not None:
        load_backbone(model, config.model, weights, config.weights)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(run.train) / config.batch_size)
    total = per_epoch * config.epochs
    state = {"identity": identity, "epoch": 0, "batch": 0, "step": 0, "losses": [], "history": [], "best": None}
    checkpoint = folder / "checkpoint"
    if (checkpoint / "state.json").is_file():
        saved = read_json(checkpoint / "state.json", "the training state")
        if saved.get("identity") == identity:
            state = _load_checkpoint(checkpoint, model, optimizer, device)
            state.pop("param_groups", None)
            log.info("%s: resuming after epoch %d", run.name, state["epoch"])
        else:
            log.info("%s: its settings or clips changed; training from the start", run.name)
    loss_fn = torch.nn.CrossEntropyLoss()
    with stop_requests("training step") as stop:
        for epoch in range(state["epoch"], config.epochs):
            _train_epoch(run, model, optimizer, loss_fn, state, epoch, total, per_epoch, config, device, stop,
                         checkpoint)
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(state["losses"]))}
            if run.val:
                val = evaluate(model, run.val, phases, config, device)["clip"]
                record |= {"val_top1": val["top1"], "val_macro_f1": val["macro_f1"]}
            state["history"].append(record)
            best = state["best"]
            if not run.val or best is None or record["val_macro_f1"] >= best["val_macro_f1"]:  # ties: the later epoch
                state["best"] = record
                _save_weights(folder / "best.safetensors", model)
            state["epoch"], state["batch"], state["losses"] = epoch + 1, 0, []
            _save_checkpoint(checkpoint, model, optimizer, state)
            log.info("%s epoch %d/%d: %s", run.name, epoch + 1, config.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    model.load_state_dict(load_file(str(folder / "best.safetensors"), device=str(device)))
    result = {"identity": identity, "name": run.name, "history": state["history"], "selected_epoch": state["best"]["epoch"],
              "train": {"clips": len(run.train), "videos": len({i.video for i in run.train})},
              "test": evaluate(model, run.test, phases, config, device)}
    write_json(done, result)
    return result
