"""The training engine: the seed recipe's step, made fast without changing what it computes.

One step (``step.TrainStep.run``, which reads as the step's walk-through) gathers the batch
from the uint8 data set on the device, normalises, shifts and flips it, runs forward, the Keras
loss, backward, Keras-form SGD and the weight average (``ema``), and adds the loss and hits to
accumulators on the device. It takes no argument from the host and reads nothing back, so on
CUDA it is captured as one graph per batch size, with the model compiled inside and autocast to
bf16; a ladder falls back a rung at a time when that fails where it runs, and records why
(``capture``). The epoch's totals, clock and metrics are read on the host side (``epoch``).

Each speed-up is an option (``EngineOptions``); ``auto`` picks the fast configuration for the
device. ``precision="fp32"`` with no compile and no graphs is the plain computation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from ..augment import draw_seed_augmentation
from ..distributed import DistContext
from ..errors import SettingError
from ..models import AlexNet
from ..recipe import Recipe
from .capture import CudaGraphs, EmulatedGraphs, StepLadder
from .ema import like
from .epoch import EpochMeter, EpochSums
from .evaluate import EVAL_BATCH, EvalResult, evaluate_model
from .options import EngineOptions
from .step import TrainStep

__all__ = ["Engine", "EngineOptions", "EpochSums"]


def _synchronise_batch_norm(model: AlexNet, device: torch.device) -> None:
    """Under data parallelism a batch normalisation takes its statistics over the global
    batch, as one process does (``SyncBatchNorm``, in place; its state is named as before)."""
    if not model.batch_norms():
        return
    if device.type != "cuda":
        raise SettingError(
            "a model with batch_norm trains data-parallel only on CUDA (the batch statistics "
            "are synchronised over the ranks there); train it in one process"
        )
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class Engine:
    """Runs training steps over a data set that lives on the device.

    Set-up: ``prepare()`` (compile and capture, on the best rung that works; else done at the
    first step of each batch size). Per epoch: ``begin_epoch`` (the epoch's shuffle and
    augmentation draws), then ``step()`` once per batch, then ``read_metrics`` (the only read
    back to the host).
    """

    def __init__(
        self,
        model: AlexNet,
        recipe: Recipe,
        device: torch.device,
        options: EngineOptions,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        dist: DistContext | None = None,
        graphs: CudaGraphs | EmulatedGraphs | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        """``graphs``: how steps are captured (default: CUDA graphs on CUDA; an
        :class:`EmulatedGraphs` rehearses them on the CPU). ``warn``: where a fallback's one
        line goes (default: a Python warning)."""
        self.device = device
        self.recipe = recipe
        self.dist = dist or DistContext()
        if graphs is None and device.type == "cuda":
            graphs = CudaGraphs(device)
        self.options = o = options.resolve(device, self.dist.world_size, graphs is not None)
        self.model = model
        if o.channels_last:
            model.to(memory_format=torch.channels_last)
        forward = model
        if self.dist.enabled:
            _synchronise_batch_norm(model, device)
            forward = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.core = TrainStep(model, recipe, device, o, x_train, y_train, self.dist, forward)
        self.ladder = StepLadder(self.core, o, graphs, warn)
        self.meter = EpochMeter(self.core, device, self.dist, lambda: self.ladder.setup_seconds)
        self.optimizer = self.core.optimizer
        self.n = self.core.n
        self.batch_size = recipe.batch_size
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.epoch = 0

    # ------------------------------------------------------------------ what is used
    @property
    def used_options(self) -> EngineOptions:
        """The options of the rung in use (``options`` are the resolved request)."""
        return self.ladder.used

    def engine_record(self) -> dict:
        """{"requested", "used", "fallbacks"}: what a run records of its engine."""
        return self.ladder.record()

    @property
    def setup_seconds(self) -> float:
        return self.ladder.setup_seconds

    @property
    def step_t(self) -> torch.Tensor:
        return self.core.step_t

    @property
    def ema(self) -> list[torch.Tensor] | None:
        return self.core.ema.avg

    def prepare(self) -> None:
        """Compile and capture now for the epoch's batch sizes (full, and a short last one),
        so the configuration used is known before training starts."""
        for b in sorted({self.batch_rows(0), self.batch_rows(self.steps_per_epoch - 1)}):
            if b not in self.ladder.prepared:
                self.ladder.prepare(b)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """What a checkpoint needs of the training state: weights, optimiser (with its
        momentum; plain-float learning rates, device independent) and the weight average."""
        sd = self.optimizer.state_dict()
        for g in sd["param_groups"]:
            g["lr"] = float(g["lr"])
        return {"model": self.model.state_dict(), "optimizer": sd, "engine": self.core.ema.state()}

    def load_state_dict(self, state: dict) -> None:
        """Load a checkpoint's training state into this engine's own tensors, each laid out
        like its parameter whatever layout the checkpoint was saved in."""
        self.model.load_state_dict(state["model"])
        self._load_optimizer_state(state["optimizer"])
        self.core.ema.load(state.get("engine"))

    def _load_optimizer_state(self, sd: dict) -> None:
        """Load ``sd`` into the optimiser's own tensors: the learning-rate tensors and the
        momentum buffers stay the same objects (a captured step reads them) and keep their
        parameters' layout, whichever layout the checkpoint was saved in."""
        opt = self.optimizer
        lrs = [g["lr"] for g in opt.param_groups]
        own = {p: opt.state[p].get("momentum_buffer") for p in self.model.parameters()}
        opt.load_state_dict(sd)
        for g, old in zip(opt.param_groups, lrs):
            value = float(g["lr"])
            if isinstance(old, torch.Tensor):
                old.fill_(value)
                g["lr"] = old
            else:
                g["lr"] = value
        for p, mine in own.items():
            st = opt.state[p]
            loaded = st.get("momentum_buffer")
            if loaded is None:
                continue
            if mine is not None and mine.shape == loaded.shape:
                with torch.no_grad():
                    mine.copy_(loaded)  # copy_ keeps the destination's strides
                st["momentum_buffer"] = mine
            else:
                st["momentum_buffer"] = like(loaded, p)
        self.core.init_momentum()

    def set_lr(self, lr: float) -> None:
        self.core.set_lr(lr)

    # ------------------------------------------------------------------ the step
    def batch_rows(self, step: int) -> int:
        """Rows of the global batch of step ``step`` (the last one of an epoch may be short)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def step(self, step: int) -> None:
        """Run step ``step`` of the epoch (the device counter must already be there)."""
        if self.recipe.per_step_lr:
            self.set_lr(self.recipe.lr_at(self.epoch, step, self.steps_per_epoch))
        b = self.batch_rows(step)
        self.ladder.run(b)
        self.meter.count(b)

    # ------------------------------------------------------------------ epochs and metrics
    def draw_epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The epoch's (order, dy, dx, flip), drawn on the CPU from ``generator``: every device
        and rank draws the same, and a resumed run redraws them from the saved state."""
        perm = torch.randperm(self.n, generator=generator)
        dy, dx, flip = draw_seed_augmentation(
            self.n, generator, None, self.recipe.max_shift, self.recipe.flip_p
        )
        return perm, dy, dx, flip

    def begin_epoch(
        self,
        epoch: int,
        draws: tuple[torch.Tensor, ...],
        start_step: int = 0,
        resumed: EpochSums | None = None,
    ) -> None:
        """Load the epoch's draws (see :meth:`draw_epoch`) into the static buffers and reset
        the running totals, or set them to ``resumed``, a resumed epoch's totals."""
        self.epoch = epoch
        self.set_lr(self.recipe.lr_at(epoch, start_step, self.steps_per_epoch))
        c = self.core
        for buffer, values in zip((c.perm, c.dy, c.dx, c.flip), draws):
            buffer.copy_(values.to(self.device), non_blocking=True)
        self.meter.begin(start_step, resumed or EpochSums())

    def epoch_seconds(self) -> float:
        return self.meter.epoch_seconds()

    def read_metrics(self) -> tuple[EpochSums, int]:
        return self.meter.read_metrics()

    def peek_metrics(self, every: float = 1.0) -> tuple[float, int, int] | None:
        return self.meter.peek(every)

    def progress_postfix(self, snapshot: tuple[float, int, int]) -> dict:
        return self.meter.progress_postfix(snapshot)

    def evaluated_weights(self):
        """The weights to evaluate and save: the moving average when the recipe keeps one."""
        return self.core.ema.evaluated_weights()

    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str] | None = None,
        batch_size: int = EVAL_BATCH["cpu"],
        on_batch=None,
        averaged: bool = True,
    ) -> EvalResult:
        """Loss, accuracy and confusion matrix as the recipe evaluates (its weight average,
        its flip-averaging, its loss) in the engine's layout and precision, summed over ranks.
        ``averaged=False``: the model's weights as they are (a snapshot of evaluated weights)."""
        with self.evaluated_weights() if averaged else contextlib.nullcontext():
            return evaluate_model(
                self.model,
                images,
                labels,
                classes=classes,
                batch_size=batch_size,
                loss_clip_eps=self.recipe.loss_clip_eps,
                channels_last=bool(self.options.channels_last),
                precision=self.options.precision,
                tta_flip=self.recipe.tta_flip,
                dist=self.dist,
                on_batch=on_batch,
            )
