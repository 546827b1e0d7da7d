"""The engine's step and the buffers it reads and writes, all allocated once on the device.

One step is: gather the batch from the uint8 data set on the device, normalise, shift and flip
it, forward, the Keras loss, backward, Keras-form SGD, the weight average, and add the loss and
the hits to accumulators that stay on the device. The step finds its batch through a step
counter that also lives on the device, so it takes no argument from the host and reads nothing
back: what a CUDA graph capture needs (``capture``).
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

__all__ = ["TrainStep", "like_param"]


def like_param(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` on ``param``'s device, in its dtype and memory layout (strides): what CUDA's
    fused SGD requires of a momentum buffer, whatever layout the checkpoint was saved in."""
    out = torch.empty_like(param, memory_format=torch.preserve_format)
    with torch.no_grad():
        out.copy_(value)
    return out


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

    def optimizer_state(self) -> dict:
        """The optimiser's state_dict with plain-float learning rates (device independent)."""
        sd = self.optimizer.state_dict()
        for g in sd["param_groups"]:
            g["lr"] = float(g["lr"])
        return sd

    def load_optimizer_state(self, sd: dict) -> None:
        """Load ``sd`` into the optimiser's own tensors: the learning-rate tensors and the
        momentum buffers stay the same objects (a captured step reads them) and keep their
        parameters' layout, whichever layout the checkpoint was saved in."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        own = {p: self.optimizer.state[p].get("momentum_buffer") for p in self.model.parameters()}
        self.optimizer.load_state_dict(sd)
        for g, old in zip(self.optimizer.param_groups, lrs):
            value = float(g["lr"])
            if isinstance(old, torch.Tensor):
                old.fill_(value)
                g["lr"] = old
            else:
                g["lr"] = value
        for p, mine in own.items():
            st = self.optimizer.state[p]
            loaded = st.get("momentum_buffer")
            if loaded is None:
                continue
            if mine is not None and mine.shape == loaded.shape:
                with torch.no_grad():
                    mine.copy_(loaded)  # copy_ keeps the destination's strides
                st["momentum_buffer"] = mine
            else:
                st["momentum_buffer"] = like_param(loaded, p)
        self.init_momentum()

    def set_lr(self, lr: float) -> None:
        set_learning_rate(self.optimizer, lr, self.recipe.momentum_form == "keras")

    # ------------------------------------------------------------------ the step
    def inputs(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch (of ``b`` rows) at ``step_t``: gathered,
        normalised, shifted and flipped on the device."""
        offset, size = shard(b, self.dist.world_size, self.dist.rank)
        pos = self.step_t * self.batch_size + offset + self._arange[:size]
        idx = self.perm[pos]
        x = normalize(self.x_train[idx])
        if self.recipe.augment:
            x = translate_flip(x, self.dy[pos], self.dx[pos], self.flip[pos])
        return x.contiguous(memory_format=self.memory_format), self.y_train[idx]

    def run(self, b: int) -> None:
        """One step on the global batch at ``step_t`` of ``b`` rows; device state only."""
        recipe, world = self.recipe, self.dist.world_size
        offset, size = shard(b, world, self.dist.rank)
        if self.dist.enabled:
            self.model.set_batch_shard(b, offset)
        x, y = self.inputs(b)
        # No autocast weight cache: it would hold tensors across a graph capture.
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.forward(x)
        ce_sum = recipe_loss(logits, y, recipe).sum()
        # The mean over the global batch: DDP averages the ranks' gradients, hence x world.
        (ce_sum * (world / b)).backward()
        with torch.no_grad():
            # Keras' loss adds the L2 term at the weights the loss was computed with.
            loss = ce_sum.detach() + self.model.l2_penalty() * size
            self.loss_sum.add_(loss.double())
            self.correct.add_((logits.argmax(1) == y).sum())
            first_bad = (~torch.isfinite(loss)) & (self.bad_step < 0)
            self.bad_step.copy_(torch.where(first_bad, self.step_t, self.bad_step))
            self.step_t.add_(1)
        self.optimizer.step()
        self.ema.update()

    def eager(self, b: int) -> None:
        """The step as it runs without a graph: fresh gradients, then :meth:`run`."""
        self.optimizer.zero_grad(set_to_none=True)
        self.run(b)

    def accumulators(self) -> tuple[torch.Tensor, ...]:
        return (self.step_t, self.loss_sum, self.correct, self.bad_step)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict:
        """Everything a step changes (weights, a batch normalisation's running statistics,
        momentum, average, counters, random states)."""
        params = list(self.model.parameters())
        return {
            "params": [p.detach().clone() for p in params],
            "buffers": [b.clone() for b in self.model.buffers()],
            "bufs": [self.optimizer.state[p]["momentum_buffer"].clone() for p in params],
            "ema": self.ema.snapshot(),
            "acc": [t.clone() for t in self.accumulators()],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        }

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        for p, v in zip(self.model.parameters(), snap["params"]):
            p.copy_(v)
        for b, v in zip(self.model.buffers(), snap["buffers"]):
            b.copy_(v)
        for p, v in zip(self.model.parameters(), snap["bufs"]):
            self.optimizer.state[p]["momentum_buffer"].copy_(v)
        self.ema.restore(snap["ema"])
        for t, v in zip(self.accumulators(), snap["acc"]):
            t.copy_(v)
        torch.set_rng_state(snap["rng_cpu"])
        if snap["rng_cuda"] is not None:
            torch.cuda.set_rng_state(snap["rng_cuda"], self.device)
