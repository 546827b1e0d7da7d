"""The seed's loss and optimiser, in Keras 2's exact form, on PyTorch's own SGD.

Keras 2's SGD(momentum=0.9, nesterov=True) keeps a velocity that already carries the learning
rate::

    v <- 0.9 v - lr g
    w <- w + 0.9 v - lr g

``torch.optim.SGD(nesterov=True)`` keeps b = -v / lr instead, which is the same while lr is
constant. When the schedule changes lr, Keras' velocity still holds the old lr, so
:func:`set_learning_rate` multiplies torch's buffer by lr_old / lr_new.

Keras' ``kernel_regularizer=l2(c)`` adds c * sum(w^2) to the loss, whose gradient 2c * w goes
through the momentum with the rest of the gradient: that is exactly SGD's ``weight_decay=2c`` on
those kernels, so the regularised kernels get their own parameter group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import AlexNet
from .recipe import KERAS_EPSILON, Recipe

__all__ = [
    "keras_crossentropy",
    "make_optimizer",
    "plain_step",
    "recipe_loss",
    "set_learning_rate",
]


def keras_crossentropy(
    logits: torch.Tensor, target: torch.Tensor, eps: float = KERAS_EPSILON
):
    """Per-sample categorical cross-entropy as Keras 2 computes it on a softmax output.

    Keras 2 clips the probabilities to [eps, 1 - eps] before the log, so a sample whose true
    class has probability below eps costs -log(eps) (about 16.1) and sends no gradient. With
    ``eps=0`` this is the ordinary cross-entropy of the logits.
    """
    logits = logits.float()
    if eps <= 0:
        return F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return -torch.log(p.clamp(eps, 1.0 - eps))


def make_optimizer(
    model: AlexNet,
    recipe: Recipe,
    lr_tensor_device: torch.device | None = None,
    **kwargs,
) -> torch.optim.SGD:
    """SGD with the recipe's momentum; weight decay 2 * l2 on the regularised kernels only.

    With ``lr_tensor_device`` each group's learning rate is a tensor there (what a captured
    CUDA graph needs to see a new rate). Extra keyword arguments (``foreach``, ``fused``) pass
    to ``torch.optim.SGD``.
    """
    lr0 = recipe.lr_at(0)

    def lr():
        if lr_tensor_device is None:
            return lr0
        return torch.tensor(lr0, dtype=torch.float32, device=lr_tensor_device)

    reg = {id(p) for p in model.regularized_parameters()}
    decayed = [p for p in model.parameters() if id(p) in reg]
    plain = [p for p in model.parameters() if id(p) not in reg]
    groups = [{"params": plain, "weight_decay": 0.0, "name": "plain", "lr": lr()}]
    if decayed:
        groups.append(
            {
                "params": decayed,
                "weight_decay": 2.0 * model.config.l2,
                "name": "l2_kernels",
                "lr": lr(),
            }
        )
    return torch.optim.SGD(
        groups,
        lr=lr0,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        **kwargs,
    )


def recipe_loss(logits: torch.Tensor, target: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Per-sample training loss of a recipe: Keras' clipped cross-entropy, or label-smoothed."""
    if recipe.label_smoothing > 0:
        return F.cross_entropy(
            logits.float(), target, label_smoothing=recipe.label_smoothing, reduction="none"
        )
    return keras_crossentropy(logits, target, recipe.loss_clip_eps)


@torch.no_grad()
def set_learning_rate(
    optimizer: torch.optim.Optimizer, lr: float, rescale_momentum: bool = True
) -> None:
    """Set lr, by default the Keras way: the momentum buffers are rescaled by lr_old / lr_new.

    Keras' velocity v = -lr_old * b keeps its value across the change; torch's buffer must then
    become -v / lr_new = b * lr_old / lr_new. Buffers that do not exist yet (before the first
    step) are left alone, as Keras' zero velocity needs no change. ``rescale_momentum=False``
    is PyTorch's own semantics.
    """
    for group in optimizer.param_groups:
        current = group["lr"]
        old = float(current) if rescale_momentum or not isinstance(current, torch.Tensor) else None
        if old == lr:
            continue
        if isinstance(current, torch.Tensor):
            current.fill_(lr)  # in place: a captured graph reads this tensor
        else:
            group["lr"] = lr
        if not rescale_momentum:
            continue
        buffers = [
            optimizer.state[p]["momentum_buffer"]
            for p in group["params"]
            if optimizer.state.get(p, {}).get("momentum_buffer") is not None
        ]
        if buffers:
            torch._foreach_mul_(buffers, old / lr)


def plain_step(
    model: AlexNet, optimizer: torch.optim.Optimizer, x, y, eps: float = KERAS_EPSILON
):
    """The textbook eager fp32 step: the reference the engine must equal, and bench's baseline.

    ``x`` is a normalised (and augmented) float batch; the L2 term goes through autograd.
    """
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = keras_crossentropy(logits, y, eps).mean() + model.l2_penalty()
    loss.backward()
    optimizer.step()
    return loss.detach()
