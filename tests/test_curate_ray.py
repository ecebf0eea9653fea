"""The Ray engine gives the same dataset as the local pool (on a local Ray started by the test)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from ophora.curate.pipeline import CurateConfig, curate
from ophora.synthetic.narrated_videos import make_narrated_videos

ray = pytest.importorskip("ray", reason="the Ray engine needs the extra ophora[ray]")


def test_ray_engine_matches_local(tmp_path):
    samples = make_narrated_videos(tmp_path / "samples")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("cataract_c", "lowres_d"):
        for path in samples.glob(f"{name}.*"):
            shutil.copy(path, src)
    local = curate(CurateConfig(input=src, out=tmp_path / "local", workers=1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = curate(CurateConfig(input=src, out=tmp_path / "ray", engine="ray"))
    finally:
        ray.shutdown()
    assert remote["clips"] == local["clips"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "local" / "manifest.parquet"))
    for clip in (tmp_path / "local" / "clips").iterdir():
        assert (tmp_path / "ray" / "clips" / clip.name).read_bytes() == clip.read_bytes()
