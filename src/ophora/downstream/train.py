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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ophora.core.errors import InputError
from ophora.core.files import atomic_dir, atomic_path, read_json, write_json
from ophora.core.models import state_dict_mismatch
from ophora.core.ranks import Ranks, barrier
from ophora.core.seeds import derived_seed
from ophora.core.signals import Interrupted, StopFlag
from ophora.downstream.clips import (
    ClipDataset,
    batches_of,
    clip_file_plan,
    epoch_order,
    loading,
    make_loader,
    normalise,
)
from ophora.downstream.config import DownstreamConfig
from ophora.downstream.metrics import scores, segment_votes
from ophora.downstream.models import HEADS, build_model, load_backbone
from ophora.downstream.shards import (
    NormStatistics,
    agreed_stop,
    gather_rows,
    own_shards,
    step_shards,
    sum_over_ranks,
)

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


def predict(model: torch.nn.Module, items: list[Item], config: DownstreamConfig, device: torch.device,
            ranks: Ranks) -> np.ndarray:
    """Class probabilities of every clip (N, classes); each rank predicts every world-th clip."""
    mine = list(range(ranks.rank, len(items), ranks.world))
    loader = make_loader(_dataset(items), batches_of(mine, config.batch_size), config.worker_count(),
                         device.type == "cuda")
    model.eval()
    out = []
    with torch.no_grad(), loading(loader) as batches:
        for clips, _ in batches:
            with _autocast(device, config.amp):
                logits = model(normalise(clips.to(device, non_blocking=True)))
            out.append(torch.softmax(logits.float(), 1).cpu())
    classes = model.state_dict()[f"{HEADS[config.model]}weight"].shape[0]
    return gather_rows(torch.cat(out) if out else torch.zeros((0, classes)), len(items), ranks).numpy()


def evaluate(model, items: list[Item], phases: list[str], config: DownstreamConfig, device, ranks: Ranks) -> dict:
    """Clip-level and segment-level (mean of a segment's clips) scores."""
    probabilities = predict(model, items, config, device, ranks)
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


def _saved_checkpoint(folder: Path, best: Path, identity: str, model, device, name: str) -> tuple | None:
    """(state, model weights, optimizer state) of the run's checkpoint when it is this run's and every file of it
    (the selected weights `best` too) reads back and fits `model`; else None, with a warning when it is damaged
    (the run then trains from the start, as a run without a checkpoint does)."""
    if not (folder / "state.json").is_file():
        return None
    try:
        state = read_json(folder / "state.json", "the training state")
        if state.get("identity") != identity:
            log.info("%s: its settings or clips changed; training from the start", name)
            return None
        weights = load_file(str(folder / "model.safetensors"), device=str(device))
        problem = state_dict_mismatch(model.state_dict(), weights)
        if problem:
            raise ValueError(problem)
        per_param: dict[int, dict] = {}
        for key, value in load_file(str(folder / "optimizer.safetensors"), device=str(device)).items():
            index, part = key.split(".", 1)
            per_param.setdefault(int(index), {})[part] = value.cpu() if part == "step" else value
        optimizer_state = {"state": per_param, "param_groups": state["param_groups"]}
        if state["best"] is not None:
            load_file(str(best))  # the selected weights, tested at the end
    except (InputError, OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: the checkpoint in %s is damaged (%s); training the run from the start", name, folder,
                    " ".join(str(exc).split()) or type(exc).__name__)
        return None
    return state, weights, optimizer_state


def _save_weights(path: Path, model) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


