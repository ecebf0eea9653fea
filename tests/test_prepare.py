"""`ophora prepare`: frame sampling, buckets, the latent cache against independent VAE/T5 references, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ophora.cli import main
from ophora.core.latent_cache import read_clip_header
from ophora.prepare.frames import FrameSettings, choose_bucket, effective_fps, frame_indices
from ophora.prepare.run import PrepareConfig, prepare
from ophora.core.errors import InputError, MediaError, ModelError
from ophora.core.media import read_video, write_video

INSTRUCTIONS = {
    "case1_0": "Create the main incision with a keratome at the temporal limbus.",
    "case1_1": "Perform a continuous curvilinear capsulorhexis with forceps.",
    "case2_0": "Emulsify the nucleus with the phaco probe.",
}
SMALL = dict(frame_buckets=(9, 17), heights=(64,), widths=(64, 96))


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_clip(seed: int, frames: int = 20, height: int = 64, width: int = 96) -> np.ndarray:
    """A bright square moving over a coloured gradient: content the VAE and the model can tell apart."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.uint8)
    base[..., seed % 3] = np.linspace(40, 200, width, dtype=np.uint8)[None, :]
    video = np.repeat(base[None], frames, axis=0)
    y, dx = rng.integers(0, height - 16), int(rng.integers(2, 5))
    for k in range(frames):
        x = (k * dx) % (width - 16)
        video[k, y:y + 16, x:x + 16] = 255
    return video


def write_synthetic_dataset(folder: Path, privacy: tuple[str, ...] = ("case1_0", "case2_0"), bad: bool = True) -> Path:
    """An Ophora-160K-layout dataset: clips/<id>.mp4 (64x96, 20 frames at 8 fps), instructions.csv,
    privacy_preserved.csv and, with `bad`, an unreadable clip listed in instructions.csv."""
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    for i, clip_id in enumerate(INSTRUCTIONS):
        write_video(folder / "clips" / f"{clip_id}.mp4", synthetic_clip(i), fps=8)
    rows = dict(INSTRUCTIONS)
    if bad:
        (folder / "clips" / "broken_0.mp4").write_bytes(b"not a video")
        rows["broken_0"] = "Inject viscoelastic into the anterior chamber."
    for name, ids in (("instructions.csv", list(rows)), ("privacy_preserved.csv", list(privacy))):
        with (folder / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["clip id", "instruction"])
            writer.writerows([(i, rows[i]) for i in ids])
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def cache(dataset, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, **SMALL))
    return out


# ------------------------------------------------------------------------------------------- frames


def test_frames_at_target_fps_centred_when_the_clip_is_long_enough():
    # 120 frames at 24 fps = 5 s; 17 frames at 8 fps span 2 s: every 3rd frame, centred.
    idx = frame_indices(120, 24.0, FrameSettings(frame_buckets=(17,)))
    assert np.all(np.diff(idx) == 3)
    assert idx[0] + idx[-1] == pytest.approx(119, abs=1)


def test_short_clip_spread_across_its_length_with_the_largest_bucket_that_fits():
    idx = frame_indices(30, 30.0, FrameSettings(frame_buckets=(9, 17, 49)))  # 1 s: 8 frames at 8 fps
    assert len(idx) == 17 and idx[0] == 0 and idx[-1] == 29 and len(set(idx)) == 17


def test_clip_shorter_than_every_bucket_gets_the_smallest_bucket_spread_across_it():
    idx = frame_indices(30, 30.0, FrameSettings())  # 1 s at 30 fps: 49 frames, some repeated
    assert len(idx) == 49 and idx[0] == 0 and idx[-1] == 29 and sorted(idx) == idx and len(set(idx)) == 30
    assert effective_fps(idx, 30.0) == pytest.approx(48 / (29 / 30))
    with pytest.raises(MediaError, match="no frames"):
        frame_indices(0, 30.0, FrameSettings())


