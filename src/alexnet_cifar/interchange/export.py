"""A trained model for other runtimes: ONNX and TorchScript.

Both files take one input and give one output:

* input ``input``: float32, shape (N, 3, 32, 32), N free: RGB images scaled to 0..255 and then
  normalised per channel with the seed's statistics, ``(x - mean) / std`` with
  ``augment.SEED_MEAN`` and ``augment.SEED_STD`` (what ``alexnet_cifar.augment.normalize``
  does);
* output ``probabilities``: float32, shape (N, num_classes), the softmax the Keras model ends in.

ONNX files use opset 18 (the exporter's own; at least 17 as asked), carry the class names and
the normalisation in their metadata, and need ``pip install 'alexnet-cifar[export]'`` (onnx and
onnxscript to write, onnxruntime to check).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..augment import SEED_MEAN, SEED_STD
from ..errors import ExportError
from ..files import atomic_write_bytes, refuse_run_file
from ..models import probabilities

__all__ = [
    "ExportError",
    "ProbabilityModel",
    "check_onnx",
    "check_torchscript",
    "example_input",
    "export_onnx",
    "export_torchscript",
    "onnxruntime_available",
]

ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
INSTALL_HINT = "pip install 'alexnet-cifar[export]'"


class ProbabilityModel(nn.Module):
    """The trained model followed by softmax: normalised NCHW images -> class probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model(x))


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"ONNX export needs the {module} package: {INSTALL_HINT}") from e


@contextlib.contextmanager
def _quiet():
    """The exporters talk a lot (progress lines, deprecations, torchvision notes): hush them."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)


def export_onnx(model: nn.Module, path: str | Path, classes: list[str] | None = None) -> Path:
    """Write ``model`` (softmax output, dynamic batch) as ONNX; returns the path."""
    _require("onnxscript")
    onnx = _require("onnx")
    refuse_run_file(Path(path), "an ONNX file")
    path = Path(path)
    wrapped = ProbabilityModel(model.cpu().float().eval()).eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                wrapped,
                (example_input(model),),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
            )
            proto = program.model_proto
    except Exception as e:  # the exporter raises many kinds; none is the user's mistake
        raise ExportError(f"the ONNX exporter failed: {type(e).__name__}: {e}") from e
    meta = {
        "model": model.config.name,
        "model_config": json.dumps(model.config.to_dict()),
        "classes": json.dumps(list(classes) if classes else []),
        "input": "float32 (N, 3, 32, 32): RGB 0..255, (x - mean) / std per channel",
        "mean": json.dumps(list(SEED_MEAN)),
        "std": json.dumps(list(SEED_STD)),
        "output": "float32 (N, num_classes): softmax probabilities",
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = f"alexnet-cifar {model.config.name}: normalised NCHW images -> probabilities"
    atomic_write_bytes(path, proto.SerializeToString(), what="the ONNX file")
    onnx.checker.check_model(str(path))
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (softmax output, any batch size) as a traced TorchScript file."""
    refuse_run_file(Path(path), "a TorchScript file")
    path = Path(path)
    wrapped = ProbabilityModel(model.cpu().float().eval()).eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapped, example_input(model))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    atomic_write_bytes(path, buf.getvalue(), what="the TorchScript file")
    return path


def check_onnx(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max absolute difference between onnxruntime's and PyTorch's probabilities on ``x``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        want = ProbabilityModel(model.cpu().float().eval())(x).numpy()
    return float(np.abs(got - want).max())


def check_torchscript(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), _quiet():  # torch.jit.load warns that it is deprecated
        loaded = torch.jit.load(str(path), map_location="cpu")
        got = loaded(x)
        want = ProbabilityModel(model.cpu().float().eval())(x)
    return float((got - want).abs().max())
