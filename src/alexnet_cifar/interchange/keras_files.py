"""Keras weight files as they are on disk: every layer's arrays, in the model's order.

Files read:

* a Keras 2 ``model.save('x.h5')`` or ``save_weights('x.h5')`` file, and the legacy ``.h5`` that
  Keras 3 writes with ``model.save('x.h5')``: the layer order is the ``layer_names`` attribute
  (creation order; HDF5 lists groups alphabetically, where ``conv2d_10`` sorts before
  ``conv2d_2``), each layer's weights are named by its ``weight_names`` attribute;
* a Keras 3 ``.weights.h5`` (``model.save_weights``) and the weights inside a ``.keras`` archive:
  ``layers/<class>[_<n>]/vars/0, 1, ...``, where ``<n>`` counts the layers of one class in the
  model's order, so the order of the convolutions among themselves, and of the dense layers among
  themselves, is exact.

Nothing here knows this package's models: ``keras_io`` maps what is read onto them.

A file says how large its arrays are before anything is read: :func:`open_keras_weights`
gives the layers with their arrays still on disk (shape and dtype known, nothing read), so a
caller can refuse a file whose shapes cannot fit before allocating anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KerasFileError

__all__ = ["KerasLayer", "KerasWeights", "open_keras_weights", "read_keras_weights"]

_NESTED = ("layers", "_layer_checkpoint_dependencies")


@dataclass
class KerasLayer:
    """One Keras layer with weights: its name and its arrays in Keras' order (kernel, bias).

    The arrays are NumPy arrays, or (inside :func:`open_keras_weights`) the file's datasets,
    which have a shape and a dtype but are read only when asked for.
    """

    name: str
    arrays: list

    @property
    def kind(self) -> str:
        nd = self.arrays[0].ndim if self.arrays else 0
        return {4: "Conv2D", 2: "Dense"}.get(nd, f"{nd}-D")

    def describe(self) -> str:
        shapes = ", ".join(str(tuple(a.shape)) for a in self.arrays)
        return f"Keras layer {self.name!r} ({self.kind}, weights {shapes})"


@dataclass
class KerasWeights:
    path: Path
    format: str  # "keras2-h5", "keras3-legacy-h5", "keras3-weights-h5", "keras3-archive"
    layers: list[KerasLayer]  # the layers that hold weights, in the model's order
    keras_version: str | None = None
    backend: str | None = None
    flatten_order: str = "HWC"  # order of the first dense layer's input rows
    ordered: bool = True  # False where only each class's own order is known (.weights.h5)

    def __post_init__(self) -> None:
        for layer in self.layers:
            if len(layer.arrays) == 2 and layer.arrays[0].ndim == 1 and layer.arrays[1].ndim > 1:
                layer.arrays.reverse()  # a writer that listed the bias first

    @property
    def kernel_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(layer.arrays[0].shape) for layer in self.layers if layer.arrays]


# ---------------------------------------------------------------------- reading


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes | np.bytes_) else str(v)


def _attr_list(obj, key: str) -> list[str]:
    """A list-valued attribute, also when Keras split it into ``key0``, ``key1``, ... chunks."""
    if key in obj.attrs:
        chunks = [obj.attrs[key]]
    else:
        chunks, i = [], 0
        while f"{key}{i}" in obj.attrs:
            chunks.append(obj.attrs[f"{key}{i}"])
            i += 1
    out: list[str] = []
    for chunk in chunks:
        values = chunk.tolist() if isinstance(chunk, np.ndarray) else chunk
        if isinstance(values, str | bytes):
            values = [values]
        out.extend(_text(v) for v in values)
    return out


def _attr_text(obj, key: str) -> str | None:
    return _text(obj.attrs[key]) if key in obj.attrs else None


def _read_legacy(group, what: str) -> list[KerasLayer]:
    """Layers in ``layer_names`` order; a nested model's weights split by their layer prefix."""
    layers: list[KerasLayer] = []
    for lname in _attr_list(group, "layer_names"):
        if lname not in group:
            raise KerasFileError(f"{what}: layer {lname!r} is listed but has no group")
        g = group[lname]
        current: KerasLayer | None = None
        for wname in _attr_list(g, "weight_names"):
            if wname not in g:
                raise KerasFileError(f"{what}: weight {wname!r} of layer {lname!r} is missing")
            owner = wname.rsplit("/", 1)[0] if "/" in wname else lname
            if current is None or current.name != owner:
                current = KerasLayer(owner, [])
                layers.append(current)
            current.arrays.append(_dataset(g[wname], f"{what}: weight {wname!r}"))
    return layers


