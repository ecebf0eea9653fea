"""Check sampling, preparation and training across 2 processes against 1, through the `ophora` CLI.

On a machine with 2+ CUDA GPUs (random weights at the published CogVideoX-2b size):

    python benchmarks/multi_gpu.py --out $OUT                  # both parts (about 10 min on 2 H200s)
    python benchmarks/multi_gpu.py --out $OUT --parts sample   # or one part per command
    python benchmarks/multi_gpu.py --out $OUT --parts train

`--tiny` runs the same at toy size on a CPU (2 gloo processes) to check the script itself. Every command
run is recorded in `multi_gpu.json` with its exit code, wall time and, when it failed, its error output;
a failing strategy is recorded and the script goes on.

sample: 8 prompts with 1 rank and with 2 ranks (torchrun) must give the same clip ids, seeds and
byte-identical mp4s; videos/s and scaling efficiency = (videos/s on 2) / (2 x videos/s on 1). Then one
prompt with 1 rank vs 2 ranks with --cfg-parallel: speed-up and max abs pixel difference.
train: a cache made by `ophora prepare` (1 rank and 2 ranks, compared) from synthetic clips; 20 steps
(tiny: 6) of: the single-process equivalent (batch 2B, strata=2), 1 process at batch B, DDP, FSDP
(FULL_SHARD), DeepSpeed ZeRO-2/3 if installed; losses vs the single-process equivalent, samples/s and
peak memory of rank 0 (TensorBoard scalars), scaling efficiency; DDP stopped at step 10 and resumed.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.core.media import read_video, write_video  # noqa: E402
from ophora.synthetic.random_pipeline import TOKENIZER_CORPUS, make_random_model  # noqa: E402
from ophora.sample.jobs import plan_jobs, shard  # noqa: E402

log = logging.getLogger("multi_gpu")
PY = sys.executable
PROMPTS = [line for line in TOKENIZER_CORPUS.splitlines() if line][:8]


# ------------------------------------------------------------------------------------------- helpers


class Runner:
    """Runs commands, records each (command, rc, seconds, error tail) in `self.commands`."""

    def __init__(self, env: dict):
        self.env, self.commands = env, []

    def __call__(self, cmd: list[str], one_gpu: bool = False, timeout: float = 1800) -> dict:
        env = {**self.env, **({"CUDA_VISIBLE_DEVICES": "0"} if one_gpu else {})}
        shown = ("CUDA_VISIBLE_DEVICES=0 " if one_gpu else "") + " ".join(cmd)
        log.info("$ %s", shown)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, err = -1, f"timed out after {timeout} s: {(exc.stderr or b'')[-2000:]!r}"
        rec = {"command": shown, "rc": rc, "seconds": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            rec["error"] = error_lines(err)
            last = [line.strip() for line in rec["error"].splitlines() if "Error" in line or "error:" in line]
            rec["error_line"] = last[-1] if last else rec["error"][-300:]
            log.warning("failed (rc %d): %s", rc, rec["error"][-500:])
        self.commands.append(rec)
        return rec


def error_lines(stderr: str, keep: int = 25) -> str:
    """The tail of a failed command's stderr, without tqdm progress lines and without the launcher's own
    traceback and failure summary (the ranks' errors come before them)."""
    launcher = stderr.rfind("ChildFailedError")
    if launcher > 0:
        stderr = stderr[:stderr.rfind("Traceback (most recent call last)", 0, launcher)] or stderr
    noise = ("it/s]", "s/it]", "torch/distributed/elastic")
    lines = [line for line in stderr.splitlines() if line.strip() and not any(n in line for n in noise)]
    return "\n".join(lines[-keep:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(free_port())]


def accelerate(n: int, config_file: Path | None = None) -> list[str]:
    cmd = [PY, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--main_process_port", str(free_port())]
    if config_file is not None:
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--multi_gpu"]  # accelerate's multi-process (DDP) launcher; on a CPU it runs with gloo
    return cmd


def module_versions() -> dict:
    """Versions of the packages the CLI runs need here ('missing' when not importable): a GPU machine without
    network may lack some (see README: GPU benchmarks)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "diffusers", "transformers", "accelerate", "tensorboard", "sentencepiece", "av", "deepspeed"):
        try:
            found[name] = version(name) if importlib.util.find_spec(name) else "missing"
        except PackageNotFoundError:
            found[name] = "installed (no version)"
    return found


# ------------------------------------------------------------------------------------------- model


def build_2b_model(folder: Path) -> None:
    """A random pipeline at CogVideoX-2b size in bf16 (`make_random_model(size="2b")`), initialised on the GPU."""
    make_random_model(folder, size="2b", dtype=torch.bfloat16, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.cuda.empty_cache()  # this process stays alive while the CLI runs use the GPUs


def ensure_model(work: Path, tiny: bool, run: Runner) -> tuple[Path, dict]:
    folder = work / "model"
    if (folder / "model_index.json").is_file():
        return folder, {"reused": str(folder)}
    if tiny:
        return folder, run([PY, "-m", "ophora", "make-random-model", str(folder)])
    t0 = time.perf_counter()
    build_2b_model(folder)
    return folder, {"command": "build_2b_model (in this script)", "rc": 0, "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------------- sampling


def videos(folder: Path) -> dict[str, tuple[str, float]]:
    """{'<clip id>/<n>.mp4': (seed, seconds)} from a sample run's manifest.csv."""
    with (folder / "manifest.csv").open(newline="") as f:
        return {f"{r['clip id']}/{r['n']}.mp4": (r["seed"], float(r["seconds"])) for r in csv.DictReader(f)}


def pixel_diff(a: Path, b: Path) -> int | None:
    """Max abs difference of the decoded frames of two videos (None when their shapes differ)."""
    x, y = read_video(a)[0], read_video(b)[0]
    return int(np.abs(x.astype(int) - y.astype(int)).max()) if x.shape == y.shape else None


def generation_rate(folder: Path, world: int) -> float:
    """Videos per second of generation alone: the slowest rank's summed per-video seconds (no start-up)."""
    seconds = {k: v[1] for k, v in videos(folder).items()}
    jobs = plan_jobs([(f"p{i}", p) for i, p in enumerate(PROMPTS)], 1, 42)
    per_rank = [sum(seconds[f"{j.clip_id}/{j.n}.mp4"] for j in shard(jobs, r, world)) for r in range(world)]
    return len(seconds) / max(per_rank)


def part_sample(work: Path, model: Path, a: argparse.Namespace, run: Runner) -> dict:
    prompts = work / "prompts.csv"
    with prompts.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip id", "caption prompt"])
        w.writerows([(f"p{i}", p) for i, p in enumerate(PROMPTS)])
    size = ["--frames", str(a.frames), "--height", str(a.height), "--width", str(a.width), "--steps", str(a.steps)]
    res = {"videos": len(PROMPTS), "size": f"{a.frames}x{a.height}x{a.width}", "steps": a.steps}
    outs = {1: work / "sample-1", 2: work / "sample-2"}
    runs = {}
    for n, folder in outs.items():
        shutil.rmtree(folder, ignore_errors=True)
        launch = [PY, "-m", "ophora"] if n == 1 else [*torchrun(2), "-m", "ophora"]
        runs[n] = run([*launch, "sample", "--model", str(model), "--prompts", str(prompts), "--out", str(folder), *size],
                      one_gpu=n == 1)
    if all(r["rc"] == 0 for r in runs.values()):
        one, two = videos(outs[1]), videos(outs[2])
        same_files = [k for k in one if k in two and filecmp.cmp(outs[1] / k, outs[2] / k, shallow=False)]
        res["same_clip_ids"] = sorted(one) == sorted(two)
        res["same_seeds"] = {k: v[0] for k, v in one.items()} == {k: v[0] for k, v in two.items()}
        res["byte_identical_mp4s"] = f"{len(same_files)}/{len(one)}"
        res["identical"] = res["same_clip_ids"] and res["same_seeds"] and len(same_files) == len(one) == len(PROMPTS)
        res["max_abs_pixel_diff"] = max(pixel_diff(outs[1] / k, outs[2] / k) for k in one if k in two)
        for n in (1, 2):
            res[f"videos_per_s_{n}_wall"] = len(PROMPTS) / runs[n]["seconds"]
            res[f"videos_per_s_{n}_generation"] = generation_rate(outs[n], n)
        res["scaling_efficiency_wall"] = res["videos_per_s_2_wall"] / (2 * res["videos_per_s_1_wall"])
        res["scaling_efficiency_generation"] = res["videos_per_s_2_generation"] / (2 * res["videos_per_s_1_generation"])

    # CFG-parallel: one prompt, the two halves of classifier-free guidance on two ranks
    cfg = {}
    for name, launch, extra in (("1 rank", [PY, "-m", "ophora"], []),
                                ("2 ranks cfg-parallel", [*torchrun(2), "-m", "ophora"], ["--cfg-parallel"])):
        folder = work / f"cfg-{len(extra)}"
        shutil.rmtree(folder, ignore_errors=True)
        r = run([*launch, "sample", "--model", str(model), "--prompt", PROMPTS[0], "--out", str(folder), *size, *extra],
                one_gpu=not extra)
        cfg[name] = (folder, r)
    if all(r["rc"] == 0 for _, r in cfg.values()):
        (f1, _), (f2, _) = cfg.values()
        s1, s2 = (next(iter(videos(f).values()))[1] for f in (f1, f2))
        res["cfg_parallel"] = {"seconds_1_rank": s1, "seconds_2_ranks": s2, "speedup": s1 / s2,
                               "wall_speedup": cfg["1 rank"][1]["seconds"] / cfg["2 ranks cfg-parallel"][1]["seconds"],
                               "max_abs_pixel_diff": pixel_diff(*(next(f.glob("*/*.mp4")) for f in (f1, f2)))}
    else:
        res["cfg_parallel"] = "failed (see commands)"
    return res


# ------------------------------------------------------------------------------------------- training


def synthetic_clip(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """A bright square moving over a coloured gradient."""
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., seed % 3] = np.linspace(40, 200, width, dtype=np.uint8)[None, None, :]
    y, s = int(rng.integers(0, height // 2)), height // 4
    for k in range(frames):
        x = (k * s // 4) % (width - s)
        video[k, y:y + s, x:x + s] = 255
    return video


def make_dataset(folder: Path, clips: int, frames: int, height: int, width: int) -> None:
    """An Ophora-160K-layout dataset: clips/<id>.mp4 at 8 fps and instructions.csv."""
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = [(f"case{i}_0", PROMPTS[i % len(PROMPTS)]) for i in range(clips)]
    for i, (clip_id, _) in enumerate(rows):
        write_video(folder / "clips" / f"{clip_id}.mp4", synthetic_clip(i, frames, height, width), fps=8)
    with (folder / "instructions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip id", "instruction"])
        w.writerows(rows)


def compare_caches(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    names = sorted(p.name for p in (a / "clips").glob("*.safetensors"))
    diff = 0.0
    for name in names:
        x, y = load_file(a / "clips" / name), load_file(b / "clips" / name)
        diff = max(diff, *(float((x[k].float() - y[k].float()).abs().max()) for k in x))
    return {"clips": len(names), "same_clips": names == sorted(p.name for p in (b / "clips").glob("*.safetensors")),
            "max_abs_diff": diff}


def metrics(out: Path) -> dict:
    """Losses from out/metrics.jsonl; samples/s (median after 2 warm-up steps) and peak GPU memory of rank 0
    from the TensorBoard scalars the trainer logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    res = {"steps": [r["step"] for r in recs], "loss": [r["loss"] for r in recs]}
    scalars: dict[str, list] = {}
    for events in (out / "logs").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))  # one file at a time: a resumed run has several in one folder
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    rate = [v for s, v in sorted(scalars.get("samples_per_s", [])) if s > 2]
    if rate:
        res["samples_per_s"] = float(np.median(rate))
    if scalars.get("memory_gib"):
        res["peak_memory_gib_rank0"] = max(v for _, v in scalars["memory_gib"])
    return res


def max_rel_diff(x: list[float], y: list[float]) -> float | None:
    if len(x) != len(y) or not x:
        return None
    x, y = np.asarray(x), np.asarray(y)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)))


def fsdp_config(path: Path, mixed: str) -> Path:
    path.write_text(json.dumps({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_machines": 1, "num_processes": 2,
        "machine_rank": 0, "mixed_precision": mixed, "use_cpu": not torch.cuda.is_available(),
        "fsdp_config": {"fsdp_sharding_strategy": "FULL_SHARD", "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                        "fsdp_transformer_layer_cls_to_wrap": "CogVideoXBlock", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                        "fsdp_use_orig_params": True, "fsdp_sync_module_states": True, "fsdp_offload_params": False,
                        "fsdp_backward_prefetch": "BACKWARD_PRE", "fsdp_cpu_ram_efficient_loading": False},
    }, indent=1))  # YAML is a superset of JSON: accelerate reads this file
    return path


def deepspeed_config(folder: Path, stage: int, mixed: str, batch: int) -> Path:
    """An accelerate config for DeepSpeed ZeRO-`stage` and the DeepSpeed JSON it points to. The micro batch is set
    there because the trainer hands accelerate no DataLoader to read it from."""
    ds = folder / f"zero{stage}.json"
    ds.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage}, "bf16": {"enabled": mixed == "bf16"},
    }, indent=1))
    path = folder / f"zero{stage}.yaml"
    path.write_text(json.dumps({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_machines": 1, "num_processes": 2,
        "machine_rank": 0, "deepspeed_config": {"deepspeed_config_file": str(ds), "zero3_init_flag": False},
    }, indent=1))
    return path


def part_train(work: Path, model: Path, a: argparse.Namespace, run: Runner) -> dict:
    tiny = a.tiny
    frames, height, width = (9, 64, 64) if tiny else (9, 256, 384)
    dataset = work / "dataset"
    if not (dataset / "instructions.csv").is_file():
        make_dataset(dataset, clips=8, frames=12, height=height, width=width)
    prep = ["prepare", str(dataset), "--model", str(model), "--frames", str(frames),
            "--heights", str(height), "--widths", str(width)]
    res: dict = {"size": f"{frames}x{height}x{width}", "steps": a.train_steps, "batch_per_process": a.batch}
    caches = {1: work / "cache-1", 2: work / "cache-2"}
    prepared = {}
    for n, cache in caches.items():  # a rerun (another --only) resumes: finished clips are skipped
        launch = [PY, "-m", "ophora"] if n == 1 else [*torchrun(2), "-m", "ophora"]
        prepared[n] = run([*launch, *prep, "--out", str(cache)], one_gpu=n == 1)
    if prepared[1]["rc"] == 0 and prepared[2]["rc"] == 0:
        res["prepare_1_vs_2_ranks"] = compare_caches(caches[1], caches[2])
    cache = next((caches[n] for n in (2, 1) if prepared[n]["rc"] == 0), None)
    if cache is None:
        res["error"] = "no cache could be prepared"
        return res

    mixed = "no" if tiny else "bf16"
    common = ["tiny-tpt", f"model={model}", f"cache={cache}", f"steps={a.train_steps}", "validation_prompts=[]",
              "export=false", "log_every=1", f"checkpoint_every={a.train_steps}", "keep_checkpoints=1",
              f'mixed_precision="{mixed}"', "learning_rate=1e-4", "gradient_checkpointing=false"]
    train = ["-m", "ophora", "train", *common]
    B = a.batch
    runs = {
        "single_equivalent": ([[PY, *train, f"batch_size={2 * B}", "strata=2"]], True),
        "one_gpu_batch_B": ([[PY, *train, f"batch_size={B}"]], True),
        "ddp": ([[*accelerate(2), *train, f"batch_size={B}"]], False),
        "fsdp_full_shard": ([[*accelerate(2, fsdp_config(work / "fsdp.yaml", mixed)), *train, f"batch_size={B}"]], False),
    }
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    if has_deepspeed:
        for stage in (2, 3):
            cfgfile = deepspeed_config(work, stage, mixed, B)
            runs[f"deepspeed_zero{stage}"] = ([[*accelerate(2, cfgfile), *train, f"batch_size={B}"]], False)
    else:
        res["deepspeed_zero2"] = res["deepspeed_zero3"] = "not installed"

    # resume: DDP interrupted at half the steps, then the same command without the stop, to the end
    ddp = [*accelerate(2), *train, f"batch_size={B}"]
    runs["ddp_resumed"] = ([ddp + [f"stop_at_step={a.train_steps // 2}"], ddp], False)
    only = set(a.only.split(",")) if a.only else set(runs)
    results = {}
    for name, (cmds, one_gpu) in runs.items():
        out = work / "train" / name
        if name not in only:  # measured by an earlier command with the same --work
            if (out / "metrics.jsonl").is_file():
                results[name] = {**metrics(out), "from_earlier_command": True}
            continue
        shutil.rmtree(out, ignore_errors=True)
        for cmd in cmds:
            r = run([*cmd, f"out={out}"], one_gpu=one_gpu)
            if r["rc"] != 0:
                break
        results[name] = metrics(out) if r["rc"] == 0 else {"error_line": r["error_line"], "error": r["error"]}
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # full-size optimizer states are tens of GB

    ref = results.get("single_equivalent", {}).get("loss")
    base = results.get("one_gpu_batch_B", {}).get("samples_per_s")
    for name, m in results.items():
        if "loss" in m and ref and name != "one_gpu_batch_B":
            m["loss_max_rel_diff_vs_single_equivalent"] = max_rel_diff(m["loss"], ref)
        if "samples_per_s" in m and base and name not in ("single_equivalent", "one_gpu_batch_B", "ddp_resumed"):
            m["scaling_efficiency"] = m["samples_per_s"] / (2 * base)
    if "loss" in results.get("ddp_resumed", {}) and "loss" in results.get("ddp", {}):
        results["ddp_resumed"]["steps_complete"] = results["ddp_resumed"]["steps"] == list(range(1, a.train_steps + 1))
        results["ddp_resumed"]["loss_max_rel_diff_vs_uninterrupted_ddp"] = max_rel_diff(
            results["ddp_resumed"]["loss"], results["ddp"]["loss"])
        results["ddp_resumed"]["loss_equal_to_uninterrupted_ddp"] = results["ddp_resumed"]["loss"] == results["ddp"]["loss"]
    res.update(results)
    return res


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy size on a CPU with gloo")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--work", default=None, help="scratch folder (model, videos, caches, runs); kept for reuse. "
                                                  "Default: /tmp/ophora-multi-gpu[-tiny]")
    p.add_argument("--parts", default="sample,train", help="comma-separated: sample, train")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 10; tiny 4)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None, help="default 20; tiny 6")
    p.add_argument("--only", default=None, help="train: run only these comma-separated runs (single_equivalent, "
                   "one_gpu_batch_B, ddp, fsdp_full_shard, deepspeed_zero2, deepspeed_zero3, ddp_resumed); the others "
                   "are read from an earlier command's --work")
    p.add_argument("--batch", type=int, default=None, help="batch per process B (default 2; tiny 1)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    tiny = a.tiny
    defaults = dict(steps=4, frames=9, height=64, width=64, train_steps=6, batch=1) if tiny else \
        dict(steps=10, frames=49, height=480, width=720, train_steps=20, batch=2)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    gpus = torch.cuda.device_count()
    if not tiny and gpus < 2:
        raise SystemExit(f"needs 2+ CUDA GPUs, found {gpus} (use --tiny on a CPU)")
    work = Path(a.work or f"/tmp/ophora-multi-gpu{'-tiny' if tiny else ''}")
    work.mkdir(parents=True, exist_ok=True)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    if tiny:
        env["OMP_NUM_THREADS"] = "1"  # equal float reduction order in 1 and 2 processes; 2 shared cores
    run = Runner(env)
    res = {"device": [torch.cuda.get_device_name(i) for i in range(gpus)] if gpus else "cpu (gloo)",
           "tiny": tiny, "packages": module_versions(),
           "invocation": " ".join(["python", "benchmarks/multi_gpu.py", *sys.argv[1:]])}
    t0 = time.perf_counter()
    model, res["model"] = ensure_model(work, tiny, run)
    parts = a.parts.split(",")
    for name, fn in (("sample", part_sample), ("train", part_train)):
        if name in parts:
            try:
                res[name] = fn(work, model, a, run)
            except Exception as exc:  # a broken part is recorded; the other part still runs
                log.exception("part %s failed", name)
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
    res["commands"] = run.commands
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "multi_gpu" + ("" if parts == ["sample", "train"] else "_" + "_".join(parts)) + ".json"
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / name)
    print(json.dumps({k: v for k, v in res.items() if k != "commands"}, indent=1))


if __name__ == "__main__":
    main()
