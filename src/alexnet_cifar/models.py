"""The study's five AlexNet variants: one configurable builder and a table of presets.

Every layer mirrors one Keras layer of the seed post, so the layer table, the parameter counts and
imported Keras weights line up one to one:

* convolutions and max-pools use TensorFlow's "same" padding (asymmetric where TensorFlow pads
  asymmetrically; a padded cell never wins a max-pool);
* the flatten before the dense head reads the feature map in Keras' (H, W, C) order;
* kernels start from the Keras 2 initialiser each variant names, biases from zero.

The model returns raw logits; apply ``softmax`` for the probabilities the Keras model outputs
(see :func:`predict_proba`).
"""

from __future__ import annotations

import difflib
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SettingError, UnknownModelError, param
from .files import check_fields

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "KERAS_LAYER_KINDS",
    "PRESETS",
    "UnknownModelError",
    "build_model",
    "final_map",
    "fp32_mb",
    "get_config",
    "layer_table",
    "meta_model",
    "model_names",
    "parse_model_list",
    "predict_proba",
    "probabilities",
    "tf_same_padding",
]

# Keras 2's he_normal draws from a normal truncated at two standard deviations; dividing the
# scale by the standard deviation of that truncated unit normal makes the final std sqrt(2/fan_in).
_TRUNCATED_NORMAL_STD = 0.87962566103423978


@dataclass(frozen=True)
class AlexNetConfig:
    """The shape of one AlexNet variant, as data.

    stem: ``"imagenet"`` is conv 11x11 stride 4 followed by max-pool 3/2 (the original AlexNet);
    ``"slim"`` is one conv 3x3 stride 1 and no pool (the post's change for 32x32 inputs).

    published_params: the total the seed post prints for the variant (Keras
    ``model.summary()``), or None for a shape the post does not show. It is a fact about the
    preset, not part of its shape: not compared, and not recorded by :meth:`to_dict`.
    """

    name: str = "custom"
    stem: str = "slim"
    widths: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    dense: tuple[int, int] = (4096, 4096)
    conv_init: str = "uniform"  # "uniform" (Keras U(-0.05, 0.05)) or "he_normal"
    l2: float = 0.0  # Keras kernel_regularizer=l2(l2) on every conv kernel
    dropout: float = 0.5
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3
    published_params: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.stem not in ("imagenet", "slim"):
            raise SettingError(f"{param('stem')} must be 'imagenet' or 'slim', not {self.stem!r}")
        if self.conv_init not in ("uniform", "he_normal"):
            raise SettingError(
                f"{param('conv_init')} must be 'uniform' or 'he_normal', not {self.conv_init!r}"
            )
        if len(self.widths) != 5:
            raise SettingError(f"{param('widths')} needs 5 conv widths, not {len(self.widths)}")
        if len(self.dense) != 2:
            raise SettingError(f"{param('dense')} needs 2 hidden widths, not {len(self.dense)}")
        if min(self.widths) < 1 or min(self.dense) < 1:
            raise SettingError(f"{param('widths')} and {param('dense')} must be positive")
        if self.num_classes < 2:
            raise SettingError(f"{param('num_classes')} must be at least 2, not {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingError(f"{param('dropout')} must lie in [0, 1), not {self.dropout}")
        if self.l2 < 0:
            raise SettingError(f"{param('l2')} must be >= 0, not {self.l2}")

    def to_dict(self) -> dict:
        """The shape, as config.json and model files record it."""
        d = asdict(self)
        del d["published_params"]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "the model config") -> AlexNetConfig:
        """A model shape from its recorded form; wrong kinds are a SettingError naming
        ``where`` and the field."""
        if not isinstance(d, dict):
            raise SettingError(f"{where} should be an object, not {type(d).__name__}")
        spec = {"name": "str", "stem": "str", "widths": "ints", "dense": "ints"}
        spec.update({"conv_init": "str", "l2": "number", "dropout": "number"})
        spec.update({"num_classes": "int", "image_size": "int", "in_channels": "int"})
        unknown = set(d) - set(spec)
        if unknown:
            raise SettingError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
        check_fields(d, spec, where)
        d = dict(d)
        d["widths"] = tuple(d.get("widths", cls.widths))
        d["dense"] = tuple(d.get("dense", cls.dense))
        try:
            return cls(**d)
        except SettingError as e:
            raise SettingError(f"{where}: {e}") from None


PRESETS: dict[str, AlexNetConfig] = {
    c.name: c
    for c in [
        # published_params: the totals the seed post prints (Keras ``model.summary()``).
        AlexNetConfig("alexnet", stem="imagenet", conv_init="uniform", published_params=21_622_154),
        AlexNetConfig("alexnet_slim", conv_init="uniform", published_params=87_650_186),
        AlexNetConfig(
            "alexnet_slim_regular",
            stem="slim",
            conv_init="he_normal",
            l2=1e-4,
            published_params=87_650_186,
        ),
        # The post says "halve every width"; its published count, 6,074,250, is reproduced
        # exactly (and only) by these widths: the last conv at 64 and the dense layers at 1024.
        AlexNetConfig(
            "alexnet_thinner_2",
            widths=(48, 128, 192, 192, 64),
            dense=(1024, 1024),
            conv_init="he_normal",
            l2=1e-4,
            published_params=6_074_250,
        ),
        AlexNetConfig(
            "alexnet_thinner_4",
            widths=(24, 64, 96, 96, 64),
            dense=(1024, 1024),
            conv_init="he_normal",
            l2=1e-4,
            published_params=5_488_106,
        ),
    ]
}


