"""A trained model for other runtimes: ONNX and TorchScript.

Both files take one input and give one output:

* input ``input``: float32, shape (N, 3, 32, 32), N free: RGB images scaled to 0..255 and then
  normalised per channel with the seed's statistics, ``(x - mean) / std``, mean
  (125.307, 122.95, 113.865), std (62.9932, 62.0887, 66.7048) (what
  ``alexnet_cifar.augment.normalize`` does);
* output ``probabilities``: float32, shape (N, num_classes), the softmax the Keras model ends in.

ONNX files use opset 18 (the exporter's own; at least 17 as asked), carry the class names and
the normalisation in their metadata, and need ``pip install 'alexnet-cifar[export]'`` (onnx and
onnxscript to write, onnxruntime to check).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import SEED_MEAN, SEED_STD

__all__ = [
    "ExportError",
    "ProbabilityModel",
    "add_parsers",
    "check_onnx",
    "export_onnx",
    "export_torchscript",
]

ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
INSTALL_HINT = "pip install 'alexnet-cifar[export]'"


class ExportError(RuntimeError):
    """An export that cannot be done here (a missing optional package, an exporter failure)."""


class ProbabilityModel(nn.Module):
    """The trained model followed by softmax: normalised NCHW images -> class probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def _require(module: str):
    import importlib

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


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)


def export_onnx(model: nn.Module, path: str | Path, classes: list[str] | None = None) -> Path:
    """Write ``model`` (softmax output, dynamic batch) as ONNX; returns the path."""
    _require("onnxscript")
    onnx = _require("onnx")
    from .checkpoint import atomic_write_bytes

    path = Path(path)
    wrapped = ProbabilityModel(model.cpu().float().eval()).eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                wrapped,
                (_example(model),),
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
    atomic_write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path))
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (softmax output, any batch size) as a traced TorchScript file."""
    from .checkpoint import atomic_write

    path = Path(path)
    wrapped = ProbabilityModel(model.cpu().float().eval()).eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapped, _example(model))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
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
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad(), _quiet():
        got = loaded(x)
        want = ProbabilityModel(model.cpu().float().eval())(x)
    return float((got - want).abs().max())


# ---------------------------------------------------------------------- command


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as ONNX or TorchScript",
        description="Write a trained model for another runtime. Input 'input': float32 "
        "(N, 3, 32, 32), RGB on 0..255 normalised per channel with mean (125.307, 122.95, "
        "113.865) and std (62.9932, 62.0887, 66.7048); output 'probabilities': float32 "
        "(N, classes), softmax. The batch size N is free. ONNX needs "
        f"{INSTALL_HINT}.",
    )
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint or model.pt")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the file on random inputs against PyTorch",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    import importlib.util

    from .checkpoint import read_state
    from .cli import UserError
    from .evaluate import load_model, resolve_weights_file
    from .predict import class_names

    model = load_model(args.path)
    meta = read_state(resolve_weights_file(args.path)).get("meta") or {}
    classes = class_names(args.path, model.config.num_classes, meta)
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name")
    if not args.out.parent.exists():
        raise UserError(f"the folder of --out {args.out} does not exist")
    try:
        if args.format == "onnx":
            export_onnx(model, args.out, classes)
        else:
            export_torchscript(model, args.out)
    except ExportError as e:
        raise UserError(str(e)) from None
    size = args.out.stat().st_size / 1e6
    line = f"wrote {model.config.name} as {args.format} to {args.out} ({size:.1f} MB)"
    if not args.no_check:
        x = _example(model, 8)
        if args.format == "torchscript":
            line += f"; max |difference| to PyTorch {check_torchscript(args.out, model, x):.2e}"
        elif importlib.util.find_spec("onnxruntime") is not None:
            line += f"; max |difference| to PyTorch {check_onnx(args.out, model, x):.2e}"
        else:
            line += "; onnxruntime is not installed, so the file was not run"
    print(line)
    return 0
