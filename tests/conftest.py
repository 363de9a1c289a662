"""Shared pytest fixtures: the real ONNX networks in ../shared/networks beside the repository."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "networks"


def shared_network_paths() -> list[Path]:
    """The shared .onnx files, sorted by name (empty list if the directory is missing)."""
    return sorted(SHARED.glob("*.onnx")) if SHARED.is_dir() else []


@pytest.fixture
def shared_dir() -> Path:
    """The directory of the shared ONNX networks (skips the test if it is missing)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared networks not found at {SHARED}")
    return SHARED


@pytest.fixture
def shared_networks(shared_dir) -> Path:
    """Alias of `shared_dir`."""
    return shared_dir


@pytest.fixture(scope="module")
def one_thread():
    """One BLAS and torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the LipSDP-family tests run many small matrices, which are much slower with threads on 2 busy cores."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(old)


def pytest_configure(config):
    # the suite runs many tiny tensor ops: one intra-op thread avoids oversubscribing the 2 CI cores
    import torch

    torch.set_num_threads(1)