def model_names() -> list[str]:
    return list(PRESETS)


def get_config(name: str, num_classes: int = 10) -> AlexNetConfig:
    """The preset called ``name``; an unknown name raises an error that lists the valid ones."""
    if not isinstance(name, str) or name not in PRESETS:
        name = str(name)
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Valid models: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg if num_classes == cfg.num_classes else replace(cfg, num_classes=num_classes)


def parse_model_list(text: str) -> list[str]:
    """``all``, or preset names separated by commas: the names in the order given, once each."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UnknownModelError(f"{param('models')} needs 'all' or model names separated by commas")
    if "all" in (n.lower() for n in names):
        if len(names) != 1:
            raise UnknownModelError(
                f"{param('models')}: give 'all' alone, or a list of models without it"
            )
        return list(PRESETS)
    for n in names:
        get_config(n)
    return list(dict.fromkeys(names))


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: (before, after).

    The output has ceil(size / stride) cells; the extra cell of an odd total goes after.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def final_map(config: AlexNetConfig) -> tuple[int, int]:
    """(side, channels) of the last feature map, the one the flatten reads."""
    side = config.image_size
    for stride in ([4, 2] if config.stem == "imagenet" else []) + [2, 2]:
        side = -(-side // stride)  # TF "same": ceil(n / stride)
    return side, config.widths[4]


class Conv2dSame(nn.Conv2d):
    """Keras ``Conv2D(padding="same", activation="relu")``: TF padding, then conv, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        symmetric = stride == 1 and kernel % 2 == 1
        # Stride-1 odd kernels pad symmetrically in TF too, so the built-in padding is exact.
        super().__init__(
            in_channels, out_channels, kernel, stride, padding=kernel // 2 if symmetric else 0
        )
        self._explicit_pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = tf_same_padding(x.shape[-2], k, s)
            left, right = tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return F.relu(super().forward(x))


