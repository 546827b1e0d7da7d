"""Choosing the epoch on held-out training images, and the test set's single use at the end.

With a validation split (``val_split``) every epoch is evaluated on the held-out images, and
the weights of the first epoch with the best validation accuracy are kept (in the checkpoint,
so a resume keeps them too). The test set is evaluated once, when training ends: on the final
weights and on the kept ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..engine.core import Engine
from ..engine.evaluate import EvalResult

__all__ = ["BestEpoch"]


class BestEpoch:
    """The best validation epoch so far and its evaluated weights (on the CPU)."""

    def __init__(self, state: dict | None = None):
        self.state = state  # {"epoch", "val_accuracy", "model"} or None before the first epoch

    def offer(self, row: dict, engine: Engine) -> None:
        """Keep this epoch's weights when its validation accuracy beats the best so far."""
        if self.state is not None and row["val_accuracy"] <= self.state["val_accuracy"]:
            return
        with engine.evaluated_weights():
            weights = {
                k: v.detach().to("cpu", copy=True) for k, v in engine.model.state_dict().items()
            }
        self.state = {"epoch": row["epoch"], "val_accuracy": row["val_accuracy"], "model": weights}

    @contextlib.contextmanager
    def loaded(self, model: torch.nn.Module):
        """``model`` holds the kept weights inside the block, its own again after it."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state["model"])
        try:
            yield model
        finally:
            model.load_state_dict(backup)

    def test_at_the_end(
        self, model: torch.nn.Module, last_epoch: int, evaluate: Callable[..., EvalResult]
    ) -> tuple[EvalResult, EvalResult]:
        """(the final weights on the test set, the kept weights on the test set);
        ``evaluate(description, averaged=...)`` evaluates the test set."""
        final = evaluate("test: final weights", averaged=True)
        if self.state["epoch"] == last_epoch:
            return final, final
        with self.loaded(model):
            return final, evaluate("test: best epoch", averaged=False)