@dataclass
class Loop:
    """What every step of a run uses: the network and its optimizer, the schedule, the shards and where to save."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: DownstreamConfig
    shards: int
    ranks: Ranks
    device: torch.device
    per_epoch: int
    checkpoint: Path

    def save(self, state: dict) -> None:
        if self.ranks.rank == 0:
            _save_checkpoint(self.checkpoint, self.model, self.optimizer, state)


def _train_epoch(run: Run, loop: Loop, state: dict, epoch: int, stop) -> None:
    """The rest of one epoch from `state["batch"]` (shards.py); on a stop request the checkpoint is saved mid-epoch."""
    config, model, ranks = loop.config, loop.model, loop.ranks
    order = epoch_order(len(run.train), derived_seed(config.seed, "order", epoch))
    steps = {k: step_shards(order, k, loop.shards, config.batch_size) for k in range(state["batch"], loop.per_epoch)}
    mine = own_shards(loop.shards, ranks)
    loader = make_loader(_dataset(run.train), [shards[s] for shards in steps.values() for s in mine if shards[s]],
                         config.worker_count(), loop.device.type == "cuda")
    norms = NormStatistics(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total = loop.per_epoch * config.epochs
    model.train()
    bar = tqdm(steps.items(), desc=f"{run.name} epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
               initial=state["batch"], total=loop.per_epoch, disable=None if ranks.rank == 0 else True)
    with loading(loader) as batches:
        for k, shards in bar:
            for group in loop.optimizer.param_groups:
                group["lr"] = _lr(state["step"], total, loop.per_epoch, config.lr)
            loop.optimizer.zero_grad(set_to_none=True)
            clips_in_batch = sum(map(len, shards))
            loss = torch.zeros(1, device=loop.device)
            norms.start_step()
            for s in mine:
                if not shards[s]:
                    continue
                clips, labels = next(batches)
                torch.manual_seed(derived_seed(config.seed, "shard", epoch, k, s))  # dropout, stochastic depth
                norms.start_shard()
                with _autocast(loop.device, config.amp):
                    logits = model(normalise(clips.to(loop.device, non_blocking=True)))
                shard_loss = loss_fn(logits.float(), labels.to(loop.device)) / clips_in_batch
                shard_loss.backward()
                norms.end_shard()
                loss += shard_loss.detach()
            for p in parameters:
                if p.grad is None:  # this rank ran no shard of this (last, short) batch
                    p.grad = torch.zeros_like(p)
            sum_over_ranks([p.grad for p in parameters] + [loss])
            norms.end_step(sum(1 for shard in shards if shard))
            loop.optimizer.step()
            state["step"] += 1
            state["batch"] += 1
            state["losses"].append(loss.item())
            bar.set_postfix(loss=f"{state['losses'][-1]:.3f}")
            signum = agreed_stop(stop.signum)  # every rank stops after the same step
            if signum:
                loop.save(state)
                barrier()
                raise Interrupted(signum, f"{run.name} saved at epoch {epoch + 1}, batch {state['batch']}")


def run_identity(run: Run, phases: list[str], identity: dict) -> str:
    """What a run's result and checkpoint depend on: the settings, its clips and what their files hold (the plan
    digest covers the source video, so a replaced video trains and tests the run again)."""
    files = sorted({i.path for i in run.train + run.val + run.test})
    return hashlib.sha256(json.dumps({**identity, "run": run.name, "phases": phases,
                                      "clips": [[i.path.name, i.name, i.label] for i in run.train],
                                      "val": [[i.path.name, i.name] for i in run.val],
                                      "test": [[i.path.name, i.name] for i in run.test],
                                      "files": {f.name: clip_file_plan(f) for f in files}},
                                     sort_keys=True, default=str).encode()).hexdigest()


def train_run(run: Run, phases: list[str], config: DownstreamConfig, shards: int, ranks: Ranks, device: torch.device,
              folder: Path, weights: dict[str, torch.Tensor] | None, identity: dict, stop: StopFlag) -> dict:
    """Train `run` (or continue it), test its selected weights and return its result (rank 0 writes `result.json`).

    `stop` is checked after every step (all ranks agreeing), which then saves the checkpoint and raises `Interrupted`.
    """
    identity = run_identity(run, phases, identity)
    done = folder / "result.json"
    if done.is_file():
        try:
            result = read_json(done, "the run result")
            if result.get("identity") == identity:
                return result
        except InputError as exc:  # recomputed from the checkpoint
            log.warning("%s: %s; testing the run again", run.name, str(exc).split(";")[0])
    torch.manual_seed(derived_seed(config.seed, "init"))  # the same initial weights for every training set
    model = build_model(config.model, len(phases), config.clip_frames, config.clip_size)
    if weights is not None:
        load_backbone(model, config.model, weights, config.weights)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loop = Loop(model, optimizer, config, shards, ranks, device,
                math.ceil(len(run.train) / (shards * config.batch_size)), folder / "checkpoint")
    state = {"identity": identity, "epoch": 0, "batch": 0, "step": 0, "losses": [], "history": [], "best": None}
    saved = _saved_checkpoint(loop.checkpoint, folder / "best.safetensors", identity, model, device, run.name)
    if saved is not None:
        state, weights_saved, optimizer_state = saved
        model.load_state_dict(weights_saved)
        optimizer.load_state_dict(optimizer_state)
        state.pop("param_groups", None)
        log.info("%s: resuming at epoch %d, batch %d", run.name, state["epoch"] + 1, state["batch"])
    for epoch in range(state["epoch"], config.epochs):
        _train_epoch(run, loop, state, epoch, stop)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(state["losses"]))}
        if run.val:
            val = evaluate(model, run.val, phases, config, device, ranks)["clip"]
            record |= {"val_top1": val["top1"], "val_macro_f1": val["macro_f1"]}
        state["history"].append(record)
        best = state["best"]
        if not run.val or best is None or record["val_macro_f1"] >= best["val_macro_f1"]:  # ties: the later epoch
            state["best"] = record
            if ranks.rank == 0:
                _save_weights(folder / "best.safetensors", model)
        state["epoch"], state["batch"], state["losses"] = epoch + 1, 0, []
        loop.save(state)
        log.info("%s epoch %d/%d: %s", run.name, epoch + 1, config.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    barrier()  # rank 0 has written the selected weights
    model.load_state_dict(load_file(str(folder / "best.safetensors"), device=str(device)))
    result = {"identity": identity, "name": run.name, "history": state["history"], "selected_epoch": state["best"]["epoch"],
              "train": {"clips": len(run.train), "videos": len({i.video for i in run.train})},
              "test": evaluate(model, run.test, phases, config, device, ranks)}
    if ranks.rank == 0:
        write_json(done, result)
    return result
