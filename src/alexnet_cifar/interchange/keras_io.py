"""Keras weights in and out: the seed post's ``model.save('alexnet.h5')`` files become run folders.

Reading the files is ``keras_files``' job; here the layers read are mapped onto a preset.

Mapping, layer by layer in order, every shape checked:

* ``Conv2D`` kernel (kh, kw, in, out) -> weight (out, in, kh, kw); bias as is;
* ``Dense`` kernel (in, out) -> weight (out, in); bias as is. The first dense layer reads the
  flattened feature map. Keras flattens a channels-last map in (H, W, C) order and so does this
  package's model (``FlattenHWC``), so its kernel maps by the transpose alone. Only a model whose
  convolutions run channels-first and whose ``Flatten`` does not say so flattens (C, H, W); when
  the file's model config says that, the rows are reordered to (H, W, C).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..data import CLASSES
from ..errors import KerasFileError, param
from ..files import CHECKPOINT, MODEL_FILE, atomic_write_bytes, refuse_run_file
from ..models import (
    KERAS_LAYER_KINDS,
    PRESETS,
    AlexNet,
    AlexNetConfig,
    final_map,
    get_config,
    meta_model,
)
from ..provenance import code_source
from ..training.checkpoint import save_model_file
from ..training.runlog import write_config_file, write_result_file
from .keras_files import KerasLayer, KerasWeights, open_keras_weights, read_keras_weights

__all__ = [
    "KerasFileError",
    "KerasLayer",
    "KerasWeights",
    "export_keras_weights",
    "import_keras",
    "keras_to_state_dict",
    "matching_presets",
    "read_keras_weights",
]

# ---------------------------------------------------------------------- mapping


def _keras_shapes(config: AlexNetConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(our layer name, the Keras kernel shape it takes), in order."""
    out = []
    for name, layer in meta_model(config).layers.named_children():
        if isinstance(layer, torch.nn.Conv2d):
            o, i, kh, kw = layer.weight.shape
            out.append((name, (kh, kw, i, o)))
        elif isinstance(layer, torch.nn.Linear):
            o, i = layer.weight.shape
            out.append((name, (i, o)))
    return out


def _num_classes(weights: KerasWeights) -> int:
    dense = [s for s in weights.kernel_shapes if len(s) == 2]
    return dense[-1][1] if dense and dense[-1][1] >= 2 else 10


def matching_presets(weights: KerasWeights) -> list[str]:
    """The presets whose every kernel shape the file's layers have, in order."""
    shapes = _in_model_order(weights)
    n = _num_classes(weights)
    return [
        name
        for name in PRESETS
        if [s for _, s in _keras_shapes(get_config(name, n))] == [tuple(s) for s in shapes]
    ]


def _in_model_order(weights: KerasWeights) -> list[tuple[int, ...]]:
    layers = _ordered_layers(weights)
    return [tuple(layer.arrays[0].shape) for layer in layers]


def _ordered_layers(weights: KerasWeights) -> list[KerasLayer]:
    # The seed's models are all convolutions, then all dense layers. Files that only know each
    # class's own order (.weights.h5) are put in that order; ordered files must already be in it.
    convs = [x for x in weights.layers if x.arrays and x.arrays[0].ndim == 4]
    denses = [x for x in weights.layers if x.arrays and x.arrays[0].ndim == 2]
    return convs + denses


def _looks_like(weights: KerasWeights, model_name: str | None) -> str:
    matches = [m for m in matching_presets(weights) if m != model_name]
    if matches:
        return (
            f" The file looks like {' or '.join(matches)}: import it with "
            f"{param('model', matches[0])}."
        )
    return " The file matches none of the presets (see 'alexnet-cifar models')."


