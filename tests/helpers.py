"""Helpers shared by several test files: small runs, the command line, data and model files.

Fixtures live in conftest.py; plain functions and constants live here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from alexnet_cifar import build_model
from alexnet_cifar.augment import normalize
from alexnet_cifar.cli import main
from alexnet_cifar.data import CLASSES
from alexnet_cifar.models import AlexNet, AlexNetConfig
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.checkpoint import save_model_file
from alexnet_cifar.training.trainer import TrainOptions

# ---------------------------------------------------------------------- the command line


def run_main(*args, env=None) -> subprocess.CompletedProcess:
    """The command in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_cli(*args, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter, as a user runs it."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "alexnet_cifar", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        **kw,
    )


# ---------------------------------------------------------------------- small training runs


def train_options(out, **kw):
    """A tiny real run: alexnet_thinner_4, 160 images, 3 epochs of 5 steps."""
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
        checkpoint_every=0,  # a checkpoint each epoch: what the interruption tests look for
    )
    base.update(kw)
    return TrainOptions(**base)


# The CLI form of train_options (the reference run's settings).
REF_ARGS = [
    "alexnet_thinner_4",
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--limit-train",
    "160",
    "--limit-test",
    "100",
    "--seed",
    "5",
    "--device",
    "cpu",
    "--no-progress",
    "--no-verify",
    "--checkpoint-every",
    "0",
]


def interrupt_at(epoch, step, sig=signal.SIGINT):
    """An on_step hook that sends ``sig`` to this process after (epoch, step)."""

    def hook(trainer, e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), sig)

    return hook


def metric_rows(out: Path) -> list[dict]:
    """metrics.csv of a run without its timing column: equal for equal computations."""
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------- data files


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


# ---------------------------------------------------------------------- models and run folders

# Not a preset: the smallest model of the same construction, for tests of the plumbing around it.
TINY = AlexNetConfig("tiny", stem="slim", widths=(8, 8, 8, 8, 8), dense=(32, 32))


def confident_model(name: str | AlexNetConfig, seed: int = 0) -> AlexNet:
    """Random weights and biases, the last layer set so that its logits on random inputs are
    centred and spread (std 4): confident predictions that differ from input to input, so a
    wrong computation cannot hide in near-uniform probabilities."""
    torch.manual_seed(seed)
    model = (AlexNet(name) if isinstance(name, AlexNetConfig) else build_model(name)).eval()
    with torch.no_grad():
        for layer in model.convs() + model.denses():
            layer.bias.normal_(0.0, 0.05)
        side = model.config.image_size
        x = torch.randn(16, 3, side, side)
        h = model.layers[:-1](x).double()
        fc3 = model.layers.fc3
        logits = h @ fc3.weight.double().T
        scale = 4.0 / logits.std(0).mean()
        fc3.weight.mul_(scale.float())
        fc3.bias.copy_(-logits.mean(0) * scale)
    return model


def make_run(folder: Path, model: AlexNet, classes=None) -> Path:
    """A run folder as training leaves it, as far as the commands that use a model look."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_model_file(folder / "model.pt", model.config.to_dict(), state, {"model_name": "x"})
    classes = list(classes or CLASSES)
    result = {"model": model.config.name, "classes": classes}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def probs_of(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    """The model's softmax on uint8 pictures (N, H, W, C), normalised as training does."""
    with torch.no_grad():
        x = normalize(torch.from_numpy(np.ascontiguousarray(pixels_nhwc))).contiguous()
        return torch.softmax(model(x).double(), dim=1).numpy()
