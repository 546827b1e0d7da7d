"""Shared fixtures (plain helpers are in helpers.py). Tests that need the real CIFAR-10 read it
from $CIFAR10_DIR.

In CI (CI=true) a missing data set fails those tests loudly; on a developer's machine without
the data they are skipped with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _real_dir() -> Path | None:
    env = os.environ.get("CIFAR10_DIR")
    if not env:
        return None
    p = Path(env).expanduser().resolve()
    if (p / "cifar-10-batches-bin" / "data_batch_1.bin").is_file() or (
        p / "cifar-10-batches-py" / "data_batch_1"
    ).is_file():
        return p
    return None


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    p = _real_dir()
    if p is None:
        msg = (
            "the real CIFAR-10 is needed: set CIFAR10_DIR to the folder holding "
            f"cifar-10-batches-bin (CIFAR10_DIR={os.environ.get('CIFAR10_DIR')!r})"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def cifar10(cifar10_dir):
    from alexnet_cifar import load_cifar10

    return load_cifar10(cifar10_dir, verify=True)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    # Keep any cache a test might touch inside its own temp folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def reference_run(cifar10, tmp_path_factory):
    from alexnet_cifar.training.trainer import train

    from .helpers import train_options

    out = tmp_path_factory.mktemp("ref") / "run"
    train(train_options(out), data=cifar10)
    return out


@pytest.fixture
def interrupted_run(cifar10, tmp_path):
    """A run stopped in epoch 2: checkpoint.pt mid-epoch, checkpoint.prev.pt at epoch 1's end."""
    from alexnet_cifar.training.checkpoint import read_state
    from alexnet_cifar.training.trainer import TrainingInterrupted, train

    from .helpers import interrupt_at, train_options

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out), data=cifar10, on_step=interrupt_at(1, 2))
    assert read_state(out / "checkpoint.pt")["step"] == 3
    assert read_state(out / "checkpoint.prev.pt")["epoch"] == 1
    return out


@pytest.fixture(scope="module")
def tiny_model():
    """A confident model of the TINY construction, for tests of the commands that use one."""
    from .helpers import TINY, confident_model

    return confident_model(TINY, seed=11)


@pytest.fixture
def tiny_run(tmp_path, tiny_model):
    """A run folder holding tiny_model, as far as the commands that use a model look."""
    from .helpers import make_run

    return make_run(tmp_path / "run", tiny_model)


def pytest_collection_modifyitems(items):
    """Every test that opens a page in headless Chromium (the ``chromium`` fixture) carries
    the marker ``chromium``: ``make test`` counts them when the browser is missing."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chromium)
