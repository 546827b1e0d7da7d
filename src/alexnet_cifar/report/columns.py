"""The report's tables as column specs: each column's header and the cell it shows for a run.

The headers say which images a number comes from. A run without a validation split evaluates
the test set after each epoch and chooses its best epoch by it; a run with one chooses it by its
validation images and evaluates the test set at the end. ``held`` is what the runs of a table
hold per epoch: "test", "validation", or "mixed" (then each cell says which).
"""

from __future__ import annotations

from . import cells
from .document import Column, literal
from .numbers import NOT_IN_POST, held_out

__all__ = ["best_accuracy_name", "post_columns", "result_columns"]

_SHORT = {"validation": "val.", "test": "test"}


def best_accuracy_name(held: str) -> str:
    """The name of the headline test accuracy of runs that hold ``held`` per epoch."""
    return {
        "test": "best test acc.",
        "validation": "test acc. at best val. epoch",
        "mixed": "test acc. at best epoch",
    }[held]


def _epoch_cell(key: str, held: str):
    """An epoch, followed where runs differ by the images that chose it: ``3 (val.)``."""
    if held != "mixed":
        return lambda s: str(s[key])
    return lambda s: f"{s[key]} ({_SHORT[held_out(s)]})"


def result_columns(held: str) -> list[Column]:
    """The Results table."""
    best_epoch = {
        "test": "best at epoch",
        "validation": "best val. epoch",
        "mixed": "best epoch (chosen by)",
    }[held]
    lowest = {
        "test": "lowest test loss: epoch",
        "validation": "lowest val. loss: epoch",
        "mixed": "lowest val./test loss: epoch",
    }[held]
    columns = [
        Column("variant", cells.variant),
        Column("epochs", cells.epochs),
        Column("params", lambda s: cells.count(s["params"]), numeric=True),
        Column("MACs / image", lambda s: cells.giga_macs(s["macs"]), numeric=True),
        Column("checkpoint MB", lambda s: cells.megabytes(s["checkpoint_mb"]), numeric=True),
    ]
    if held != "test":
        columns.append(
            Column("best val. acc.", lambda s: cells.percent(s.get("best_val_accuracy")), True)
        )
    columns += [
        Column(
            best_accuracy_name(held), lambda s: cells.percent(s["best_test_accuracy"]), True
        ),
        Column(best_epoch, _epoch_cell("best_epoch", held), numeric=True),
        Column("final test acc.", lambda s: cells.percent(s["final_test_accuracy"]), True),
        Column("final train acc.", lambda s: cells.percent(s["final_train_accuracy"]), True),
        Column("gap", lambda s: cells.points(s["generalisation_gap"]), numeric=True),
        Column(lowest, _epoch_cell("lowest_test_loss_epoch", held), numeric=True),
        Column("s / epoch", lambda s: cells.seconds(s["seconds_per_epoch"]), numeric=True),
        Column("total time", lambda s: cells.duration(s["total_seconds"]), numeric=True),
        Column("device", lambda s: literal(s["device"])),
    ]
    return columns


def post_columns(held: str) -> list[Column]:
    """The Against the post table: the post's figures beside ours."""
    ours = {
        "test": "best test accuracy",
        "validation": "test accuracy at best val. epoch",
        "mixed": "test accuracy at best epoch",
    }[held]
    return [
        Column("variant", cells.variant),
        Column("params: post", _post(lambda s: cells.count(s["published_params"])), True),
        Column("params: ours", lambda s: cells.count(s["params"]), numeric=True),
        Column("difference", lambda s: cells.signed_count(s["params_difference"]), True),
        Column("test accuracy: post", _post(lambda s: s["published_test_accuracy"] or "–"), True),
        Column(f"{ours}: ours", lambda s: cells.percent(s["best_test_accuracy"]), True),
        Column("difference", lambda s: cells.points(s["test_accuracy_difference"]), True),
        Column("overfitting: post", _post(lambda s: s["post_overfitting"] or "–")),
        Column("overfitting: ours", lambda s: s["overfitting_verdict"]),
    ]


def _post(cell):
    """A cell of the post's figures: "not in the post" for a variant of the user's own."""
    return lambda s: cell(s) if s.get("in_post", True) else NOT_IN_POST
