"""evaluate's metrics: the Frechet distance, the FID Inception and I3D networks, and agreement with the
reference implementations (pytorch-fid, cd-fvd, torchmetrics) on the same inputs and weight files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from evaluate_helpers import texture_video, weights, write_sample_output, write_set  # noqa: F401
from ophora.core.media import read_video
from ophora.evaluate import EvaluateConfig, evaluate
from ophora.evaluate.frechet import frechet_distance, frechet_from_features, gaussian_stats
from ophora.evaluate.i3d import i3d_features, load_i3d
from ophora.evaluate.inception import inception_features, load_inception
from ophora.evaluate.run import real_offset


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # diagonal Gaussians
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # same rotation of both: the closed form still holds
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(closed, rel=1e-9)
    for _ in range(3):  # general SPD matrices: scipy's sqrtm formula
        x, y = rng.normal(size=(20, 20)), rng.normal(size=(20, 20))
        s1, s2 = x @ x.T + 0.1 * np.eye(20), y @ y.T + 0.1 * np.eye(20)
        m1, m2 = rng.normal(size=20), rng.normal(size=20)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_scipy_frechet(m1, s1, m2, s2), rel=1e-8)
    # the low-rank path over features (fewer samples than dimensions) equals the covariance path
    x, y = rng.normal(size=(7, 30)), rng.normal(size=(9, 30)) + 0.5
    for ddof in (0, 1):
        direct = frechet_distance(*gaussian_stats(x, ddof), *gaussian_stats(y, ddof))
        assert frechet_from_features(x, y, ddof) == pytest.approx(direct, rel=1e-7)
        assert frechet_from_features(x, x, ddof) == pytest.approx(0.0, abs=1e-9)


def test_inception_shapes_batches_and_distances(weights):
    model = load_inception(weights["inception"])
    frames = np.concatenate([texture_video(1, frames=3), texture_video(2, frames=3)])
    one, all_at_once = inception_features(model, frames, batch_size=1), inception_features(model, frames, batch_size=8)
    assert one.shape == (6, 2048) and one.dtype == np.float64
    np.testing.assert_allclose(one, all_at_once, rtol=1e-4, atol=1e-5)
    assert frechet_from_features(one, one, 1) == pytest.approx(0.0, abs=1e-6)
    brighter = inception_features(model, np.clip(frames.astype(int) + 60, 0, 255).astype(np.uint8))
    assert frechet_from_features(one, brighter, 1) > 1e-3


def test_i3d_state_dict_and_torchscript(weights, tmp_path):
    from ophora.evaluate.random_weights import write_random_i3d

    model, kind = load_i3d(weights["i3d"])
    assert kind == "state_dict"
    clips = np.stack([texture_video(3, frames=16), texture_video(4, frames=16)])
    one, two = i3d_features(model, clips, batch_size=1), i3d_features(model, clips, batch_size=2)
    assert one.shape == (2, 400)
    np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-5)
    shifted = i3d_features(model, np.clip(clips.astype(int) + 80, 0, 255).astype(np.uint8))
    assert frechet_from_features(one, one, 0) == pytest.approx(0.0, abs=1e-8)
    assert frechet_from_features(one, shifted, 0) > 1e-3
    scripted, kind = load_i3d(write_random_i3d(tmp_path / "i3d_torchscript.pt", torchscript=True))
    assert kind == "torchscript"  # the same seeded network through torch.jit.load
    np.testing.assert_allclose(i3d_features(scripted, clips[:1]), one[:1], rtol=1e-4, atol=1e-5)


def test_fid_equals_pytorch_fid(weights, tmp_path, monkeypatch):
    pytest.importorskip("pytorch_fid")
    from PIL import Image
    from pytorch_fid.fid_score import calculate_fid_given_paths

    real = write_set(tmp_path / "real", [1, 2], frames=5)
    gen = write_set(tmp_path / "gen", [3, 4], frames=5, brightness=30)
    result = evaluate(EvaluateConfig(real=tmp_path / "real", generated=tmp_path / "gen", out=tmp_path / "out",
                                     metrics=["fid"], inception_weights=weights["inception"], device="cpu"))
    for name, paths in (("real", real), ("gen", gen)):  # the same decoded frames, as PNG files
        (tmp_path / f"{name}_png").mkdir()
        for path in paths:
            for i, frame in enumerate(read_video(path)[0]):
                Image.fromarray(frame).save(tmp_path / f"{name}_png" / f"{path.stem}_{i:03d}.png")
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"  # pytorch-fid finds "its" download there
    hub.mkdir(parents=True)
    (hub / weights["inception"].name).symlink_to(weights["inception"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    reference = calculate_fid_given_paths([str(tmp_path / "real_png"), str(tmp_path / "gen_png")], batch_size=50,
                                          device="cpu", dims=2048, num_workers=0)
    assert result["counts"]["fid_real_frames"] == result["counts"]["fid_generated_frames"] == 10
    assert result["fid"] == pytest.approx(float(reference), rel=1e-3)
    print(f"FID ophora {result['fid']:.6f} pytorch-fid {float(reference):.6f}")


def test_fvd_equals_cd_fvd(weights, tmp_path):
    pytest.importorskip("cdfvd")
    from cdfvd import fvd as cd

    write_set(tmp_path / "real", [11, 12, 13], frames=20)
    write_set(tmp_path / "gen", [21, 22, 23], frames=18, speed=4)
    result = evaluate(EvaluateConfig(real=tmp_path / "real", generated=tmp_path / "gen", out=tmp_path / "out",
                                     metrics=["fvd"], i3d_weights=weights["i3d"], device="cpu", seed=3))
    from ophora.evaluate.inputs import read_videos

    real_clips, gen_clips = [], []
    for video in read_videos(tmp_path / "real", "--real"):  # the same clip selection: seeded offsets
        frames = read_video(video.path)[0]
        start = real_offset(3, video, 16, len(frames))
        real_clips.append(frames[start:start + 16])
    for video in read_videos(tmp_path / "gen", "--generated"):
        gen_clips.append(read_video(video.path)[0][:16])
    reference = cd.cdfvd("i3d", ckpt_path=str(weights["i3d"]), device="cpu", n_real="full", n_fake="full")
    value = reference.compute_fvd(np.stack(real_clips), np.stack(gen_clips))
    assert result["fvd_variant"] == "fvd2048_16f" and result["counts"]["fvd_real_clips"] == 3
    assert result["fvd"] == pytest.approx(float(value), rel=5e-3)
    print(f"FVD ophora {result['fvd']:.6f} cd-fvd {float(value):.6f}")


class _Features:
    """transformers 5 returns an output object from get_image_features; torchmetrics 1.9 wants the tensor."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def to(self, device):
        self.model.to(device)
        return self

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clipscore_equals_torchmetrics(weights, tmp_path):
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    items = [("incision_1", "the incision is made at the limbus", 5), ("capsulorhexis_1", "tear the capsule", 6)]
    write_sample_output(tmp_path / "gen", items, frames=6, size=(64, 96))
    write_set(tmp_path / "real", [1], frames=6)
    result = evaluate(EvaluateConfig(real=tmp_path / "real", generated=tmp_path / "gen", out=tmp_path / "out",
                                     metrics=["clipscore"], clip_model=str(weights["clip"]), device="cpu"))

    def load():
        return (_Features(CLIPModel.from_pretrained(weights["clip"]).eval()),
                CLIPProcessor.from_pretrained(weights["clip"]))

    per_video, frames_all, prompts_all = [], [], []
    for clip_id, prompt, _ in items:
        frames = [torch.from_numpy(f).permute(2, 0, 1) for f in read_video(tmp_path / "gen" / clip_id / "0.mp4")[0]]
        per_frame = [float(clip_score(f, prompt, load)) for f in frames]  # clamped per frame: the paper's
        per_video.append(np.mean(per_frame))
        frames_all += frames
        prompts_all += [prompt] * len(frames)
    assert result["clipscore"] == pytest.approx(float(np.mean(per_video)), abs=1e-4)
    metric = CLIPScore(model_name_or_path=load)  # torchmetrics' own clamp: once, after the mean
    metric.update(frames_all, prompts_all)
    assert result["clipscore_torchmetrics"] == pytest.approx(float(metric.compute()), abs=1e-4)
    assert set(result["per_phase"]) == {"incision", "capsulorhexis"}
    print(f"CLIPScore ophora {result['clipscore']:.6f} torchmetrics {np.mean(per_video):.6f}")