def test_default_curate_clips_flow_into_default_prepare(real_data):
    """A real 6-fps Cataract-1K clip of 27 frames (4.5 s, shorter than 49 frames at 8 fps) gives a 49-frame sample."""
    from ophora.prepare.frames import decode_frames

    clip = real_data / "cataract1k_clips" / "cataract1k_iol_frames11355-11485_step5_512x384_6fps.mp4"
    source, fps = read_video(clip)
    frames, info = decode_frames(clip, FrameSettings())
    assert frames.shape == (49, 720, 960, 3) and info["source_frames"] == len(source) == 27
    assert info["frame_indices"][0] == 0 and info["frame_indices"][-1] == len(source) - 1
    assert info["effective_fps"] == pytest.approx(48 / (26 / fps))


def test_resolution_buckets_follow_the_aspect_ratio():
    heights, widths = (480, 720), (720, 960)
    assert choose_bucket(1080, 1920, heights, widths) == (480, 960)
    assert choose_bucket(480, 720, heights, widths) == (480, 720)
    assert choose_bucket(1000, 1000, heights, widths) == (720, 720)
    assert choose_bucket(768, 1024, heights, widths) == (720, 960)


# ------------------------------------------------------------------------------------------- the cache


def test_latents_equal_the_vae_encoding_of_the_same_frames(cache, dataset, tiny_model):
    from diffusers import AutoencoderKLCogVideoX

    vae = AutoencoderKLCogVideoX.from_pretrained(tiny_model / "vae").eval()
    for clip_id in INSTRUCTIONS:
        stored = load_file(cache / "clips" / f"{clip_id}.safetensors")
        meta = read_clip_header(cache / "clips" / f"{clip_id}.safetensors")[0]
        frames, fps = read_video(dataset / "clips" / f"{clip_id}.mp4")  # already at the 64x96 bucket
        assert meta["frame_indices"] == list(range(2, 19)) and fps == pytest.approx(8)
        video = torch.from_numpy(frames[meta["frame_indices"]]).float() / 127.5 - 1
        with torch.no_grad():
            dist = vae.encode(video.permute(3, 0, 1, 2)[None]).latent_dist
        assert stored["latent_mean"].shape == (16, 5, 8, 12)
        torch.testing.assert_close(stored["latent_mean"], dist.mean[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stored["latent_logvar"], dist.logvar[0], rtol=1e-5, atol=1e-5)


def test_prompt_embeddings_equal_the_pipelines_226_token_encoding(cache, tiny_model):
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(tiny_model)
    for clip_id, text in INSTRUCTIONS.items():
        stored = load_file(cache / "clips" / f"{clip_id}.safetensors")["prompt_embeds"]
        with torch.no_grad():
            reference, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=226, device="cpu")
        assert stored.shape == (226, 32)
        torch.testing.assert_close(stored, reference[0], rtol=1e-5, atol=1e-5)


def test_index_and_rejects_record_what_happened(cache):
    with (cache / "index.csv").open() as f:
        index = list(csv.DictReader(f))
    assert sorted(r["clip id"] for r in index) == sorted(INSTRUCTIONS)
    assert {(r["frames"], r["height"], r["width"], r["latent shape"]) for r in index} == {("17", "64", "96", "[16, 5, 8, 12]")}
    with (cache / "rejects.csv").open() as f:
        rejects = list(csv.DictReader(f))
    assert [r["clip id"] for r in rejects] == ["broken_0"] and "cannot decode" in rejects[0]["reason"]
    info = json.loads((cache / "cache.json").read_text())
    assert info["counts"] == {"clips": 3, "rejected": 1}
    assert info["max_tokens"] == 226 and info["vae_scaling_factor"] == pytest.approx(1.15258426)
    assert "torch" in info["versions"]


