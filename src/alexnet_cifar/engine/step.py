"""The engine's step and the buffers it reads and writes, all allocated once on the device.

:meth:`TrainStep.run` is one training step, read top to bottom: gather the batch from the uint8
data set on the device, normalise, augment, forward, the Keras loss, backward, Keras-form SGD
and the weight average, then add the loss and the hits to accumulators that stay on the device.
The step finds its batch through a step counter that also lives on the device, so it takes no
argument from the host and reads nothing back: what a CUDA graph capture needs (``capture``).
"""

from __future__ import annotations

import contextlib

import torch

from ..augment import normalize, translate_flip
from ..distributed import DistContext, shard
from ..models import AlexNet
from ..optim import make_optimizer, recipe_loss, set_learning_rate
from ..recipe import Recipe
from .ema import WeightAverage
from .options import EngineOptions

__all__ = ["TrainStep"]


class TrainStep:
    """The step on the global batch at ``step_t``, and every tensor it touches."""

    def __init__(
        self,
        model: AlexNet,
        recipe: Recipe,
        device: torch.device,
        options: EngineOptions,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        dist: DistContext,
        base_forward: torch.nn.Module,
    ):
        self.model, self.recipe, self.device, self.dist = model, recipe, device, dist
        self.memory_format = (
            torch.channels_last if options.channels_last else torch.contiguous_format
        )
        self.bf16 = options.precision == "bf16"
        # A tensor learning rate can change under a captured graph; a float would be baked in.
        self.optimizer = make_optimizer(
            model,
            recipe,
            fused=bool(options.fused_optimizer),
            lr_tensor_device=device if options.cuda_graphs else None,
        )
        self.init_momentum()
        self.ema = WeightAverage(model, recipe.ema_decay, device)
        self.base_forward = base_forward  # the model (or its DDP wrapper), not compiled
        self.forward = base_forward  # what the step calls: the capture ladder sets it
        self.x_train, self.y_train = x_train, y_train
        n = self.n = len(y_train)
        self.batch_size = recipe.batch_size
        # Static buffers: the epoch's order and draws, the step counter and the accumulators.
        self.perm = torch.zeros(n, dtype=torch.long, device=device)
        self.dy = torch.zeros(n, dtype=torch.float32, device=device)
        self.dx = torch.zeros(n, dtype=torch.float32, device=device)
        self.flip = torch.zeros(n, dtype=torch.bool, device=device)
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._arange = torch.arange(self.batch_size, device=device)

    # ------------------------------------------------------------------ optimiser state
    def init_momentum(self) -> None:
        # Zero buffers give exactly SGD's first step (b = 0.9 * 0 + g = g) and let the step be
        # captured before it has ever run.
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                st = self.optimizer.state[p]
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def set_lr(self, lr: float) -> None:
        set_learning_rate(self.optimizer, lr, self.recipe.momentum_form == "keras")

    # ------------------------------------------------------------------ the step
    def run(self, b: int) -> None:
        """One training step on the global batch at ``step_t`` (``b`` rows, this rank's share
        of them under data parallelism); it changes device state only and reads nothing back.
        The gradients must be fresh (:meth:`eager`, or a captured graph's own zeroing)."""
        recipe, world = self.recipe, self.dist.world_size
        offset, size = shard(b, world, self.dist.rank)
        if self.dist.enabled:
            self.model.set_batch_shard(b, offset)  # dropout masks drawn for the global batch
        # 1. gather: this rank's rows of the batch, through the epoch's shuffled order
        pos = self.step_t * self.batch_size + offset + self._arange[:size]
        idx = self.perm[pos]
        y = self.y_train[idx]
        # 2. normalise: uint8 0..255 to (x - mean) / std per channel, as float NCHW
        x = normalize(self.x_train[idx])
        # 3. augment: the epoch's drawn shift (bilinear, 0 outside: the mean colour), then flip
        if recipe.augment:
            x = translate_flip(x, self.dy[pos], self.dx[pos], self.flip[pos])
        x = x.contiguous(memory_format=self.memory_format)
        # 4. forward, under bf16 autocast where asked (no weight cache: it would hold tensors
        #    across a graph capture)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.forward(x)
        # 5. loss: the recipe's cross-entropy (Keras' clipped one for the seed), summed
        ce_sum = recipe_loss(logits, y, recipe).sum()
        # 6. backward of the mean over the global batch (DDP averages the ranks' gradients,
        #    hence x world); the L2 term's gradient is the optimiser's weight decay
        (ce_sum * (world / b)).backward()
        # 7. metrics, on the device: Keras' loss adds the L2 term at the weights the loss was
        #    computed with; the first step with a non-finite loss is kept
        with torch.no_grad():
            loss = ce_sum.detach() + self.model.l2_penalty() * size
            self.loss_sum.add_(loss.double())
            self.correct.add_((logits.argmax(1) == y).sum())
            first_bad = (~torch.isfinite(loss)) & (self.bad_step < 0)
            self.bad_step.copy_(torch.where(first_bad, self.step_t, self.bad_step))
            self.step_t.add_(1)
        # 8. update: Keras-form SGD, then the weight average of the updated weights
        self.optimizer.step()
        self.ema.update()

    def eager(self, b: int) -> None:
        """The step as it runs without a graph: fresh gradients, then :meth:`run`."""
        self.optimizer.zero_grad(set_to_none=True)
        self.run(b)

    def accumulators(self) -> tuple[torch.Tensor, ...]:
        return (self.step_t, self.loss_sum, self.correct, self.bad_step)
