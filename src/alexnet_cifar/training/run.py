"""What one run is: the options it is asked for (:class:`TrainOptions`) and what it is built
of once its folder is locked (:class:`Run`: data on the device, model, engine, where it
starts). ``build`` makes a Run; the trainer, the checkpointer and the records read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..distributed import DistContext, resolve_device
from ..engine.core import Engine, EngineOptions, EpochSums
from ..models import AlexNet, AlexNetConfig, get_config
from ..recipe import Recipe
from ..variants import custom_shape
from .resume import run_identity
from .runlog import RunLog
from .selection import BestEpoch

__all__ = ["CHECKPOINT_EVERY", "Run", "TrainOptions"]

#: Seconds between checkpoints at most, by default: a hard kill loses at most this much
#: training, and a fast epoch does not pay for copying the state to the host each time.
CHECKPOINT_EVERY = 60.0


@dataclass
class TrainOptions:
    """Everything a training run needs; ``config.json`` records it.

    ``model``: a preset's name, or a shape (an ``AlexNetConfig``, e.g. from a variant file),
    which becomes its name and ``model_config`` (None for a preset).
    """

    model: str | AlexNetConfig
    out: Path
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    verify: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    val_split: int | None = None  # training images held out to choose the epoch; None: none
    num_classes: int = 10
    eval_batch_size: int | None = None  # None: the device's (engine.evaluate.EVAL_BATCH)
    engine: EngineOptions = field(default_factory=EngineOptions)
    resume: bool = False
    force: bool = False  # resume accepts more epochs
    quiet: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True
    # seconds between checkpoints at most (0: every epoch); one is always written at the end
    # and on a signal, so a kill -9 loses at most this much training
    checkpoint_every: float = CHECKPOINT_EVERY
    command: list[str] | None = None  # what config.json records as the command; None: sys.argv
    # stop cleanly after this epoch, with a checkpoint (the schedule stays the full run's);
    # not part of the run's identity: a later resume continues it
    stop_after: int | None = None
    model_config: AlexNetConfig | None = None  # the shape of a variant that is not a preset

    def __post_init__(self) -> None:
        if isinstance(self.model, AlexNetConfig):
            self.model, self.model_config = self.model.name, self.model
        self.model_config = custom_shape(self.model, self.model_config, self.num_classes)

    def model_shape(self) -> AlexNetConfig:
        """The shape the run builds: its own, or its preset's."""
        return self.model_config or get_config(self.model, self.num_classes)

    @property
    def last_epoch(self) -> int:
        """The epoch this invocation trains up to: the run's last, or ``stop_after``."""
        epochs = self.recipe.epochs
        return epochs if self.stop_after is None else min(epochs, self.stop_after)

    def run_identity(self) -> dict:
        """The fields that define what is computed: a resume must match them. The engine's
        numerics are those its options give on this run's device."""
        return run_identity(self, self.engine.numerics(resolve_device(self.device)))


@dataclass(frozen=True)
class Run:
    """One run as built in its locked folder, ready for its first (or next) epoch; what its
    records (config.json, the checkpoint, result.json, model.pt) are made from.

    ``history`` grows by one row per epoch and ``best`` follows the best validation epoch;
    nothing else changes once the run is built.
    """

    opts: TrainOptions  # as given, with the recipe a forced resume extended
    out: Path
    device: torch.device
    dist: DistContext
    runlog: RunLog
    classes: list[str]
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor  # the images each epoch is evaluated on: the split, else the test set
    y_val: torch.Tensor
    model: AlexNet
    engine: Engine
    data_gen: torch.Generator  # every draw of the data: shuffle, shifts, flips
    start_epoch: int
    start_step: int
    resumed_sums: EpochSums  # the totals of the epoch a resume continues (empty otherwise)
    history: list[dict]
    best: BestEpoch

    @property
    def epochs(self) -> int:
        return self.opts.recipe.epochs

    def run_identity(self) -> dict:
        """What this run computes (its checkpoint and model file record it), with the numerics
        its engine uses."""
        return run_identity(self.opts, self.engine.used_options.numerics(self.device))