def _dataset(obj, what: str):
    """An HDF5 dataset of floating-point weights, unread; anything else is refused."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise KerasFileError(f"{what} is not an array")
    if np.dtype(obj.dtype).kind != "f":
        raise KerasFileError(
            f"{what} holds {obj.dtype} values, not floating-point weights: not a Keras weight file"
        )
    return obj


def _natural(key: str):
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return (m.group(1), int(m.group(2)) if m.group(2) else -1, key)


def _read_new(root, prefix: str = "") -> list[KerasLayer]:
    """Keras 3 ``layers/<class>[_<n>]/vars/<i>``, nested models included, in class order."""
    layers: list[KerasLayer] = []
    for key in sorted(root.keys(), key=_natural):
        sub = root[key]
        if not hasattr(sub, "keys"):
            continue
        if "vars" in sub and hasattr(sub["vars"], "keys"):
            v = sub["vars"]
            names = sorted((k for k in v.keys() if k.isdigit()), key=int)
            if names:
                label = _attr_text(v, "name") or prefix + key
                arrays = [_dataset(v[k], f"{label}/vars/{k}") for k in names]
                layers.append(KerasLayer(label, arrays))
        for nested in _NESTED:
            if nested in sub:
                layers += _read_new(sub[nested], prefix + key + "/")
    return layers


def _config_layers(config) -> list[dict]:
    """Every layer dict of a Keras model config, depth first, in order."""
    out: list[dict] = []
    if isinstance(config, dict):
        inner = config.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else inner
        if isinstance(layers, list):
            for layer in layers:
                if isinstance(layer, dict):
                    out.append(layer)
                    out += _config_layers(layer)
    return out


def _flatten_order(model_config: str | bytes | None) -> str:
    """'CHW' when the map reaching ``Flatten`` is channels-first and Flatten does not undo it."""
    if not model_config:
        return "HWC"
    try:
        config = json.loads(_text(model_config))
    except (ValueError, TypeError):
        return "HWC"
    layout = "channels_last"
    for layer in _config_layers(config):
        cls, cfg = layer.get("class_name"), layer.get("config") or {}
        if not isinstance(cfg, dict):
            continue
        if cls == "Flatten":
            flatten_format = cfg.get("data_format") or "channels_last"
            if layout == "channels_first" and flatten_format != "channels_first":
                return "CHW"
            return "HWC"
        if cfg.get("data_format") in ("channels_first", "channels_last"):
            layout = cfg["data_format"]
    return "HWC"


@contextlib.contextmanager
def open_keras_weights(path: str | Path) -> Iterator[KerasWeights]:
    """The weighted layers of a Keras ``.h5``, ``.weights.h5`` or ``.keras`` file, in order,
    with their arrays unread (datasets of floating-point values) while the file is open."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise KerasFileError(f"no Keras file at {path}")
    if zipfile.is_zipfile(path):
        data, config = _archive_parts(path)
        with h5py.File(io.BytesIO(data), "r") as f:
            weights = _read_new_file(f, path, "keras3-archive")
            weights.flatten_order = _flatten_order(config)
            yield weights
        return
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise KerasFileError(
            f"{path} is not an HDF5 file (.h5) or a .keras archive that Keras writes ({e})"
        ) from e
    with f:
        yield _read_h5(f, path)


def read_keras_weights(path: str | Path) -> KerasWeights:
    """:func:`open_keras_weights` with every array read."""
    with open_keras_weights(path) as weights:
        for layer in weights.layers:
            layer.arrays = [np.asarray(a) for a in layer.arrays]
        return weights


def _archive_parts(path: Path) -> tuple[bytes, bytes | None]:
    """The weights file and the model config inside a ``.keras`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                raise KerasFileError(f"{path} is a zip archive without model.weights.h5")
            data = z.read("model.weights.h5")
            config = z.read("config.json") if "config.json" in names else None
    except zipfile.BadZipFile as e:
        raise KerasFileError(f"{path} is a damaged .keras archive: {e}") from e
    return data, config


def _read_h5(f, path: Path) -> KerasWeights:
    what = str(path)
    if "model_weights" in f or "layer_names" in f.attrs or "layer_names0" in f.attrs:
        group = f["model_weights"] if "model_weights" in f else f
        version = _attr_text(group, "keras_version") or _attr_text(f, "keras_version")
        fmt = "keras3-legacy-h5" if version and version.startswith("3") else "keras2-h5"
        try:
            layers = _read_legacy(group, what)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, KerasFileError):
                raise
            raise KerasFileError(f"{what}: unreadable Keras weights ({e})") from e
        return KerasWeights(
            path,
            fmt,
            layers,
            keras_version=version,
            backend=_attr_text(group, "backend") or _attr_text(f, "backend"),
            flatten_order=_flatten_order(f.attrs.get("model_config")),
        )
    if any(n in f for n in _NESTED):
        return _read_new_file(f, path, "keras3-weights-h5")
    raise KerasFileError(
        f"{path} is an HDF5 file but not one Keras writes: it has no model_weights group, "
        "no layer_names attribute and no layers group"
    )


def _read_new_file(f, path: Path, fmt: str) -> KerasWeights:
    root = next(f[n] for n in _NESTED if n in f)
    return KerasWeights(path, fmt, _read_new(root), ordered=False)
