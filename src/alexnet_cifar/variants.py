"""Variants as a user names them, and what a shape amounts to.

A variant is a preset, named (``alexnet_slim``), or any shape written as a JSON file: the object
``alexnet-cifar models --config NAME`` prints, one key per field of
:class:`~alexnet_cifar.models.AlexNetConfig`. In a file every field is required but ``name``
(default: the file's stem) and ``batch_norm`` (default false). A file whose name is a preset's
must hold that preset's shape, and then is that preset.

A run records its variant's whole shape (config.json's ``model_config``, the checkpoint's and
model.pt's too): a resume, a report and ``evaluate`` rebuild the model from that record, never
from the file. A shape that is not a preset is part of the run's identity
(:func:`shape_identity`), so a resume with a changed file is refused field by field.

The layer table (output shapes, parameters, MACs per layer) is computed from a shape alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SettingError, UnknownModelError, param
from .models import (
    KERAS_LAYER_KINDS,
    PRESETS,
    SHAPE_FIELDS,
    AlexNetConfig,
    Conv2dSame,
    Dense,
    config_of,
    fp32_mb,
    get_config,
    meta_model,
)

__all__ = [
    "FILE_REQUIRED",
    "LayerRow",
    "LayerTable",
    "check_images",
    "custom_shape",
    "is_variant_file",
    "layer_table",
    "load_variant_file",
    "recorded_identity",
    "recorded_variant",
    "resolve_variant",
    "shape_differences",
    "shape_identity",
    "shape_json",
    "variant_list",
    "variant_order",
]

#: The fields a variant file must hold (``name`` and ``batch_norm`` have defaults).
FILE_REQUIRED = tuple(k for k in SHAPE_FIELDS if k not in ("name", "batch_norm"))
#: A variant's name names its run folder: letters, digits and ``_ - .``, not starting with a dot.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_FILE_HINT = "or a JSON file of a model's shape ('alexnet-cifar models --config NAME' prints one)"


def shape_json(config: AlexNetConfig) -> str:
    """The shape as the JSON a variant file holds: every field, by name, one a line."""
    fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in config.to_dict().items()]
    return "{\n" + ",\n".join(fields) + "\n}\n"


def shape_differences(a: AlexNetConfig, b: AlexNetConfig) -> list[str]:
    """The fields of the shape (its name aside) in which ``a`` and ``b`` differ."""
    return [k for k in SHAPE_FIELDS if k != "name" and getattr(a, k) != getattr(b, k)]


def _differ_text(a: AlexNetConfig, b: AlexNetConfig) -> str:
    return ", ".join(
        f"{k} {_shown(getattr(a, k))} instead of {_shown(getattr(b, k))}"
        for k in shape_differences(a, b)
    )


def _shown(v) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def _checked_name(
    config: AlexNetConfig, where: str, num_classes: int | None = None, named="the field 'name'"
) -> AlexNetConfig:
    """The preset ``config`` is when its name is a preset's (its shape must be that preset's),
    else ``config`` itself; a name that cannot name a run folder is refused."""
    name = config.name
    if name == "all" or not _NAME.fullmatch(name):
        what = "stands for the five presets" if name == "all" else "cannot name a run folder"
        raise SettingError(
            f"{where}: {named} is {name!r}, which {what}: give a 'name' of letters, digits, "
            "'_', '-' and '.'"
        )
    if name not in PRESETS:
        return config
    preset = get_config(name, config.num_classes if num_classes is None else num_classes)
    if preset != config:
        raise SettingError(
            f"{where}: {named} is the preset {name!r}, but the shape differs from it "
            f"({_differ_text(config, preset)}): give the variant a 'name' of its own"
        )
    return preset


def load_variant_file(path: str | os.PathLike) -> AlexNetConfig:
    """The variant a JSON file describes; anything wrong is one SettingError naming the file
    and the field."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SettingError(f"{path} does not exist: give a preset's name {_FILE_HINT}") from None
    except IsADirectoryError:
        raise SettingError(f"{path} is a folder, not a JSON file of a model's shape") from None
    except OSError as e:
        raise SettingError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise SettingError(
            f"{path} is not JSON ({e}); a variant file is the JSON object "
            "'alexnet-cifar models --config NAME' prints"
        ) from None
    if not isinstance(data, dict):
        raise SettingError(
            f"{path} holds a JSON {type(data).__name__}, not an object of a model's fields"
        )
    named = "the field 'name'"
    if "name" not in data:
        data = {"name": path.stem, **data}
        named = "its file name (it has no field 'name')"
    config = AlexNetConfig.from_dict(data, str(path), required=FILE_REQUIRED)
    return _checked_name(config, str(path), named=named)


def is_variant_file(text: str) -> bool:
    """Whether a MODEL argument that is no preset's name is meant as a file: it ends in
    ``.json``, names a folder, or is an existing file."""
    return text.lower().endswith(".json") or os.sep in text or Path(text).is_file()


def resolve_variant(
    text: str | AlexNetConfig, recorded: dict[str, dict] | None = None
) -> AlexNetConfig:
    """The variant a MODEL argument names: a preset by its name, a variant file by its path,
    or a name in ``recorded`` ({name: shape as recorded}, what a run or a study recorded), the
    variant of that record: a run that was trained from a file needs the file no more."""
    if isinstance(text, AlexNetConfig):
        return text
    text = str(text)
    if text in PRESETS:
        return PRESETS[text]
    if is_variant_file(text):
        return load_variant_file(text)
    if recorded and isinstance(recorded.get(text), dict):
        return recorded_variant(text, recorded[text], "the shape recorded for it", "its name")
    try:
        return get_config(text)
    except UnknownModelError as e:
        raise UnknownModelError(f"{e.args[0]}, {_FILE_HINT}") from None


