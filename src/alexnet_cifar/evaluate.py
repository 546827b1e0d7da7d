"""Evaluation on held-out images, and loading trained models back from runs and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import normalize
from .checkpoint import CHECKPOINT, MODEL_FILE, PREV_CHECKPOINT, CheckpointError, read_state
from .models import AlexNet, AlexNetConfig
from .optim import keras_crossentropy

__all__ = ["EvalResult", "evaluate_model", "load_model", "resolve_weights_file"]


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy plus the model's L2 term, as Keras reports val_loss
    accuracy: float
    cross_entropy: float
    n: int
    confusion: np.ndarray  # [true, predicted] counts
    classes: list[str]

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1)
        return np.divide(
            np.diag(self.confusion), totals, out=np.zeros(len(totals)), where=totals > 0
        )

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "cross_entropy": self.cross_entropy,
            "n": self.n,
            "per_class_accuracy": {
                c: float(a) for c, a in zip(self.classes, self.per_class_accuracy)
            },
            "confusion_matrix": self.confusion.tolist(),
            "classes": list(self.classes),
        }


@torch.no_grad()
def logits_in_batches(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 500,
    channels_last: bool = False,
    flip: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits (float32) of uint8 NHWC images, in eval mode, batch by batch on the model's device.

    ``precision="bf16"`` runs the model under bf16 autocast (CUDA), as the engine trains.
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device, non_blocking=True))
        if flip:
            x = x.flip(-1)
        x = x.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(model(x).float())
    return torch.cat(out) if out else torch.empty(0, 10, device=device)


@torch.no_grad()
def heldout_logits(
    model: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 500,
    channels_last: bool = False,
    precision: str = "fp32",
    mirrored: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logits, logits of the mirror images or None, labels) on the model's device, computed
    with dropout off; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = torch.as_tensor(images)

        def run(flip: bool) -> torch.Tensor:
            return logits_in_batches(
                model, images, batch_size, channels_last, flip=flip, precision=precision
            )

        return run(False), run(True) if mirrored else None, torch.as_tensor(labels).to(device)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_model(
    model: AlexNet,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    classes: list[str] | None = None,
    batch_size: int = 500,
    loss_clip_eps: float = 1e-7,
    channels_last: bool = False,
    precision: str = "fp32",
    tta_flip: bool = False,
) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on uint8 NHWC images (dropout off)."""
    logits, mirrored, labels = heldout_logits(
        model,
        images,
        labels,
        batch_size=batch_size,
        channels_last=channels_last,
        precision=precision,
        mirrored=tta_flip,
    )
    if tta_flip:
        logits = flip_averaged(logits, mirrored)
    return result_from_logits(model, logits, labels, classes, loss_clip_eps)


def flip_averaged(logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the softmax of each image and of its mirror image.

    It stands in for logits anywhere (its softmax is that mean), so the loss and the accuracy
    of the flip-averaged prediction come out of the same code as the plain ones.
    """
    return torch.log((torch.softmax(logits, 1) + torch.softmax(mirrored, 1)) / 2)


def result_from_logits(
    model: AlexNet,
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str] | None,
    loss_clip_eps: float = 1e-7,
) -> EvalResult:
    """Loss (with the model's L2 term), accuracy and confusion matrix of given predictions."""
    ce = keras_crossentropy(logits, labels, loss_clip_eps)
    pred = logits.argmax(1)
    k = model.config.num_classes
    confusion = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
    n = len(labels)
    ce_mean = float(ce.sum() / max(n, 1))
    return EvalResult(
        loss=ce_mean + float(model.l2_penalty()),
        accuracy=float((pred == labels).sum()) / max(n, 1),
        cross_entropy=ce_mean,
        n=n,
        confusion=confusion.cpu().numpy(),
        classes=list(classes) if classes is not None else [str(i) for i in range(k)],
    )


def resolve_weights_file(path: str | Path) -> Path:
    """The file to load for a run folder (final model, else newest checkpoint) or a file."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL_FILE, CHECKPOINT, PREV_CHECKPOINT):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path} holds no {MODEL_FILE} or {CHECKPOINT}: not a run folder of alexnet-cifar"
        )
    if not path.exists():
        raise CheckpointError(f"no run folder or checkpoint at {path}")
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> AlexNet:
    """The trained model (eval mode) from a run folder, a checkpoint or a final model file."""
    file = resolve_weights_file(path)
    state = read_state(file)
    try:
        config = AlexNetConfig.from_dict(state["model_config"])
        model = AlexNet(config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file} does not hold a usable alexnet-cifar model: {e}") from e
    return model.to(device).eval()