class MaxPool2dSame(nn.Module):
    """Keras ``MaxPooling2D(padding="same")``: padded cells are -inf, so they never win."""

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        top, bottom = tf_same_padding(h, self.kernel, self.stride)
        left, right = tf_same_padding(w, self.kernel, self.stride)
        if top == left == 0 and self._ceil_mode_fits(h, bottom) and self._ceil_mode_fits(w, right):
            # All the padding after: PyTorch's ceil_mode windows run off the end and ignore the
            # missing cells, which is exactly -inf padding, without copying the input.
            return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=True)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

    def _ceil_mode_fits(self, n: int, after: int) -> bool:
        k, s = self.kernel, self.stride
        if n < k:
            return False
        ceil_out = -(-(n - k) // s) + 1
        # PyTorch drops a last window that would start in the padding; TF's output size is
        # ceil(n / s). They agree when the last window starts inside the input.
        return ceil_out == -(-n // s) and (ceil_out - 1) * s < n and after < k

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=same"


class FlattenHWC(nn.Module):
    """Keras ``Flatten`` on a channels-last map: features in (H, W, C) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On a channels_last tensor this permute is a free view.
        return x.permute(0, 2, 3, 1).flatten(1)


class Dense(nn.Linear):
    """Keras ``Dense``, optionally with its ReLU."""

    def __init__(self, in_features: int, out_features: int, relu: bool):
        super().__init__(in_features, out_features)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu" if self.relu else "")


class Dropout(nn.Module):
    """Keras ``Dropout`` (inverted: keep with probability 1 - p, scale kept units by 1/(1 - p)).

    The mask is drawn for a batch of ``batch_rows`` rows, and this module's input is rows
    ``row_offset:row_offset + len(x)`` of that batch. In one process both default to the input
    itself. In data-parallel training every rank draws the same mask for the global batch and
    keeps its own rows, so the result does not depend on how the batch is split over ranks.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.batch_rows: int | None = None
        self.row_offset = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        rows = self.batch_rows or x.shape[0]
        u = torch.rand((rows, *x.shape[1:]), device=x.device)
        keep = u[self.row_offset : self.row_offset + x.shape[0]] >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AlexNet(nn.Module):
    """One AlexNet variant. ``forward`` maps normalised NCHW images to logits."""

    def __init__(self, config: AlexNetConfig):
        super().__init__()
        self.config = config
        w1, w2, w3, w4, w5 = config.widths
        c = config.in_channels
        layers: list[tuple[str, nn.Module]] = []
        if config.stem == "imagenet":
            layers += [("conv1", Conv2dSame(c, w1, 11, 4)), ("pool1", MaxPool2dSame())]
        else:
            layers += [("conv1", Conv2dSame(c, w1, 3, 1))]
        layers += [
            ("conv2", Conv2dSame(w1, w2, 5)),
            ("pool2", MaxPool2dSame()),
            ("conv3", Conv2dSame(w2, w3, 3)),
            ("conv4", Conv2dSame(w3, w4, 3)),
            ("conv5", Conv2dSame(w4, w5, 3)),
            ("pool3", MaxPool2dSame()),
            ("flatten", FlattenHWC()),
        ]
        side, _ = final_map(config)
        d1, d2 = config.dense
        layers += [
            ("fc1", Dense(side * side * w5, d1, relu=True)),
            ("drop1", Dropout(config.dropout)),
            ("fc2", Dense(d1, d2, relu=True)),
            ("drop2", Dropout(config.dropout)),
            ("fc3", Dense(d2, config.num_classes, relu=False)),
        ]
        self.layers = nn.Sequential(OrderedDict(layers))
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def convs(self) -> list[Conv2dSame]:
        return [m for m in self.layers if isinstance(m, Conv2dSame)]

    def denses(self) -> list[Dense]:
        return [m for m in self.layers if isinstance(m, Dense)]

    def dropouts(self) -> list[Dropout]:
        return [m for m in self.layers if isinstance(m, Dropout)]

    def set_batch_shard(self, batch_rows: int | None, row_offset: int = 0) -> None:
        """This process sees rows ``row_offset:`` of a global batch of ``batch_rows`` rows."""
        for d in self.dropouts():
            d.batch_rows, d.row_offset = batch_rows, row_offset

    def regularized_parameters(self) -> list[nn.Parameter]:
        """The kernels that carry the L2 penalty (conv kernels of the ``_regular`` variants)."""
        return [m.weight for m in self.convs()] if self.config.l2 > 0 else []

    def l2_penalty(self) -> torch.Tensor:
        """``l2 * sum(w**2)`` over the regularised kernels: the term Keras adds to the loss."""
        params = self.regularized_parameters()
        if not params:
            return torch.zeros((), device=self.layers.fc3.weight.device)
        return self.config.l2 * torch.stack([p.float().pow(2).sum() for p in params]).sum()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Keras 2 initialisation: conv kernels per ``conv_init``, dense glorot-uniform, bias 0."""
        for conv in self.convs():
            w = conv.weight
            if self.config.conv_init == "uniform":
                w.uniform_(-0.05, 0.05, generator=generator)
            else:
                fan_in = w[0].numel()  # kh * kw * in_channels
                std = math.sqrt(2.0 / fan_in) / _TRUNCATED_NORMAL_STD
                nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std, generator=generator)
            conv.bias.zero_()
        for dense in self.denses():
            fan_out, fan_in = dense.weight.shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            dense.weight.uniform_(-limit, limit, generator=generator)
            dense.bias.zero_()


#: The Keras layer class each of our layers mirrors.
KERAS_LAYER_KINDS: dict[type, str] = {
    Conv2dSame: "Conv2D",
    MaxPool2dSame: "MaxPooling2D",
    FlattenHWC: "Flatten",
    Dense: "Dense",
    Dropout: "Dropout",
}


def build_model(name: str, num_classes: int = 10) -> AlexNet:
    """Build the preset ``name``, freshly initialised (Keras 2 initialisers), in train mode.

    The module returns logits; ``predict_proba`` gives the softmax the Keras model outputs.
    Initialisation draws from torch's global RNG: call ``torch.manual_seed`` first to fix it.
    For a shape that is not a preset, build ``AlexNet(AlexNetConfig(...))`` directly.
    """
    return AlexNet(get_config(name, num_classes))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The softmax the Keras model ends in, over the classes of a batch of logits."""
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities (the Keras model's softmax output) for normalised images."""
    return probabilities(model(x).float())


def meta_model(config: AlexNetConfig) -> AlexNet:
    """The model built on the meta device: its shapes without memory or initialisation."""
    with torch.device("meta"):
        return AlexNet(config)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # Keras order: (H, W, C) or (features,)
    params: int
    macs: int  # multiply-accumulates per image


@dataclass
class LayerTable:
    config: AlexNetConfig
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def size_mb(self) -> float:
        """float32 weights in MB (10^6 bytes)."""
        return fp32_mb(self.params)


def fp32_mb(params: int) -> float:
    """The size of ``params`` float32 weights in MB (10^6 bytes)."""
    return params * 4 / 1e6


def layer_table(name_or_config: str | AlexNetConfig, num_classes: int = 10) -> LayerTable:
    """Per-layer output shape, parameters and MACs, from one forward pass on the meta device."""
    cfg = (
        name_or_config
        if isinstance(name_or_config, AlexNetConfig)
        else get_config(name_or_config, num_classes)
    )
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
        table.rows.append(LayerRow(name, KERAS_LAYER_KINDS[type(layer)], shape, params, macs))
    return table
