"""The Ray engine gives the same dataset as the local pool (on a local Ray started by the test)."""

from __future__ import annotations

import pandas as pd
import pytest

from ophora.curate.pipeline import CurateConfig, curate
from ophora.synthetic.narrated_videos import narrated_plan, write_narrated_video

ray = pytest.importorskip("ray", reason="the Ray engine needs the extra ophora[ray]")


def test_ray_engine_matches_local(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for n, video in enumerate(narrated_plan()):  # two of make_narrated_videos' videos, as it writes them
        if video.stem in ("cataract_c", "lowres_d"):
            write_narrated_video(video, src, 15.0, seed=10 * n)
    local = curate(CurateConfig(input=src, out=tmp_path / "local", workers=1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = curate(CurateConfig(input=src, out=tmp_path / "ray", engine="ray"))
    finally:
        ray.shutdown()
    assert local["clips"]["kept"] > 0 and remote["clips"] == local["clips"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "local" / "manifest.parquet"))
    for clip in (tmp_path / "local" / "clips").iterdir():
        assert (tmp_path / "ray" / "clips" / clip.name).read_bytes() == clip.read_bytes()
