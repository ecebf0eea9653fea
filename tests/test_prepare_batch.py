"""`ophora prepare` in batches: clips of one size encoded together equal clips encoded one at a time; out of GPU
memory, a batch is split and a single clip tiled; one bad clip in a batch fails alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ophora.prepare import encode
from ophora.core.vae_speed import to_channels_last
from ophora.prepare.encode import Encoders, encode_prompts, encode_videos
from ophora.prepare.run import PrepareConfig, prepare
from test_prepare import INSTRUCTIONS, SMALL, synthetic_clip, write_synthetic_dataset


@pytest.fixture(scope="module")
def encoders(tiny_model):
    from ophora.prepare.run import load_encoders

    return load_encoders(tiny_model, "cpu", torch.float32)


def test_batched_vae_and_t5_equal_one_at_a_time(encoders):
    tokenizer, text_encoder, vae = encoders
    clips = [synthetic_clip(i, frames=17, height=64, width=96) for i in range(3)]
    texts = list(INSTRUCTIONS.values())
    mean, logvar = encode_videos(vae, clips, "cpu", torch.float32)
    embeds = encode_prompts(tokenizer, text_encoder, texts, "cpu")
    assert mean.shape == logvar.shape == (3, 16, 5, 8, 12) and embeds.shape == (3, 226, 32)
    for i, (clip, text) in enumerate(zip(clips, texts)):
        m1, v1 = encode_videos(vae, [clip], "cpu", torch.float32)
        torch.testing.assert_close(mean[i], m1[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logvar[i], v1[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embeds[i], encode_prompts(tokenizer, text_encoder, [text], "cpu")[0],
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mean[0], mean[1])  # different clips, different latents


def test_channels_last_vae_encodes_the_same(tiny_model):
    from ophora.prepare.run import load_encoders

    _, _, vae = load_encoders(tiny_model, "cpu", torch.float32)
    clips = [synthetic_clip(i, frames=17, height=64, width=96) for i in range(2)]
    reference = encode_videos(vae, clips, "cpu", torch.float32)
    to_channels_last(vae)
    assert any(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in vae.modules()
               if isinstance(m, torch.nn.Conv3d))
    for ours, ref in zip(encode_videos(vae, clips, "cpu", torch.float32), reference):
        # other convolution kernels sum in another order: far below bf16's rounding (2^-8), the GPU cache's precision
        assert float((ours - ref).norm() / ref.norm()) < 2**-8 / 10


def test_prepare_in_batches_writes_the_same_cache(tiny_model, tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "dataset")
    one, three = tmp_path / "one", tmp_path / "three"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=one, encode_batch=1, **SMALL))
    summary = prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=three, encode_batch=3, **SMALL))
    assert (summary.made, summary.rejected) == (3, 1)  # the broken clip is rejected, the batch of three encoded
    for clip_id in INSTRUCTIONS:
        a, b = load_file(one / "clips" / f"{clip_id}.safetensors"), load_file(three / "clips" / f"{clip_id}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    assert (one / "index.csv").read_text() == (three / "index.csv").read_text()
    assert (one / "rejects.csv").read_text() == (three / "rejects.csv").read_text()


class FakeVae:
    """Stands in for the VAE: runs out of memory above `fits` clips (untiled) or always for one clip untiled."""

    def __init__(self, fits: int):
        self.fits, self.use_tiling, self.sizes = fits, False, []

    def enable_tiling(self):
        self.use_tiling = True


def test_out_of_memory_splits_the_batch_then_tiles(monkeypatch, encoders):
    tokenizer, text_encoder, _ = encoders

    def fake_encode_videos(vae, videos, device, dtype):
        vae.sizes.append((len(videos), vae.use_tiling))
        if not vae.use_tiling and len(videos) > vae.fits:
            raise torch.OutOfMemoryError("CUDA out of memory")
        n = torch.tensor([float(v[0, 0, 0, 0]) for v in videos])
        return n[:, None], -n[:, None]

    monkeypatch.setattr(encode, "encode_videos", fake_encode_videos)
    monkeypatch.setattr(encode, "encode_prompts", lambda tok, te, texts, device: torch.zeros(len(texts), 2, 2))
    clips = [np.full((1, 1, 1, 3), i, np.uint8) for i in range(4)]
    split = Encoders(tokenizer, text_encoder, FakeVae(fits=2), "cuda:0", torch.bfloat16, batch=4)
    out = split.encode(clips, ["t"] * 4)
    assert [float(o["latent_mean"][0]) for o in out] == [0, 1, 2, 3]  # in order
    assert split.vae.sizes == [(4, False), (2, False), (2, False)] and split.batch == 2
    tiled = Encoders(tokenizer, text_encoder, FakeVae(fits=0), "cuda:0", torch.bfloat16, batch=2)
    out = tiled.encode(clips[:2], ["t"] * 2)
    assert [float(o["latent_mean"][0]) for o in out] == [0, 1] and tiled.vae.use_tiling
    assert tiled.vae.sizes == [(2, False), (1, False), (1, True), (1, True)]


def test_one_failing_clip_in_a_batch_fails_alone(tiny_model, tmp_path, monkeypatch):
    dataset = write_synthetic_dataset(tmp_path / "dataset", bad=False)
    real = encode.encode_videos

    def failing(vae, videos, device, dtype):  # case2_0 (the only clip with a blue gradient) fails
        if any(v[..., 2].mean() > 50 for v in videos):
            raise RuntimeError("cuDNN failure")
        return real(vae, videos, device, dtype)

    monkeypatch.setattr(encode, "encode_videos", failing)
    summary = prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=tmp_path / "c", encode_batch=3,
                                    **SMALL))
    assert (summary.made, summary.failed) == (2, 1)
    assert summary.failures[0][0] == "case2_0" and "cuDNN failure" in summary.failures[0][2]


def test_bad_encode_batch_is_a_one_line_error(tiny_model, tmp_path, capsys):
    from ophora.cli import main

    code = main(["prepare", str(tmp_path), "--model", str(tiny_model), "--out", str(tmp_path / "c"),
                 "--encode-batch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--encode-batch must be at least 1, got 0" in err and "Traceback" not in err
