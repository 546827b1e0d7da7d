"""Shared fixtures. Tests that need the real CIFAR-10 read it from $CIFAR10_DIR.

In CI (CI=true) a missing data set fails those tests loudly; on a developer's machine without
the data they are skipped with the reason.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
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


def write_binary_folder(root: Path, n_per_file: int = 20, seed: int = 0, names=None) -> dict:
    """A small CIFAR-10 binary folder (same layout, fewer records); returns what it holds."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    held = {}
    for name in names or [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n_per_file, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels], axis=1)
        (folder / name).write_bytes(records.tobytes())
        held[name] = (labels.astype(np.int64), pixels)
    return held


# ---------------------------------------------------------------------- small training runs


def train_options(out, **kw):
    """A tiny real run: alexnet_thinner_4, 160 images, 3 epochs of 5 steps."""
    from alexnet_cifar.recipe import Recipe
    from alexnet_cifar.train import TrainOptions

    base = dict(
        model="alexnet_thinner_4",
        out=out,
        recipe=Recipe(epochs=3, batch_size=32),
        seed=5,
        limit_train=160,
        limit_test=100,
        device="cpu",
        quiet=True,
        progress=False,
    )
    base.update(kw)
    return TrainOptions(**base)


def interrupt_at(epoch, step, sig=signal.SIGINT):
    """An on_step hook that sends ``sig`` to this process after (epoch, step)."""

    def hook(trainer, e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), sig)

    return hook


@pytest.fixture(scope="session")
def reference_run(cifar10, tmp_path_factory):
    from alexnet_cifar.train import train

    out = tmp_path_factory.mktemp("ref") / "run"
    train(train_options(out), data=cifar10)
    return out
