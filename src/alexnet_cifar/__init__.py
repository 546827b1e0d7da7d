"""alexnet-cifar: the AlexNet-on-CIFAR-10 study, faithful to its Keras recipe, in PyTorch."""

from .data import CIFAR10, DataError, load_cifar10
from .models import PRESETS, AlexNet, AlexNetConfig, build_model, model_names

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """The trained model (eval mode) from a run folder, a checkpoint or a final model file."""
    from .evaluate import load_model as _load

    return _load(path, device)


__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "CIFAR10",
    "DataError",
    "PRESETS",
    "__version__",
    "build_model",
    "load_model",
    "load_cifar10",
    "model_names",
]
