"""Helpers shared by the predict, export and Keras tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alexnet_cifar import build_model
from alexnet_cifar.checkpoint import save_model_file
from alexnet_cifar.data import CLASSES
from alexnet_cifar.models import AlexNet, AlexNetConfig

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
        x = torch.randn(16, 3, 32, 32)
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