def recorded_variant(
    model: str, shape: dict, where: str, named_by: str = "the field 'model'"
) -> AlexNetConfig:
    """The shape a run recorded (its config.json's ``model_config``, ``where``) for its
    variant ``model`` (what ``named_by`` says), checked: the names agree, and a preset's name
    comes with that preset's shape."""
    config = AlexNetConfig.from_dict(shape, where)
    if config.name != model:
        raise SettingError(
            f"{where}: the shape is named {config.name!r}, but {named_by} is {model!r}"
        )
    return _checked_name(config, where)


def variant_list(text: str) -> list[AlexNetConfig]:
    """``all`` (the five presets), or presets and variant files separated by commas: the
    variants in the order given, once each. ``all`` may come with files, not with names."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise UnknownModelError(f"{param('models')} needs 'all' or model names separated by commas")
    if "all" in (p.lower() for p in parts):
        rest = [p for p in parts if p.lower() != "all"]
        if len(rest) == len(parts) - 1 and all(is_variant_file(p) for p in rest):
            parts = [*PRESETS, *rest]
        else:
            raise UnknownModelError(
                f"{param('models')}: give 'all' alone (or with JSON files), or a list of models "
                "without it"
            )
    variants: dict[str, AlexNetConfig] = {}
    for part in parts:
        config = resolve_variant(part)
        if config.name in variants and variants[config.name] != config:
            raise SettingError(
                f"{param('models')}: two variants are named {config.name!r} ({part} and "
                "another): give each its own 'name'"
            )
        variants[config.name] = config
    return list(variants.values())


def custom_shape(
    model: str, shape: AlexNetConfig | None, num_classes: int
) -> AlexNetConfig | None:
    """The shape a run of ``model`` records as its own: None for a preset (its name says it
    all, and the identity of its runs stays what it always was), else ``shape``, checked."""
    if shape is None:
        return None
    if shape.name != model:
        raise SettingError(f"the model is named {model!r} but its shape {shape.name!r}")
    if shape.num_classes != num_classes:
        raise SettingError(
            f"the variant {model!r} has {shape.num_classes} classes, the run "
            f"{param('num_classes')} {num_classes}"
        )
    checked = _checked_name(shape, f"the variant {model!r}", num_classes)
    return None if checked.name in PRESETS else checked


def check_images(config: AlexNetConfig, image_shape: tuple[int, ...]) -> None:
    """Refuse a shape that cannot read the data's images (height, width, channels)."""
    side, c = config.image_size, config.in_channels
    if tuple(image_shape) != (side, side, c):
        h, w, k = image_shape
        raise SettingError(
            f"the variant {config.name!r} reads {side}x{side} images of {c} channels "
            f"(its image_size and in_channels); the data's are {h}x{w} with {k}"
        )


def shape_identity(shape: AlexNetConfig) -> dict:
    """A shape that is not a preset, as part of a run's identity: flat (``model_config.widths``)
    and as JSON holds it, so that config.json and the checkpoint compare equal."""
    return {
        f"model_config.{k}": list(v) if isinstance(v, tuple) else v
        for k, v in shape.to_dict().items()
        if k != "name"
    }


def recorded_identity(config: dict, where: str = "the run's config.json") -> dict:
    """The shape fields of the identity a run's config.json records: none for a preset."""
    model, shape = config.get("model"), config.get("model_config")
    if model in PRESETS or not isinstance(shape, dict) or not isinstance(model, str):
        return {}
    return shape_identity(recorded_variant(model, shape, f"{where}: the field 'model_config'"))


def variant_order(name: str) -> tuple[int, str]:
    """Where a variant goes in tables: the presets in the post's order, then the others."""
    names = list(PRESETS)
    return (names.index(name), "") if name in names else (len(names), name)


# ---------------------------------------------------------------------- the layer table


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # Keras order: (H, W, C) or (features,)
    params: int  # trainable
    macs: int  # multiply-accumulates per image
    non_trainable: int = 0  # a batch normalisation's moving mean and variance, as Keras counts


@dataclass
class LayerTable:
    config: AlexNetConfig
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def non_trainable(self) -> int:
        return sum(r.non_trainable for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def size_mb(self) -> float:
        """float32 weights in MB (10^6 bytes)."""
        return fp32_mb(self.params)


def layer_table(name_or_config: str | AlexNetConfig, num_classes: int = 10) -> LayerTable:
    """Per-layer output shape, parameters and MACs, from one forward pass on the meta device."""
    cfg = config_of(name_or_config, num_classes)
    model = meta_model(cfg)
    x = torch.empty(1, cfg.in_channels, cfg.image_size, cfg.image_size, device="meta")
    table = LayerTable(cfg)
    table.rows.append(
        LayerRow("input", "InputLayer", (cfg.image_size, cfg.image_size, cfg.in_channels), 0, 0)
    )
    for name, layer in model.layers.named_children():
        x = layer(x)
        shape = tuple(x.shape[1:])
        if x.dim() == 4:
            shape = (shape[1], shape[2], shape[0])
        params = sum(p.numel() for p in layer.parameters())
        if isinstance(layer, Conv2dSame):
            kh, kw = layer.kernel_size
            macs = shape[0] * shape[1] * shape[2] * kh * kw * layer.in_channels
        elif isinstance(layer, Dense):
            macs = layer.in_features * layer.out_features
        else:
            macs = 0
        frozen = sum(b.numel() for n, b in layer.named_buffers() if n.startswith("running_"))
        kind = KERAS_LAYER_KINDS[type(layer)]
        table.rows.append(LayerRow(name, kind, shape, params, macs, frozen))
    return table
