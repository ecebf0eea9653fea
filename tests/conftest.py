"""Shared fixtures: one tiny random CogVideoX pipeline per test session, and the real-data folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random CogVideoX pipeline in the diffusers layout (written once per session)."""
    from ophora.synthetic.random_pipeline import make_random_model

    return make_random_model(tmp_path_factory.mktemp("tiny-model"))


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to `count` inside the block, restored after: one thread is the float reduction
    order of subprocesses run with OMP_NUM_THREADS=1, and several times faster than two threads on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """The test runs with one torch thread (`torch_threads`)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def narrated_videos(tmp_path_factory) -> Path:
    """`make_narrated_videos`' folder, written once per session (read it; copy what a test changes)."""
    from ophora.synthetic.narrated_videos import make_narrated_videos

    return make_narrated_videos(tmp_path_factory.mktemp("narrated-videos"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real, or a skip when this checkout has no shared folder beside it."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (needs ../shared beside the checkout)")
    return REAL_DATA


def pytest_collection_modifyitems(config, items):
    slow_ok = os.environ.get("OPHORA_SLOW") == "1"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    for item in items:
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow test: set OPHORA_SLOW=1 to run it"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture
def with_fake_fa4(monkeypatch):
    """FlashAttention-4's kernels replaced by the CPU stand-in of fa4_standin.py, and FA4 reported runnable anywhere."""
    from fa4_standin import STANDIN

    from ophora.core import attention, fa4

    monkeypatch.setitem(fa4._FA4, "interface", STANDIN)
    monkeypatch.setattr(attention, "fa4_unavailable", lambda device: None)
