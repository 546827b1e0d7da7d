"""alexnet-cifar: the AlexNet-on-CIFAR-10 study, faithful to its Keras recipe, in PyTorch.

The public API: ``build_model``, ``load_cifar10``, ``load_model``, the ``augment`` module
(``augment.translate``, ``augment.normalize``) and the ``alexnet-cifar`` command
(``alexnet_cifar.cli:main``). How the package is laid out: docs/architecture.md.
"""

from . import augment
from ._version import __version__
from .data import CIFAR10, load_cifar10
from .errors import AlexnetCifarError, DataError
from .models import PRESETS, AlexNet, AlexNetConfig, build_model, model_names
from .training.checkpoint import load_model

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "AlexnetCifarError",
    "CIFAR10",
    "DataError",
    "PRESETS",
    "__version__",
    "augment",
    "build_model",
    "load_cifar10",
    "load_model",
    "model_names",
]
