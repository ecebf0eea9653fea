"""`ophora train` on the tiny model: config loading, timestep strata, learning, exact resume, export,
TPT -> P2FT, LoRA, NaN handling and every bad-input error."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ophora.cli import main
from ophora.prepare.run import PrepareConfig, prepare
from ophora.core.errors import ConfigError, InputError, ModelError
from ophora.core.media import read_video
from ophora.train.config import TrainConfig, load_config
from ophora.train.timesteps import sample_timesteps, stratum_bounds
from ophora.train.trainer import train
from test_prepare import SMALL, write_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("dataset"), bad=False)


@pytest.fixture(scope="module")
def cache(dataset, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, **SMALL))
    return out


def tiny_config(tiny_model, cache, out, *overrides: str, stage: str = "tpt") -> TrainConfig:
    return load_config(CONFIGS / f"tiny-{stage}.yaml", [f"model={tiny_model}", f"cache={cache}", f"out={out}",
                                                       "validation_prompts=[]", *overrides])


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- config


def test_released_configs_hold_the_papers_settings():
    tpt, p2ft = load_config(CONFIGS / "tpt.yaml"), load_config(CONFIGS / "p2ft.yaml")
    for cfg in (tpt, p2ft):
        assert (cfg.lr_schedule, cfg.lr_cycles, cfg.warmup_steps) == ("cosine_with_restarts", 1, 800)
        assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.max_grad_norm) == (0.9, 0.95, 1e-3, 1.0)
        assert (cfg.batch_size, cfg.grad_accum, cfg.mixed_precision, cfg.mode) == (8, 1, "fp16", "full")
        assert cfg.gradient_checkpointing and cfg.timestep_sampling == "stratified"
    assert (tpt.learning_rate, tpt.steps, p2ft.learning_rate, p2ft.steps) == (1e-4, 65000, 5e-5, 4500)
    assert p2ft.model == "runs/tpt/final" and p2ft.subset_csv.endswith("privacy_preserved.csv")


def test_overrides_are_typed_and_unknown_keys_named(tmp_path):
    cfg = load_config(CONFIGS / "tiny-tpt.yaml", ["steps=12", "learning_rate=2e-4", "validation_prompts=[a, b]", "strata=4"])
    assert (cfg.steps, cfg.learning_rate, cfg.validation_prompts, cfg.strata) == (12, 2e-4, ["a", "b"], 4)
    with pytest.raises(ConfigError, match=r"unknown config key 'learnig_rate' in the overrides \(did you mean 'learning_rate'\?\)"):
        load_config(CONFIGS / "tiny-tpt.yaml", ["learnig_rate=1e-4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ncache: c\nout: o\nwarmup: 3\n")
    with pytest.raises(ConfigError, match=f"unknown config key 'warmup' in {bad}"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config key 'steps' wants int, got 'many'"):
        load_config(CONFIGS / "tiny-tpt.yaml", ["steps=many"])
    with pytest.raises(ConfigError, match="mode must be one of full, lora"):
        load_config(CONFIGS / "tiny-tpt.yaml", ["mode=half"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8, 16])
@pytest.mark.parametrize("per_rank", [1, 2, 3])
def test_stratified_timesteps_cover_every_sub_interval_in_every_global_batch(world, per_rank):
    T, G = 1000, world * per_rank
    assert [stratum_bounds(s, world, T)[0] for s in range(world)] + [T] == sorted(
        {b for s in range(world) for b in stratum_bounds(s, world, T)})  # the strata tile [0, T)
    for micro_step in range(20):
        ranks = [sample_timesteps("stratified", list(range(r * per_rank, (r + 1) * per_rank)), G, world, T, 7, micro_step)
                 for r in range(world)]
        for r, t in enumerate(ranks):
            low, high = r * T // world, (r + 1) * T // world
            assert ((t >= low) & (t < high)).all(), (r, t)
        whole = sample_timesteps("stratified", list(range(G)), G, world, T, 7, micro_step)
        assert torch.equal(whole, torch.cat(ranks))  # one process holding the global batch draws the same


def test_uniform_timesteps_span_the_range():
    t = torch.cat([sample_timesteps("uniform", list(range(8)), 8, 1, 1000, 0, m) for m in range(200)])
    assert t.min() < 20 and t.max() > 980 and len(t.unique()) > 700


# ------------------------------------------------------------------------------------------- training


def test_overfitting_two_clips_lowers_the_loss_clearly(tiny_model, cache, dataset, tmp_path):
    run = train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=100", "warmup_steps=5", "learning_rate=3e-3",
                            "checkpoint_every=1000", "timestep_sampling=uniform", "export=false",
                            f"subset_csv={dataset / 'privacy_preserved.csv'}"))
    values = losses(run)
    assert len(values) == 100 and np.isfinite(values).all()
    assert np.mean(values[-20:]) < 0.65 * np.mean(values[:10]), (np.mean(values[:10]), np.mean(values[-20:]))


def test_interrupted_then_resumed_run_repeats_the_uninterrupted_losses(tiny_model, cache, tmp_path):
    whole = train(tiny_config(tiny_model, cache, tmp_path / "whole", "steps=8", "batch_size=1", "export=false"))
    part = tmp_path / "part"
    train(tiny_config(tiny_model, cache, part, "steps=8", "batch_size=1", "export=false", "stop_at_step=6"))
    assert len(losses(part)) == 6 and [p.name for p in (part / "checkpoints").iterdir()] != []
    # the checkpoint kept is step 6 (every 4 and at the stop); steps 5-6 after step 4 would be redone from 4
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    train(tiny_config(tiny_model, cache, part, "steps=8", "batch_size=1", "export=false"))
    np.testing.assert_allclose(losses(part), losses(whole), rtol=1e-6)
    a = load_file(next((whole / "checkpoints" / "step-0000008").glob("*.safetensors")))
    b = load_file(next((part / "checkpoints" / "step-0000008").glob("*.safetensors")))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_export_loads_in_cogvideox_pipeline_and_ophora_sample(tiny_model, cache, tmp_path):
    from diffusers import CogVideoXPipeline

    run = train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=3"))
    final = run / "final"
    pipe = CogVideoXPipeline.from_pretrained(final)
    trained = load_file(final / "transformer" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)
    assert (final / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tiny_model / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    frames = pipe(prompt="Polish the posterior capsule.", num_frames=9, height=64, width=64, num_inference_steps=2,
                  output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    assert frames.shape == (9, 64, 64, 3) and np.isfinite(frames).all()
    code = main(["sample", "--model", str(final), "--prompt", "Polish the capsule.", "--out", str(tmp_path / "s"),
                 "--frames", "9", "--height", "64", "--width", "64", "--steps", "2"])
    video, _ = read_video(tmp_path / "s" / "prompt" / "0.mp4")
    assert code == 0 and video.shape == (9, 64, 64, 3)
    # with no frame settings given, sample makes what the model was trained for (recorded in the export)
    assert json.loads((final / "ophora_train.json").read_text())["video"] == {"frames": 17, "height": 64, "width": 96,
                                                                             "fps": 8.0}
    code = main(["sample", "--model", str(final), "--prompt", "Polish the capsule.", "--out", str(tmp_path / "d"),
                 "--steps", "1"])
    video, fps = read_video(tmp_path / "d" / "prompt" / "0.mp4")
    assert code == 0 and video.shape == (17, 64, 96, 3) and fps == pytest.approx(8)


def test_tpt_chained_into_p2ft_on_the_privacy_subset(tiny_model, cache, dataset, tmp_path):
    tpt = train(tiny_config(tiny_model, cache, tmp_path / "tpt", "steps=3"))
    p2ft = train(tiny_config(tpt / "final", cache, tmp_path / "p2ft", "steps=3",
                             f"subset_csv={dataset / 'privacy_preserved.csv'}", stage="p2ft"))
    record = json.loads((p2ft / "run.json").read_text())
    assert record["clips"] == 2 and record["config"]["model"] == str(tpt / "final")
    a = load_file(tpt / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(p2ft / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((p2ft / "final" / "ophora_train.json").read_text())["base_model"] == str(tpt / "final")


def test_lora_trains_only_the_adapters_and_exports_merged_weights(tiny_model, cache, tmp_path):
    run = train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=4", "mode=lora", "lora_rank=4",
                            "learning_rate=1e-2", "warmup_steps=0"))
    trained = load_file(run / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == base.keys()
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    assert changed and all(k.endswith(".weight") and any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)


def test_non_finite_loss_is_skipped_not_trained_on(tiny_model, cache, tmp_path):
    poisoned = tmp_path / "cache"
    shutil.copytree(cache, poisoned)
    clip = poisoned / "clips" / "case1_1.safetensors"
    tensors = load_file(clip)
    tensors["latent_mean"][0, 0, 0, 0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(clip), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(clip), metadata=metadata)
    run = train(tiny_config(tiny_model, poisoned, tmp_path / "run", "steps=6", "batch_size=1", "export=false"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in records) == 2  # one of the three clips, twice in six steps
    weights = load_file(next((run / "checkpoints" / "step-0000006").glob("*.safetensors")))
    assert all(torch.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------------------------- bad input


def test_missing_and_mismatched_caches_are_refused(tiny_model, cache, tmp_path):
    with pytest.raises(InputError, match="latent cache not found"):
        train(tiny_config(tiny_model, tmp_path / "nothing", tmp_path / "run"))
    from ophora.synthetic.random_pipeline import make_random_model

    other = make_random_model(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="was made with another VAE/text encoder"):
        train(tiny_config(other, cache, tmp_path / "run"))
    with pytest.raises(InputError, match="holds none of the clips"):
        (tmp_path / "subset.csv").write_text("clip id,instruction\nunknown_0,x\n")
        train(tiny_config(tiny_model, cache, tmp_path / "run", f"subset_csv={tmp_path / 'subset.csv'}"))


def test_a_run_resumes_only_on_the_inputs_it_read(tiny_model, cache, tmp_path):
    """The same settings are not enough: a cache prepared again at the same path, or base weights re-saved with
    other values, make another run (resuming would mix two); an unchanged copy of either resumes."""
    model, data = tmp_path / "model", tmp_path / "cache"
    shutil.copytree(tiny_model, model)
    shutil.copytree(cache, data)
    run = tmp_path / "run"
    train(tiny_config(model, data, run, "steps=2", "export=false"))
    assert {"base_weights_state", "cache_state"} <= json.loads((run / "run.json").read_text())["identity"].keys()
    train(tiny_config(model, data, run, "steps=3", "export=false"))  # nothing changed: resumes
    info = json.loads((data / "cache.json").read_text())  # a prepare rerun that found everything done rewrites these
    (data / "cache.json").write_text(json.dumps({**info, "written": "later", "versions": {"ophora": "next"}}))
    train(tiny_config(model, data, run, "steps=3", "export=false"))

    clip = sorted((data / "clips").iterdir())[0]
    clip.write_bytes(clip.read_bytes())  # the same clip written again (a copy, new times): still the same run
    train(tiny_config(model, data, run, "steps=4", "export=false"))
    tensors = load_file(clip)
    with safe_open(clip, "pt") as f:
        metadata = f.metadata()
    save_file(tensors, clip, {**metadata, "instruction": "Another instruction."})  # prepared again from new inputs
    with pytest.raises(InputError, match=r"other settings \(cache_state differ\)"):
        train(tiny_config(model, data, run, "steps=5", "export=false"))

    run2 = tmp_path / "run2"
    train(tiny_config(model, cache, run2, "steps=2", "export=false"))
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in tensors.items()}, weights)
    with pytest.raises(InputError, match=r"other settings \(base_weights_state differ\)"):
        train(tiny_config(model, cache, run2, "steps=3", "export=false"))


def test_model_folder_missing_parts_is_refused(tiny_model, cache, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing transformer weights"):
        train(tiny_config(broken, cache, tmp_path / "run"))


def test_output_folder_of_another_run_is_refused(tiny_model, cache, tmp_path, capsys):
    train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=2", "export=false"))
    with pytest.raises(InputError, match=r"holds a training run made with other settings \(learning_rate differ\)"):
        train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=2", "learning_rate=0.1"))
    capsys.readouterr()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code = main(["train", str(CONFIGS / "tiny-tpt.yaml"), f"model={tiny_model}", f"cache={cache}", f"out={tmp_path / 'busy'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "is not empty and holds no training run" in err


def test_eight_bit_adam_without_bitsandbytes_says_how_to_get_it(tiny_model, cache, tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(ConfigError, match=r"pip install 'ophora\[bnb\]'"):
        train(tiny_config(tiny_model, cache, tmp_path / "run", "optimizer=adamw8bit"))


def test_validation_videos_and_tensorboard_logs(tiny_model, cache, tmp_path):
    config = tiny_config(tiny_model, cache, tmp_path / "run", "steps=2", "export=false", "validate_every=1",
                         "validation_prompts=[Polish the posterior capsule.]")
    run = train(config)
    trained_for = json.loads((run / "run.json").read_text())["video"]  # the cache's most common clip shape
    assert trained_for == {"frames": 17, "height": 64, "width": 96, "fps": 8.0}
    for step in (1, 2):  # validation takes the cache's frames and fps, and the config's 64x64
        video, fps = read_video(run / "validation" / f"step-000000{step}" / "0.mp4")
        assert video.shape == (17, 64, 64, 3) and fps == pytest.approx(8)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(events.Tags()["scalars"])
    assert "validation/0" in events.Tags()["images"]


def test_selective_checkpointing_changes_memory_not_results(tiny_model, cache, tmp_path):
    runs = [train(tiny_config(tiny_model, cache, tmp_path / name, "steps=3", "export=false", *extra))
            for name, extra in (("all", ["gradient_checkpointing=true"]),
                                ("one", ["checkpoint_blocks=1", "gradient_checkpointing=true"]),
                                ("selective", ["selective_checkpointing=true", "gradient_checkpointing=true"]),
                                ("none", ["gradient_checkpointing=false"]))]
    for run in runs[1:]:
        np.testing.assert_allclose(losses(run), losses(runs[0]), rtol=1e-6)
    a = load_file(next((runs[0] / "checkpoints" / "step-0000003").glob("*.safetensors")))
    b = load_file(next((runs[2] / "checkpoints" / "step-0000003").glob("*.safetensors")))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_attention_option_takes_kernels_with_a_backward():
    assert load_config(None, ["model=m", "cache=c", "out=o"]).attention == "sdpa"  # until fa4 ran on a GPU
    assert load_config(None, ["model=m", "cache=c", "out=o", "attention=fa4"]).attention == "fa4"
    with pytest.raises(ConfigError, match="attention must be one of auto, sdpa, fa4, got 'fa3'"):
        load_config(None, ["model=m", "cache=c", "out=o", "attention=fa3"])


def test_fa4_on_the_cpu_trains_the_sdpa_losses_with_the_fallback_line(tiny_model, cache, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        fa4 = train(tiny_config(tiny_model, cache, tmp_path / "fa4", "steps=2", "export=false", "attention=fa4"))
    assert [r.getMessage() for r in caplog.records if r.name == "ophora.core.attention"] == [
        "attention kernel: sdpa (fa4 requested, not a CUDA device; falling back to the exact default)"]
    sdpa = train(tiny_config(tiny_model, cache, tmp_path / "sdpa", "steps=2", "export=false", "attention=sdpa"))
    assert losses(fa4) == losses(sdpa)


# LoRA: 2 steps. Adam's first steps are of full size however small a gradient element is, so elements at the float
# noise level step with noise-chosen signs; at this learning rate the third loss differs by ~0.4% between any two
# exact paths (stock with and without checkpointing too)
@pytest.mark.parametrize("mode", [["mode=full"], ["mode=lora", "lora_rank=4", "learning_rate=1e-2", "steps=2"]],
                         ids=["full", "lora"])
def test_fa4_processor_trains_the_stock_losses_with_a_stand_in_kernel(tiny_model, cache, tmp_path, monkeypatch, caplog,
                                                                      with_fake_fa4, mode):
    """The fa4 path (our processor, LoRA-wrapped projections too, the custom ops' autograd, selective checkpointing)
    with FA4's kernels replaced by plain fp32 math: the stock processor's losses."""
    from ophora.train import blocks

    monkeypatch.setitem(blocks.AUTOCAST_DTYPES, "no", torch.bfloat16)  # the stand-in runs fp32: let fa4 be chosen
    with caplog.at_level(logging.INFO, logger="ophora.core.attention"):
        fa4 = train(tiny_config(tiny_model, cache, tmp_path / "fa4", "steps=3", "export=false", "attention=fa4",
                                "gradient_checkpointing=true", "selective_checkpointing=true", *mode))
    chosen = [r.getMessage() for r in caplog.records if r.name == "ophora.core.attention"]
    assert len(chosen) == 1 and chosen[0].startswith("attention kernel: fa4 (FlashAttention-4")
    stock = train(tiny_config(tiny_model, cache, tmp_path / "stock", "steps=3", "export=false", "attention=sdpa",
                              *mode))
    np.testing.assert_allclose(losses(fa4), losses(stock), rtol=1e-5)
    assert losses(stock)[0] != losses(stock)[-1]  # it trained


def test_fp8_linears_without_a_float8_gpu_falls_back_to_the_exact_bf16_path(tiny_model, cache, tmp_path, caplog):
    from ophora.train.fp8 import fp8_unavailable

    if fp8_unavailable() is None:
        pytest.skip("torchao and an SM89+ GPU are here: fp8 linears would run")
    assert load_config(None, ["model=m", "cache=c", "out=o", "fp8_linears=true"]).fp8_linears
    with pytest.raises(ConfigError, match="full fine-tuning only"):
        load_config(None, ["model=m", "cache=c", "out=o", "fp8_linears=true", "mode=lora"])
    with caplog.at_level(logging.INFO, logger="ophora.train.fp8"):
        fp8 = train(tiny_config(tiny_model, cache, tmp_path / "fp8", "steps=2", "export=false", "fp8_linears=true"))
    assert [r.getMessage() for r in caplog.records if r.name == "ophora.train.fp8"] == [
        f"fp8_linears: off, running the bf16 path ({fp8_unavailable()})"]
    plain = train(tiny_config(tiny_model, cache, tmp_path / "plain", "steps=2", "export=false"))
    assert losses(fp8) == losses(plain)


def test_fp8_conversion_takes_only_block_attention_and_ff_linears_of_multiples_of_16_and_keeps_the_weights():
    pytest.importorskip("torchao.float8")
    from diffusers import CogVideoXTransformer3DModel

    from ophora.train.fp8 import to_fp8_linears

    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32,
                                        time_embed_dim=32, max_text_seq_length=8)  # every side a multiple of 16
    model.transformer_blocks[1].ff.net[2] = torch.nn.Linear(128, 24)  # ... but this one: stays bf16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eligible = [n for n, m in model.named_modules() if n.startswith("transformer_blocks") and
                isinstance(m, torch.nn.Linear) and ".norm" not in n and n != "transformer_blocks.1.ff.net.2"]
    assert len(eligible) == 2 * 4 + 2 * 2 - 1  # q, k, v, out and two feed-forward linears a block, less one
    assert to_fp8_linears(model) == len(eligible)
    assert {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"} == set(eligible)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("kernel", ["sdpa", "fa4"])
def test_selective_checkpointing_runs_attention_once_per_block(tiny_model, with_fake_fa4, kernel):
    from diffusers import CogVideoXTransformer3DModel
    from torch.utils._python_dispatch import TorchDispatchMode

    from ophora.train.blocks import ATTENTION_OPS, configure_attention, configure_blocks

    class CountAttention(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountAttention.calls += func in ATTENTION_OPS
            return func(*args, **(kwargs or {}))

    def attention_calls(selective: bool) -> int:
        model = CogVideoXTransformer3DModel.from_pretrained(tiny_model / "transformer")
        assert configure_attention(model, kernel, "cpu", "bf16") == kernel  # fa4: the stand-in kernel
        configure_blocks(model, True, None, selective)
        CountAttention.calls = 0
        with CountAttention():
            out = model(hidden_states=torch.randn(1, 3, 16, 8, 8), encoder_hidden_states=torch.randn(1, 226, 32),
                        timestep=torch.tensor([10]), return_dict=False)[0]
            out.square().mean().backward()
        return CountAttention.calls

    assert attention_calls(False) == 4  # 2 blocks, each attention recomputed in the backward pass
    assert attention_calls(True) == 2   # kept from the forward pass


def test_rotary_position_models_train_with_the_pipelines_embeddings(tiny_model, cache, tmp_path):
    from diffusers import CogVideoXPipeline

    from ophora.train.positions import rotary_embeddings

    rotary = tmp_path / "rotary-model"  # a CogVideoX-5b-style model: rotary instead of sin-cos positions
    shutil.copytree(tiny_model, rotary)
    config_path = rotary / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["use_rotary_positional_embeddings"] = True
    config_path.write_text(json.dumps(config))
    pipe = CogVideoXPipeline.from_pretrained(rotary)
    reference = pipe._prepare_rotary_positional_embeddings(64, 96, 5, torch.device("cpu"))
    ours = rotary_embeddings(pipe.transformer.config, 5, 8, 12, torch.device("cpu"))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    run = train(tiny_config(rotary, cache, tmp_path / "run", "steps=3"))
    assert len(losses(run)) == 3 and np.isfinite(losses(run)).all()
    assert CogVideoXPipeline.from_pretrained(run / "final").transformer.config.use_rotary_positional_embeddings


def test_global_batches_hold_one_bucket_each_and_follow_the_seed():
    from ophora.train.batches import batches_per_epoch, plan_epoch
    from ophora.core.latent_cache import CacheEntry

    shapes = [(16, 13, 60, 90)] * 7 + [(16, 13, 60, 120)] * 5
    entries = [CacheEntry(f"c{i}", f"clips/c{i}.safetensors", s) for i, s in enumerate(shapes)]
    plan = plan_epoch(entries, 2, seed=3, epoch=0)
    assert len(plan) == batches_per_epoch(entries, 2) == 3 + 2
    assert all(len(b) == 2 and len({entries[i].latent_shape for i in b}) == 1 for b in plan)
    used = [i for b in plan for i in b]
    assert len(used) == len(set(used)) == 10
    assert plan == plan_epoch(entries, 2, seed=3, epoch=0) != plan_epoch(entries, 2, seed=3, epoch=1)
    with pytest.raises(InputError, match="no resolution/frame bucket of the cache holds 8 clips"):
        batches_per_epoch(entries, 8)