def test_rerun_resumes_and_skips_finished_clips(dataset, tiny_model, tmp_path, cache):
    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    (out / "clips" / "case1_1.safetensors").unlink()
    summary = prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, **SMALL))
    assert (summary.made, summary.skipped, summary.rejected) == (1, 2, 1)
    torch.testing.assert_close(load_file(out / "clips" / "case1_1.safetensors"),
                               load_file(cache / "clips" / "case1_1.safetensors"))


def test_a_recurated_dataset_is_encoded_again_where_it_changed(dataset, tiny_model, tmp_path, cache, caplog):
    """A clip is reused only if its instruction and video file are unchanged (a copy of the dataset keeps its
    clips), and the index lists only the dataset's clips: no stale or mixed cache after re-curating."""
    data, out = tmp_path / "data", tmp_path / "cache"
    shutil.copytree(dataset, data)
    shutil.copytree(cache, out)
    config = PrepareConfig(dataset=data, model=str(tiny_model), out=out, **SMALL)
    os.utime(data / "clips" / "case1_0.mp4", (1e9, 1e9))  # a copy that did not keep the file times
    summary = prepare(config)
    assert (summary.made, summary.skipped) == (0, 3)
    with open(data / "instructions.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["clip id"] != "case1_1"]  # the new curation drops one clip
    rows[[r["clip id"] for r in rows].index("case1_0")]["instruction"] = "Rotate the intraocular lens."
    with open(data / "instructions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(dataset / "clips" / "case1_1.mp4", data / "clips" / "case2_0.mp4")  # other frames, same name
    summary = prepare(config)
    assert (summary.made, summary.skipped) == (2, 0)
    assert "case1_0.safetensors is outdated (its instruction changed)" in caplog.text
    assert f"case2_0.safetensors is outdated ({data / 'clips' / 'case2_0.mp4'} changed)" in caplog.text
    fresh = tmp_path / "fresh"
    prepare(PrepareConfig(dataset=data, model=str(tiny_model), out=fresh, **SMALL))
    assert (out / "index.csv").read_text() == (fresh / "index.csv").read_text()
    assert [r["clip id"] for r in csv.DictReader((out / "index.csv").open())] == ["case1_0", "case2_0"]
    for clip in ("case1_0", "case2_0"):
        a, b = load_file(out / "clips" / f"{clip}.safetensors"), load_file(fresh / "clips" / f"{clip}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_made_with_other_settings_is_refused(dataset, tiny_model, tmp_path, cache):
    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    with pytest.raises(InputError, match=r"holds a latent cache made with other settings \(frames differ\)"):
        prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, frame_buckets=(9,), heights=(64,), widths=(64, 96)))


def test_model_folder_missing_parts_is_named(dataset, tiny_model, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelError, match="missing vae, vae weights"):
        prepare(PrepareConfig(dataset=dataset, model=str(broken), out=tmp_path / "c", **SMALL))


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_model):
    code = main(["prepare", str(tmp_path / "nowhere"), "--model", str(tiny_model), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "dataset folder not found" in err
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "instructions.csv").write_text("id,text\na,b\n")
    assert main(["prepare", str(tmp_path / "ds"), "--model", str(tiny_model), "--out", str(tmp_path / "c")]) == 2
    assert "has no column 'clip id', 'instruction'" in capsys.readouterr().err


def test_two_ranks_with_torchrun_write_the_same_cache(dataset, tiny_model, tmp_path, cache):
    out = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "ophora", "prepare", str(dataset), "--model", str(tiny_model), "--out", str(out),
           "--frame-buckets", "9,17", "--heights", "64", "--widths", "64,96"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # a bad clip is rejected (its content), the others encoded
    assert (out / "index.csv").read_text() == (cache / "index.csv").read_text()
    assert (out / "rejects.csv").read_text() == (cache / "rejects.csv").read_text()
    for clip_id in INSTRUCTIONS:
        torch.testing.assert_close(load_file(out / "clips" / f"{clip_id}.safetensors"),
                                   load_file(cache / "clips" / f"{clip_id}.safetensors"))