def keras_to_state_dict(weights: KerasWeights, config: AlexNetConfig) -> dict[str, torch.Tensor]:
    """Our state dict from the Keras layers, every shape checked; raises KerasFileError."""
    name = config.name
    for layer in weights.layers:
        ok = (
            len(layer.arrays) == 2
            and layer.arrays[0].ndim in (2, 4)
            and layer.arrays[1].ndim == 1
            and layer.arrays[1].shape[0] == layer.arrays[0].shape[-1]
        )
        if not ok:
            raise KerasFileError(
                f"{layer.describe()} is not a Conv2D or Dense layer with a kernel and a bias; "
                "the seed's models have only those."
            )
    if weights.ordered:
        kinds = [layer.arrays[0].ndim for layer in weights.layers]
        if 2 in kinds and 4 in kinds[kinds.index(2) :]:
            late = weights.layers[kinds.index(4, kinds.index(2))]
            raise KerasFileError(
                f"{late.describe()} comes after a dense layer; in the seed's models every "
                "convolution comes before the dense head."
            )
    layers = _ordered_layers(weights)
    expected = _keras_shapes(config)
    n_conv = sum(len(s) == 4 for _, s in expected)
    got_conv = sum(x.arrays[0].ndim == 4 for x in layers)
    if (got_conv, len(layers) - got_conv) != (n_conv, len(expected) - n_conv):
        raise KerasFileError(
            f"{weights.path} has {got_conv} Conv2D and {len(layers) - got_conv} Dense layers "
            f"with weights; {name} has {n_conv} and {len(expected) - n_conv}."
            + _looks_like(weights, name)
        )
    # Every declared shape is checked before any array is read: a file that cannot fit is
    # refused without allocating what it declares.
    for layer, (ours, shape) in zip(layers, expected):
        kernel_shape = tuple(layer.arrays[0].shape)
        if kernel_shape != shape:
            torch_shape = (*shape[3:1:-1], *shape[:2]) if len(shape) == 4 else shape[::-1]
            raise KerasFileError(
                f"{layer.describe()} does not fit {name}'s {ours}: it has a kernel "
                f"{kernel_shape}, {ours} needs {shape} (Keras layout; {tuple(torch_shape)} "
                f"in PyTorch).{_looks_like(weights, name)}"
            )
    state: dict[str, torch.Tensor] = {}
    for layer, (ours, _shape) in zip(layers, expected):
        kernel, bias = (np.asarray(a, dtype=np.float32) for a in layer.arrays)
        if kernel.ndim == 4:
            weight = kernel.transpose(3, 2, 0, 1)
        else:
            if ours == "fc1" and weights.flatten_order == "CHW":
                kernel = _chw_rows_to_hwc(kernel, config)
            weight = kernel.T
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise KerasFileError(f"{layer.describe()} holds NaN or infinite values")
        state[f"layers.{ours}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"layers.{ours}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return state


def _chw_rows_to_hwc(kernel: np.ndarray, config: AlexNetConfig) -> np.ndarray:
    side, c = final_map(config)
    return kernel.reshape(c, side, side, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)


# ---------------------------------------------------------------------- run folders


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_keras(
    file: str | Path,
    out: str | Path,
    model_name: str | AlexNetConfig | None = None,
    *,
    force: bool = False,
    flatten: str = "auto",
) -> dict:
    """Read a Keras file, map it onto ``model_name`` (a preset's name or a shape; a preset
    found from the kernel shapes when None) and write a run folder (model.pt, config.json,
    result.json) at ``out``; returns result.json.

    ``flatten``: the order of the first dense layer's input rows, "hwc" (channels-last Keras
    models, the seed's), "chw" (convolutions channels-first, Flatten at its default), or "auto":
    from the file's model config where it has one, else "hwc".
    """
    file, out = Path(file), Path(out)
    if flatten not in ("auto", "hwc", "chw"):
        raise KerasFileError(f"{param('flatten')} must be auto, hwc or chw, not {flatten!r}")
    with open_keras_weights(file) as weights:  # shapes are checked before anything is read
        model_name, config, state, source = _map_file(weights, file, model_name, flatten)
    return _write_imported_run(file, out, model_name, config, state, source, force)


def _map_file(
    weights: KerasWeights, file: Path, model_name: str | AlexNetConfig | None, flatten: str
):
    """(variant, its config, our state dict, what to record of the source) for an open file."""
    if flatten != "auto":
        weights.flatten_order = flatten.upper()
    if not weights.layers:
        raise KerasFileError(f"{file} holds no layer weights")
    if model_name is None:
        matches = matching_presets(weights)
        if not matches:
            raise KerasFileError(
                f"{file} matches none of the presets (kernels {weights.kernel_shapes}); "
                "see 'alexnet-cifar models'"
            )
        # alexnet_slim and alexnet_slim_regular share every shape; the first is the plain one.
        model_name = matches[0]
    if isinstance(model_name, AlexNetConfig) and model_name.name in PRESETS:
        model_name = model_name.name  # a preset: its class count is the file's
    if isinstance(model_name, AlexNetConfig):
        config, model_name = model_name, model_name.name
    else:
        config = get_config(model_name, _num_classes(weights))
    _refuse_batch_norm(config)
    state = keras_to_state_dict(weights, config)
    source = {
        "file": str(file.resolve()),
        "sha256": _sha256(file),
        "format": weights.format,
        "keras_version": weights.keras_version,
        "backend": weights.backend,
        "flatten_order": weights.flatten_order,
        "layers": [layer.name for layer in _ordered_layers(weights)],
    }
    return model_name, config, state, source


def _write_imported_run(
    file: Path, out: Path, model_name: str, config: AlexNetConfig, state, source, force: bool
) -> dict:
    """model.pt, config.json and result.json of an imported model; returns result.json."""
    model = meta_model(config)  # every parameter comes from the file: skip the random init
    model.load_state_dict(state, strict=True, assign=True)
    if out.exists() and not out.is_dir():
        raise KerasFileError(f"{param('out')} {out} is a file, not a folder")
    if not force and any((out / n).exists() for n in (MODEL_FILE, CHECKPOINT)):
        raise KerasFileError(
            f"{out} already holds a model; choose another {param('out')} or pass "
            f"{param('force', True)} to replace it"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KerasFileError(
            f"cannot create the run folder {out}: {e.strerror or e}; choose a writable "
            f"{param('out')}"
        ) from None
    classes = list(CLASSES) if config.num_classes == len(CLASSES) else None
    classes = classes or [str(i) for i in range(config.num_classes)]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"model_name": model_name, "imported_from": "Keras", "source": source}
    save_model_file(out / MODEL_FILE, config.to_dict(), state, meta)
    config_json = {
        "model": model_name,
        "model_config": config.to_dict(),
        "num_classes": config.num_classes,
        "classes": classes,
        "imported_from": "Keras",
        "source": source,
        "versions": {"alexnet_cifar": __version__, "torch": torch.__version__},
        "code": code_source(),
    }
    write_config_file(out, config_json)
    result = {
        "model": model_name,
        "run_dir": str(out),
        "imported_from": "Keras",
        "source_file": str(file),
        "source_format": source["format"],
        "params": sum(p.numel() for p in model.parameters()),
        "model_file": str(out / MODEL_FILE),
        "classes": classes,
    }
    write_result_file(out, result)
    return result


# ---------------------------------------------------------------------- export to Keras


def _refuse_batch_norm(config: AlexNetConfig) -> None:
    """The seed's Keras models have no BatchNormalization layers to read or write."""
    if config.batch_norm:
        raise KerasFileError(
            f"{config.name} has batch_norm, which the seed's Keras models do not have: its "
            "weights cannot be read from or written for them (export it as ONNX or "
            "TorchScript instead)"
        )


def _snake(keras_class: str) -> str:
    """Keras' default layer name of a class: ``Conv2D`` -> ``conv2d``, ``MaxPooling2D`` ->
    ``max_pooling2d``."""
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", keras_class).lower()


def _keras_layer_plan(config: AlexNetConfig) -> list[tuple[str, str, str | None]]:
    """(Keras class path name, Keras layer name, our layer or None) for the seed's model."""
    counts: dict[str, int] = {}
    plan = [("input_layer", "input_layer", None)]
    for ours, layer in meta_model(config).layers.named_children():
        kind = _snake(KERAS_LAYER_KINDS[type(layer)])
        n = counts.get(kind, -1) + 1
        counts[kind] = n
        key = kind if n == 0 else f"{kind}_{n}"
        plan.append((key, key, ours if kind in ("conv2d", "dense") else None))
    return plan


def _keras_arrays(model: AlexNet, ours: str) -> tuple[np.ndarray, np.ndarray]:
    layer = getattr(model.layers, ours)
    w = layer.weight.detach().cpu().float().numpy()
    b = layer.bias.detach().cpu().float().numpy()
    kernel = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    return np.ascontiguousarray(kernel), np.ascontiguousarray(b)


def export_keras_weights(model: AlexNet, path: str | Path) -> str:
    """Write the weights for the seed's Keras model: ``.weights.h5`` in Keras 3's layout
    (``model.load_weights`` of Keras 3), any other ``.h5`` in Keras 2's ``save_weights`` layout
    (``model.load_weights`` of Keras 2 and 3). Returns the format written."""
    import h5py

    path = Path(path)
    refuse_run_file(path, "Keras weights")
    _refuse_batch_norm(model.config)
    plan = _keras_layer_plan(model.config)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        if path.name.endswith(".weights.h5"):
            fmt = "keras3-weights-h5"
            layers = f.create_group("layers")
            for key, _, ours in plan:
                g = layers.create_group(key).create_group("vars")
                g.attrs["name"] = key
                if ours is not None:
                    kernel, bias = _keras_arrays(model, ours)
                    g.create_dataset("0", data=kernel)
                    g.create_dataset("1", data=bias)
            f.create_group("vars").attrs["name"] = "functional"
        else:
            fmt = "keras2-h5"
            names = [name for _, name, _ in plan if name != "input_layer"]
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.2.4"
            for _, name, ours in plan[1:]:
                g = f.create_group(name)
                if ours is None:
                    g.attrs["weight_names"] = np.array([], dtype="S1")
                    continue
                kernel, bias = _keras_arrays(model, ours)
                wn = [f"{name}/kernel:0", f"{name}/bias:0"]
                g.attrs["weight_names"] = np.array([n.encode() for n in wn])
                g.create_dataset(wn[0], data=kernel)
                g.create_dataset(wn[1], data=bias)
    atomic_write_bytes(path, buf.getvalue(), what="the Keras weights file")
    return fmt
