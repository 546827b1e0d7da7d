"""The training engine: the seed recipe's step, made fast without changing what it computes.

One step is: gather the batch from the uint8 data set on the device, normalise, shift and flip
it, forward, the Keras loss, backward, Keras-form SGD, and add the loss and the hits to
accumulators that stay on the device. Every tensor the step touches is allocated once, and the
step finds its batch through a step counter that also lives on the device, so the step takes no
argument from the host. That makes it capturable as a CUDA graph as it is: on CUDA each step is
one graph replay (one for the full batch, one for the short last batch), with the model
compiled by ``torch.compile`` inside it and autocast to bf16. On the CPU the same function runs
eagerly. Nothing reads a value back to the host inside an epoch.

Each speed-up is an option (``EngineOptions``); ``auto`` picks the fast configuration for the
device. ``precision="fp32"`` with no compile and no graphs is the plain computation.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn.parallel import DistributedDataParallel

from .augment import draw_seed_augmentation, normalize, translate_flip
from .distributed import DistContext, shard
from .engine_options import EngineOptions
from .evaluate import EvalResult, evaluate_model
from .models import AlexNet
from .optim import make_optimizer, plain_step, recipe_loss, set_learning_rate
from .recipe import Recipe

# EngineOptions and plain_step live in engine_options and optim; they are named here too.
__all__ = ["Engine", "EngineOptions", "EpochSums", "plain_step"]


@dataclass(frozen=True)
class EpochSums:
    """An epoch's running totals over all ranks: what a mid-epoch checkpoint carries."""

    loss_sum: float = 0.0  # summed per-image loss (L2 term included, as Keras reports it)
    correct: int = 0
    seen: int = 0  # images trained on
    seconds: float = 0.0  # training time, compile and capture left out

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> EpochSums:
        d = d or {}
        return cls(
            float(d.get("loss_sum", 0.0)),
            int(d.get("correct", 0)),
            int(d.get("seen", 0)),
            float(d.get("seconds", 0.0)),
        )


