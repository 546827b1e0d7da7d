"""Evaluation on held-out images: loss, accuracy and confusion matrix, plain or flip-averaged.

Under data-parallel training each rank evaluates its share of the images and the sums are
reduced over the ranks once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..augment import normalize
from ..distributed import DistContext, shard
from ..errors import SettingError
from ..models import AlexNet, probabilities
from ..optim import keras_crossentropy
from ..recipe import KERAS_EPSILON

__all__ = [
    "EVAL_BATCH",
    "EvalResult",
    "eval_batch_size",
    "evaluate_model",
    "evaluate_with_tta",
    "flip_averaged",
    "logits_in_batches",
]


#: Images per forward pass of an evaluation by default, by device type.
EVAL_BATCH = {"cpu": 500, "cuda": 2000}


def eval_batch_size(device: torch.device) -> int:
    """The default evaluation batch on ``device`` (:data:`EVAL_BATCH`)."""
    return EVAL_BATCH.get(device.type, EVAL_BATCH["cpu"])


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
    batch_size: int = EVAL_BATCH["cpu"],
    channels_last: bool = False,
    flip: bool = False,
    precision: str = "fp32",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Logits (float32) of uint8 NHWC images, batch by batch on the model's device.

    ``precision="bf16"`` runs the model under bf16 autocast (CUDA), as the engine trains.
    ``on_batch(rows)`` is called after each batch (progress; it may raise to stop).
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
        if on_batch is not None:
            on_batch(len(x))
    if out:
        return torch.cat(out)
    return torch.empty(0, model.config.num_classes, device=device)


def flip_averaged(logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the softmax of each image and of its mirror image.

    It stands in for logits anywhere (its softmax is that mean), so the loss and the accuracy
    of the flip-averaged prediction come out of the same code as the plain ones.
    """
    return torch.log((probabilities(logits) + probabilities(mirrored)) / 2)


@torch.no_grad()
def _heldout_logits(
    model: AlexNet, images, labels, dist: DistContext, mirrored: bool, **run
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logits, logits of the mirror images or None, labels) of this rank's share of the
    images, computed with dropout off; the model's mode is restored afterwards."""
    offset, size = shard(len(labels), dist.world_size, dist.rank)
    images = torch.as_tensor(images)[offset : offset + size]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        labels = torch.as_tensor(labels)[offset : offset + size].to(device)
        plain = logits_in_batches(model, images, **run)
        flipped = logits_in_batches(model, images, flip=True, **run) if mirrored else None
    finally:
        model.train(was_training)
    return plain, flipped, labels


@torch.no_grad()
def evaluate_with_tta(
    model: AlexNet,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    classes: list[str] | None = None,
    batch_size: int = EVAL_BATCH["cpu"],
    loss_clip_eps: float = KERAS_EPSILON,
    channels_last: bool = False,
    precision: str = "fp32",
    dist: DistContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[EvalResult, EvalResult]:
    """(plain, flip-averaged) results on uint8 NHWC images, dropout off, each image run once
    as it is and once mirrored.

    The flip-averaged prediction is the mean of the softmax of each image and of its mirror
    image; its loss is the cross-entropy of that mean (clipped as Keras clips), plus the
    model's L2 term. With ``dist``, this rank takes its share of the images and the sums are
    reduced over the ranks. ``on_batch(rows)`` follows the progress.
    """
    dist = dist or DistContext()
    run = dict(
        batch_size=batch_size, channels_last=channels_last, precision=precision, on_batch=on_batch
    )
    plain, mirrored, labels = _heldout_logits(model, images, labels, dist, True, **run)
    averaged = flip_averaged(plain, mirrored)
    return (
        result_from_logits(model, plain, labels, classes, loss_clip_eps, dist),
        result_from_logits(model, averaged, labels, classes, loss_clip_eps, dist),
    )


@torch.no_grad()
def evaluate_model(
    model: AlexNet,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    classes: list[str] | None = None,
    batch_size: int = EVAL_BATCH["cpu"],
    loss_clip_eps: float = KERAS_EPSILON,
    channels_last: bool = False,
    precision: str = "fp32",
    tta_flip: bool = False,
    dist: DistContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on uint8 NHWC images (dropout off);
    with ``tta_flip``, of the flip-averaged prediction (see :func:`evaluate_with_tta`)."""
    dist = dist or DistContext()
    run = dict(
        batch_size=batch_size, channels_last=channels_last, precision=precision, on_batch=on_batch
    )
    logits, mirrored, labels = _heldout_logits(model, images, labels, dist, tta_flip, **run)
    if tta_flip:
        logits = flip_averaged(logits, mirrored)
    return result_from_logits(model, logits, labels, classes, loss_clip_eps, dist)


def result_from_logits(
    model: AlexNet,
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str] | None,
    loss_clip_eps: float = KERAS_EPSILON,
    dist: DistContext | None = None,
) -> EvalResult:
    """Loss (with the model's L2 term), accuracy and confusion matrix of given predictions,
    summed over the ranks of ``dist`` when there are several."""
    k = model.config.num_classes
    if len(labels) and int(labels.max()) >= k:
        raise SettingError(
            f"the data has {int(labels.max()) + 1} or more classes but the model predicts {k}; "
            "evaluate a model on data with its own number of classes"
        )
    ce_sum = keras_crossentropy(logits, labels, loss_clip_eps).double().sum()
    confusion = torch.bincount(labels * k + logits.argmax(1), minlength=k * k).reshape(k, k)
    if dist is not None and dist.enabled:
        where = logits.device if logits.device.type == "cuda" else torch.device("cpu")
        ce_sum, confusion = ce_sum.to(where), confusion.to(where)
        dist.all_reduce(ce_sum, "sum")
        dist.all_reduce(confusion, "sum")
    confusion = confusion.cpu().numpy()
    n = int(confusion.sum())
    ce_mean = float(ce_sum) / max(n, 1)
    return EvalResult(
        loss=ce_mean + float(model.l2_penalty()),
        accuracy=float(confusion.trace()) / max(n, 1),
        cross_entropy=ce_mean,
        n=n,
        confusion=confusion,
        classes=list(classes) if classes is not None else [str(i) for i in range(k)],
    )
