"""How one training step runs: the options that choose the fast path (``options``), the step
itself (``step``), its capture into a CUDA graph with a fallback ladder (``capture``), the
weight average (``ema``), the epoch's sums read back once (``epoch``), the ``Engine`` that ties
them together (``core``), evaluation (``evaluate``), the step benchmark (``bench``) and
whether a run's batches fit in the device's memory (``memory``).

Built on the package root (models, data, augment, recipe, optim, distributed); knows nothing of
run folders, checkpoints or the command line.
"""

from .core import Engine, EpochSums
from .options import EngineOptions

__all__ = ["Engine", "EngineOptions", "EpochSums"]
