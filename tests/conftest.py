"""Shared fixtures: the offline data folder beside the project, a per-run cache, small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests share one cache folder inside the checkout (git-ignored) so that expensive artefacts
# (the default scenario's trained weights, latency tables) are built once per machine.
os.environ.setdefault("PRUNING_ENV_CACHE", str(ROOT / ".cache" / "tests"))
os.environ.setdefault("PRUNING_ENV_OFFLINE", "1")


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the project root (or ``$PRUNING_ENV_SHARED_DATA``), if present."""
    env = os.environ.get("PRUNING_ENV_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if (path / "cifar10").is_dir() else None


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models run several times faster than on two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """The embedded digits dataset (train / val / test splits)."""
    from pruning_env.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("offline CIFAR-10 copy not found (../shared/data or $PRUNING_ENV_SHARED_DATA)")
    return path