class Engine:
    """Runs training steps over a data set that lives on the device.

    Per epoch: ``begin_epoch`` (the epoch's shuffle and augmentation draws), then ``step()``
    once per batch, then ``read_metrics`` (the only read back to the host). The engine owns
    the batch sizes, the epoch's running totals and timing, and the weight average (EMA).
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
    ):
        self.device = device
        self.recipe = recipe
        self.dist = dist or DistContext()
        self.options = options.resolve(device, self.dist.world_size)
        o = self.options
        self.model = model
        if o.channels_last:
            model.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last if o.channels_last else torch.contiguous_format
        self.bf16 = o.precision == "bf16"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            # fp32 means fp32: no TF32 shortcuts in an exact run.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        # A tensor learning rate can change under a captured graph; a float would be baked in.
        self.optimizer = make_optimizer(
            model,
            recipe,
            fused=bool(o.fused_optimizer),
            lr_tensor_device=device if o.cuda_graphs else None,
        )
        self._init_momentum()
        # Weight averaging: the average is what gets evaluated and saved.
        self.ema = (
            [p.detach().clone() for p in model.parameters()] if recipe.ema_decay > 0 else None
        )
        self.ema_t = torch.zeros((), dtype=torch.float32, device=device)  # averaging steps
        self.forward = model
        if self.dist.enabled:
            self.forward = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if o.compile:
            compile_args = {"backend": o.compile_backend, "dynamic": False}
            if o.compile_mode:
                compile_args["mode"] = o.compile_mode
            self.forward = torch.compile(self.forward, **compile_args)

        self.x_train, self.y_train = x_train, y_train
        n = len(y_train)
        self.n = n
        self.batch_size = recipe.batch_size
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        # Static buffers: the epoch's order and draws, the step counter and the accumulators.
        self.perm = torch.zeros(n, dtype=torch.long, device=device)
        self.dy = torch.zeros(n, dtype=torch.float32, device=device)
        self.dx = torch.zeros(n, dtype=torch.float32, device=device)
        self.flip = torch.zeros(n, dtype=torch.bool, device=device)
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.epoch = 0
        self._arange = torch.arange(self.batch_size, device=device)
        # Host-side bookkeeping of the epoch: images seen (all ranks, this rank) and time.
        self.seen = self._seen_at_t0 = 0
        self.local_seen = 0
        self._seconds_before = 0.0
        self._t0 = time.perf_counter()
        self._setup_at_t0 = 0.0
        self._last_peek = 0.0
        self._prepared: dict[int, torch.cuda.CUDAGraph | None] = {}
        self._pool = None
        self.setup_seconds = 0.0  # compile, warm-up and capture, kept out of the epoch times
        self._host = None

    # ------------------------------------------------------------------ optimiser state
    def _init_momentum(self) -> None:
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

    def state_dict(self) -> dict:
        """What a checkpoint needs of the training state: weights, optimiser (with its
        momentum) and the weight average."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer_state(),
            "engine": self.ema_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.load_optimizer_state(state["optimizer"])
        self.load_ema_state(state.get("engine"))

    def load_optimizer_state(self, sd: dict) -> None:
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(sd)
        for g, old in zip(self.optimizer.param_groups, lrs):
            value = float(g["lr"])
            if isinstance(old, torch.Tensor):
                old.fill_(value)
                g["lr"] = old
            else:
                g["lr"] = value
        self._init_momentum()

    def set_lr(self, lr: float) -> None:
        set_learning_rate(self.optimizer, lr, self.recipe.momentum_form == "keras")

    # ------------------------------------------------------------------ the step
    def _inputs(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch (of ``b`` rows) at ``step_t``: gathered,
        normalised, shifted and flipped on the device."""
        offset, size = shard(b, self.dist.world_size, self.dist.rank)
        pos = self.step_t * self.batch_size + offset + self._arange[:size]
        idx = self.perm[pos]
        x = normalize(self.x_train[idx])
        if self.recipe.augment:
            x = translate_flip(x, self.dy[pos], self.dx[pos], self.flip[pos])
        return x.contiguous(memory_format=self.memory_format), self.y_train[idx]

    def _device_step(self, b: int) -> None:
        """One step on the global batch at ``step_t`` of ``b`` rows; device state only."""
        recipe, world = self.recipe, self.dist.world_size
        offset, size = shard(b, world, self.dist.rank)
        if self.dist.enabled:
            self.model.set_batch_shard(b, offset)
        x, y = self._inputs(b)
        # No autocast weight cache: it would hold tensors across a graph capture.
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False
        ):
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
        if self.ema is not None:
            with torch.no_grad():
                # The decay ramps up as (1 + t) / (10 + t) to ema_decay, so a short run's
                # average is not stuck near the initial weights.
                self.ema_t.add_(1)
                d = torch.clamp((1 + self.ema_t) / (10 + self.ema_t), max=recipe.ema_decay)
                params = [p.detach() for p in self.model.parameters()]
                torch._foreach_mul_(self.ema, d)
                torch._foreach_add_(self.ema, torch._foreach_mul(params, 1 - d))

    def batch_rows(self, step: int) -> int:
        """Rows of the global batch of step ``step`` (the last one of an epoch may be short)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def step(self, step: int) -> None:
        """Run step ``step`` of the epoch (the device counter must already be there)."""
        if self.recipe.per_step_lr:
            self.set_lr(self.recipe.lr_at(self.epoch, step, self.steps_per_epoch))
        b = self.batch_rows(step)
        if b not in self._prepared:
            self._prepare(b)
        graph = self._prepared[b]
        if graph is not None:
            graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._device_step(b)
        self.seen += b
        self.local_seen += shard(b, self.dist.world_size, self.dist.rank)[1]

    # ------------------------------------------------------------------ compile and capture
    def _snapshot(self) -> dict:
        params = [p.detach().clone() for p in self.model.parameters()]
        bufs = [self.optimizer.state[p]["momentum_buffer"].clone() for p in self.model.parameters()]
        return {
            "params": params,
            "bufs": bufs,
            "ema": [t.clone() for t in self.ema] if self.ema is not None else None,
            "ema_t": self.ema_t.clone(),
            "acc": [t.clone() for t in (self.step_t, self.loss_sum, self.correct, self.bad_step)],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        }

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        for p, v in zip(self.model.parameters(), snap["params"]):
            p.copy_(v)
        for p, v in zip(self.model.parameters(), snap["bufs"]):
            self.optimizer.state[p]["momentum_buffer"].copy_(v)
        if snap["ema"] is not None:
            torch._foreach_copy_(self.ema, snap["ema"])
        self.ema_t.copy_(snap["ema_t"])
        for t, v in zip((self.step_t, self.loss_sum, self.correct, self.bad_step), snap["acc"]):
            t.copy_(v)
        torch.set_rng_state(snap["rng_cpu"])
        if snap["rng_cuda"] is not None:
            torch.cuda.set_rng_state(snap["rng_cuda"], self.device)

    def _prepare(self, b: int) -> None:
        """Compile (warm-up) and capture the step for batch size ``b``, leaving no trace.

        Warm-up steps train for real, so the parameters, momentum, accumulators and RNG states
        are snapshotted first and restored afterwards: a run computes the same with or without
        this preparation.
        """
        o = self.options
        if not (o.compile or o.cuda_graphs):
            self._prepared[b] = None
            return
        t0 = time.perf_counter()
        snap = self._snapshot()
        graph = None
        try:
            if o.cuda_graphs:
                graph = self._capture(b)
            else:
                for _ in range(2):
                    self.step_t.zero_()  # warm up on the epoch's first batch: always in range
                    self.optimizer.zero_grad(set_to_none=True)
                    self._device_step(b)
        except Exception as e:  # a failed capture must not cost the run
            if not o.cuda_graphs:
                raise
            warnings.warn(
                f"CUDA graph capture failed ({type(e).__name__}: {e}); running steps without "
                "graphs (--no-cuda-graphs silences this)",
                stacklevel=2,
            )
            self.options = replace(o, cuda_graphs=False)
            graph = None
        finally:
            self._restore(snap)
            self.optimizer.zero_grad(set_to_none=True)
            del snap
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._prepared[b] = graph
        self.setup_seconds += time.perf_counter() - t0

    def _capture(self, b: int) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.step_t.zero_()
                self.optimizer.zero_grad(set_to_none=True)
                self._device_step(b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # Gradients are allocated inside the graph, so each replay writes (not adds) them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._device_step(b)
        self._pool = graph.pool()
        return graph

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
        """Load the epoch's draws (order, dy, dx, flip; see :meth:`draw_epoch`) into the
        static buffers and reset the running totals, or set them to ``resumed``, a resumed
        epoch's totals (summed over the ranks when saved: rank 0 carries the sums, the count
        and time are everyone's)."""
        perm, dy, dx, flip = draws
        resumed = resumed or EpochSums()
        self.epoch = epoch
        self.set_lr(self.recipe.lr_at(epoch, start_step, self.steps_per_epoch))
        for buffer, values in ((self.perm, perm), (self.dy, dy), (self.dx, dx), (self.flip, flip)):
            buffer.copy_(values.to(self.device), non_blocking=True)
        own = resumed if self.dist.is_main else EpochSums()
        self.step_t.fill_(start_step)
        self.loss_sum.fill_(own.loss_sum)
        self.correct.fill_(own.correct)
        self.bad_step.fill_(-1)
        self.seen = self._seen_at_t0 = resumed.seen
        self.local_seen = 0
        self._seconds_before = resumed.seconds
        self._t0 = time.perf_counter()
        self._setup_at_t0 = self.setup_seconds
        self._last_peek = 0.0

    def epoch_seconds(self) -> float:
        """Wall time of this epoch so far, compile and capture left out."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        spent = time.perf_counter() - self._t0 - (self.setup_seconds - self._setup_at_t0)
        return self._seconds_before + spent

    def images_per_second(self) -> float:
        """This epoch's training speed since it (re)started, all ranks together."""
        spent = time.perf_counter() - self._t0 - (self.setup_seconds - self._setup_at_t0)
        return (self.seen - self._seen_at_t0) / max(spent, 1e-9)

    def read_metrics(self) -> tuple[EpochSums, int]:
        """(the epoch's totals over all ranks, the first non-finite step or -1): one
        synchronising read."""
        sums = torch.stack([self.loss_sum, self.correct.double()])
        big = torch.iinfo(torch.long).max
        bad = torch.where(self.bad_step < 0, big, self.bad_step).reshape(1)
        self.dist.all_reduce(sums, "sum")
        self.dist.all_reduce(bad, "min")
        sums, bad = sums.cpu(), int(bad.cpu())
        totals = EpochSums(float(sums[0]), int(sums[1]), self.seen, self.epoch_seconds())
        return totals, (-1 if bad == big else bad)

    def ema_state(self) -> dict:
        """The weight average and its step count, for a checkpoint."""
        if self.ema is None:
            return {"ema": None}
        return {"ema": [t.detach() for t in self.ema], "ema_t": self.ema_t.detach()}

    @torch.no_grad()
    def load_ema_state(self, state: dict | None) -> None:
        ema = (state or {}).get("ema")
        if self.ema is not None and ema is not None:
            torch._foreach_copy_(self.ema, [t.to(self.device) for t in ema])
            self.ema_t.copy_(state["ema_t"])

    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str] | None = None,
        batch_size: int = 500,
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

    def progress_postfix(self, snapshot: tuple[float, int, int]) -> dict:
        """What a progress bar shows of a :meth:`peek_metrics` snapshot."""
        seen = max(self.local_seen, 1)
        return {
            "loss": f"{snapshot[0] / seen:.4f}",
            "acc": f"{snapshot[1] / seen:.4f}",
            "img_s": f"{self.images_per_second():.0f}",
        }

    @contextlib.contextmanager
    def evaluated_weights(self):
        """The weights to evaluate and save: the moving average when the recipe keeps one."""
        if self.ema is None:
            yield
            return
        params = [p.detach() for p in self.model.parameters()]
        backup = [p.clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)

    def peek_metrics(self, every: float = 1.0) -> tuple[float, int, int] | None:
        """This rank's running (loss sum, correct, first non-finite step or -1), without
        waiting for the device; None when there is nothing new to show.

        On the CPU the totals are read directly, at every call. On CUDA at most every
        ``every`` seconds: an asynchronous copy starts, and the previous one is returned once
        it has landed.
        """
        if self.device.type != "cuda":
            return float(self.loss_sum), int(self.correct), int(self.bad_step)
        now = time.perf_counter()
        result = None
        if self._host is not None and self._host[1].query():
            h = self._host[0]
            result = (float(h[0]), int(h[1]), int(h[2]))
            self._host = None
        if self._host is None and now - self._last_peek > every:
            self._last_peek = now
            buf = torch.empty(3, dtype=torch.float64, pin_memory=True)
            buf.copy_(
                torch.stack([self.loss_sum, self.correct.double(), self.bad_step.double()]),
                non_blocking=True,
            )
            ev = torch.cuda.Event()
            ev.record()
            self._host = (buf, ev)
        return result
