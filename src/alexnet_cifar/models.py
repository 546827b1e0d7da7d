"""The study's five AlexNet variants: one configurable builder and a table of presets.

Every layer mirrors one Keras layer of the seed post, so the layer table, the parameter counts and
imported Keras weights line up one to one:

* convolutions and max-pools use TensorFlow's "same" padding (asymmetric where TensorFlow pads
  asymmetrically; a padded cell never wins a max-pool);
* the flatten before the dense head reads the feature map in Keras' (H, W, C) order;
* kernels start from the Keras 2 initialiser each variant names, biases from zero;
* with ``batch_norm`` each convolution is followed by Keras' ``BatchNormalization()`` (its
  defaults: epsilon 1e-3, moving averages with momentum 0.99) and then its ReLU, and has no bias
  (the normalisation's offset takes its place).

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
    "SHAPE_FIELDS",
    "PRESETS",
    "UnknownModelError",
    "build_model",
    "final_map",
    "ShapeError",
    "config_of",
    "fp32_mb",
    "get_config",
    "meta_model",
    "model_names",
    "predict_proba",
    "probabilities",
    "tf_same_padding",
]

# Keras 2's he_normal draws from a normal truncated at two standard deviations; dividing the
# scale by the standard deviation of that truncated unit normal makes the final std sqrt(2/fan_in).
_TRUNCATED_NORMAL_STD = 0.87962566103423978


class ShapeError(SettingError):
    """A field of a model shape out of range: ``field`` and ``what`` is wrong with it."""

    def __init__(self, field: str, what: str):
        super().__init__(f"{param(field)} {what}")
        self.field, self.what = field, what


#: The fields of a shape and their kinds (``files.check_fields``), in the order they are shown.
SHAPE_FIELDS = {
    "name": "str",
    "stem": "str",
    "widths": "ints",
    "dense": "ints",
    "conv_init": "str",
    "l2": "number",
    "dropout": "number",
    "num_classes": "int",
    "image_size": "int",
    "in_channels": "int",
    "batch_norm": "bool",
}


@dataclass(frozen=True)
class AlexNetConfig:
    """The shape of one AlexNet variant, as data.

    stem: ``"imagenet"`` is conv 11x11 stride 4 followed by max-pool 3/2 (the original AlexNet);
    ``"slim"`` is one conv 3x3 stride 1 and no pool (the post's change for 32x32 inputs).

    batch_norm: a batch normalisation after each convolution, before its ReLU (none of the
    post's variants has one).

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
    batch_norm: bool = False
    published_params: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ShapeError(*problem)

    def _problem(self) -> tuple[str, str] | None:
        """(field, what is wrong with it) for the first field out of range, or None."""
        if self.stem not in ("imagenet", "slim"):
            return "stem", f"must be 'imagenet' or 'slim', not {self.stem!r}"
        if self.conv_init not in ("uniform", "he_normal"):
            return "conv_init", f"must be 'uniform' or 'he_normal', not {self.conv_init!r}"
        for name, values, n in (("widths", self.widths, 5), ("dense", self.dense, 2)):
            if len(values) != n:
                return name, f"needs {n} widths, not {len(values)}"
            if min(values) < 1:
                return name, f"must hold widths of 1 or more, not {list(values)}"
        for name, least in (("num_classes", 2), ("image_size", 1), ("in_channels", 1)):
            if getattr(self, name) < least:
                return name, f"must be at least {least}, not {getattr(self, name)}"
        if not 0.0 <= self.dropout < 1.0:
            return "dropout", f"must lie in [0, 1), not {self.dropout}"
        if self.l2 < 0:
            return "l2", f"must be >= 0, not {self.l2}"
        return None

    def to_dict(self) -> dict:
        """The shape, as config.json and model files record it."""
        d = asdict(self)
        del d["published_params"]
        return d

    @classmethod
    def from_dict(
        cls, d: dict, where: str = "the model config", required: tuple = ()
    ) -> AlexNetConfig:
        """A model shape from its recorded form (a field left out takes its default, unless
        it is ``required``); a wrong field is a SettingError naming ``where`` and the field."""
        if not isinstance(d, dict):
            raise SettingError(f"{where} should be an object, not {type(d).__name__}")
        unknown = [k for k in d if k not in SHAPE_FIELDS]
        if unknown:
            raise SettingError(
                f"{where}: the field {unknown[0]!r} is not one of a model shape "
                f"({', '.join(SHAPE_FIELDS)})"
            )
        check_fields(d, SHAPE_FIELDS, where, required=required)
        d = dict(d)
        d["widths"] = tuple(d.get("widths", cls.widths))
        d["dense"] = tuple(d.get("dense", cls.dense))
        try:
            return cls(**d)
        except ShapeError as e:
            raise SettingError(f"{where}: the field {e.field!r} {e.what}") from None


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


def config_of(name_or_config: str | AlexNetConfig, num_classes: int = 10) -> AlexNetConfig:
    """A shape given as itself, or the preset of that name."""
    if isinstance(name_or_config, AlexNetConfig):
        return name_or_config
    return get_config(name_or_config, num_classes)


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
    """Keras ``Conv2D(padding="same", activation="relu")``: TF padding, then conv, then ReLU.
    With ``relu=False`` and ``bias=False``, ``Conv2D(padding="same", use_bias=False)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        relu: bool = True,
        bias: bool = True,
    ):
        symmetric = stride == 1 and kernel % 2 == 1
        # Stride-1 odd kernels pad symmetrically in TF too, so the built-in padding is exact.
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=kernel // 2 if symmetric else 0,
            bias=bias,
        )
        self._explicit_pad = not symmetric
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = tf_same_padding(x.shape[-2], k, s)
            left, right = tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        y = super().forward(x)
        return F.relu(y) if self.relu else y


class BatchNorm(nn.BatchNorm2d):
    """Keras ``BatchNormalization()`` at its defaults: epsilon 1e-3, and moving averages kept
    with momentum 0.99 (PyTorch's ``momentum`` is the weight of the new batch: 0.01)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-3, momentum=0.01)


class ReLU(nn.ReLU):
    """Keras ``Activation("relu")``: the ReLU of a convolution that is batch-normalised."""


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

        def conv(i: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
            if not config.batch_norm:
                layers.append((f"conv{i}", Conv2dSame(c_in, c_out, kernel, stride)))
                return
            layers.extend(
                [
                    (f"conv{i}", Conv2dSame(c_in, c_out, kernel, stride, relu=False, bias=False)),
                    (f"bn{i}", BatchNorm(c_out)),
                    (f"relu{i}", ReLU()),
                ]
            )

        if config.stem == "imagenet":
            conv(1, c, w1, 11, 4)
            layers.append(("pool1", MaxPool2dSame()))
        else:
            conv(1, c, w1, 3, 1)
        conv(2, w1, w2, 5)
        layers.append(("pool2", MaxPool2dSame()))
        conv(3, w2, w3, 3)
        conv(4, w3, w4, 3)
        conv(5, w4, w5, 3)
        layers += [("pool3", MaxPool2dSame()), ("flatten", FlattenHWC())]
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

    def batch_norms(self) -> list[BatchNorm]:
        return [m for m in self.layers if isinstance(m, BatchNorm)]

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
            if conv.bias is not None:
                conv.bias.zero_()
        for bn in self.batch_norms():
            bn.reset_parameters()  # Keras: gamma 1, beta 0, moving mean 0, moving variance 1
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
    BatchNorm: "BatchNormalization",
    ReLU: "Activation",
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


def fp32_mb(params: int) -> float:
    """The size of ``params`` float32 weights in MB (10^6 bytes)."""
    return params * 4 / 1e6
