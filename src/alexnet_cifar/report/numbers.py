"""The numbers of one run, and the post's published figures they are compared with.

The generalisation gap is the final train accuracy minus the final test accuracy; the train
figures are the epoch averages Keras reports (augmentation and dropout on); a run overfits when
its test loss ends more than ``OVERFIT_RISE`` above its minimum.
"""

from __future__ import annotations

import math

from ..data import TEST_IMAGES, TRAIN_IMAGES
from ..models import PRESETS, AlexNetConfig
from ..recipe import Recipe
from ..variants import layer_table
from .runs import RunData

__all__ = [
    "NOT_IN_POST",
    "OVERFIT_RISE",
    "POST_BEST",
    "POST_BEST_ACCURACY",
    "POST_OVERFITTING",
    "PUBLISHED_ACCURACY",
    "SEED_BATCH",
    "SEED_EPOCHS",
    "SEED_TEST",
    "SEED_TRAIN",
    "held_out",
    "held_out_of",
    "run_summary",
]

#: Test accuracy the post reports, as (value compared against, the post's words).
PUBLISHED_ACCURACY: dict[str, tuple[float, str]] = {
    "alexnet_slim": (0.90, "90%+"),
    "alexnet_slim_regular": (0.92, "~92%"),
}
#: The post's verdict: the variant with the highest accuracy, and that accuracy in words.
POST_BEST = "alexnet_slim_regular"
POST_BEST_ACCURACY = f"about {PUBLISHED_ACCURACY[POST_BEST][0]:.0%}"
#: What the post says about each variant's overfitting.
POST_OVERFITTING: dict[str, str] = {
    "alexnet": 'heavy: test loss falls, then climbs (the "Nike swoosh")',
    "alexnet_slim": "still overfits",
    "alexnet_slim_regular": "less than alexnet_slim",
    "alexnet_thinner_2": "somewhat: test loss rises late",
    "alexnet_thinner_4": "none: test loss does not rise",
}
#: What the post's columns say of a variant of the user's own.
NOT_IN_POST = "not in the post"
# The post's setting: its recipe's epochs and batch size, all train and test images.
SEED_EPOCHS, SEED_BATCH = Recipe().epochs, Recipe().batch_size
SEED_TRAIN, SEED_TEST = TRAIN_IMAGES, TEST_IMAGES
#: A run overfits when its final test loss exceeds its lowest test loss by more than this share.
OVERFIT_RISE = 0.05


def _argbest(values: list[float], better) -> int:
    """Index of the first best value, ignoring NaN."""
    best = None
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        if best is None or better(v, values[best]):
            best = i
    return 0 if best is None else best


def _device_text(config: dict) -> str:
    device = str(config.get("device", "?"))
    gpu = (config.get("versions") or {}).get("gpu")
    return f"{device} ({gpu})" if gpu else device


def _overfitting(
    loss: list[float], lowest_at: int, held: str
) -> tuple[bool | None, str, str, float | None]:
    """(overfits, verdict, the verdict with its reason, rise of the final loss over its
    minimum as a share) of the per-epoch ``held`` ("validation" or "test") loss.

    ``overfits`` is None for a single epoch: too short to tell. The verdict is the same few
    words wherever the report names it (the note starts with them).
    """
    n = len(loss)
    lowest, final = loss[lowest_at], loss[-1]
    if not math.isfinite(final):
        note = f"diverged: the {held} loss became NaN or infinite by epoch {n}: the run diverged"
        return None, "diverged", note, None
    rise = (final - lowest) / lowest if lowest > 0 and math.isfinite(lowest) else None
    if n < 2:
        return None, "too short to tell", "too short to tell: one epoch", rise
    if lowest_at == n - 1:
        word = "no sign yet"
        return False, word, f"{word}: {held} loss still falling at the last epoch", rise
    if rise is not None and rise > OVERFIT_RISE:
        note = (
            f"overfits: {held} loss rose {rise:.0%} after its minimum ({lowest:.3f} at epoch "
            f"{lowest_at + 1}, {final:.3f} at epoch {n})"
        )
        return True, "overfits", note, rise
    word = "little"
    note = (
        f"{word}: {held} loss ends within {OVERFIT_RISE:.0%} of its minimum (epoch "
        f"{lowest_at + 1})"
    )
    return False, word, note, rise


def held_out(summary: dict) -> str:
    """Which images a run's per-epoch columns (val_*) measure: "validation" or "test"."""
    return "validation" if summary.get("epoch_chosen_by") == "validation" else "test"


def held_out_of(summaries: list[dict]) -> str:
    """"validation", "test", or "mixed" when some runs have a split and some do not."""
    kinds = {held_out(s) for s in summaries}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def run_summary(run: RunData) -> dict:
    """Every number the report shows for one run, straight from its files."""
    metrics = run.metrics
    config = run.config
    n = run.epochs_done
    table = layer_table(AlexNetConfig.from_dict(config["model_config"]))
    params = int(run.result["params"]) if run.result and "params" in run.result else table.params
    best_at = _argbest(metrics["val_accuracy"], lambda a, b: a > b)
    lowest_at = _argbest(metrics["val_loss"], lambda a, b: a < b)
    held = "validation" if config.get("val_split") else "test"
    overfitting, verdict, note, rise = _overfitting(metrics["val_loss"], lowest_at, held)
    if not run.finished:  # the verdict so far: a rise may still come, or pass
        note += f" (on the {n} epochs done of {run.epochs_planned}: the run is unfinished)"
    final_test, final_train = metrics["val_accuracy"][-1], metrics["accuracy"][-1]
    preset = PRESETS.get(run.model)
    published_params = preset.published_params if preset is not None else None
    published_acc = PUBLISHED_ACCURACY.get(run.model)
    best_acc = metrics["val_accuracy"][best_at]
    recipe = config["recipe"]
    summary = {
        "label": run.label,
        "model": run.model,
        "in_post": run.model in POST_OVERFITTING,  # one of the post's five, not the user's own
        "status": "finished" if run.finished else "unfinished",
        "epochs": n,
        "epochs_planned": run.epochs_planned,
        "params": params,
        "published_params": published_params,
        "params_difference": None if published_params is None else params - published_params,
        "macs": table.macs,
        "checkpoint_bytes": run.model_bytes,
        "checkpoint_mb": None if run.model_bytes is None else run.model_bytes / 1e6,
        "best_test_accuracy": best_acc,
        "best_epoch": metrics["epoch"][best_at],
        "final_test_accuracy": final_test,
        "final_train_accuracy": final_train,
        "generalisation_gap": final_train - final_test,
        "final_test_loss": metrics["val_loss"][-1],
        "lowest_test_loss": metrics["val_loss"][lowest_at],
        "lowest_test_loss_epoch": metrics["epoch"][lowest_at],
        "test_loss_rise": rise,
        "overfitting": overfitting,
        "diverged": not math.isfinite(metrics["val_loss"][-1]),
        "overfitting_verdict": verdict,
        "overfitting_note": note,
        "seconds_per_epoch": sum(metrics["seconds"]) / n,
        "total_seconds": sum(metrics["seconds"]),
        "device": _device_text(config),
        "published_test_accuracy": published_acc[1] if published_acc else None,
        "published_test_accuracy_value": published_acc[0] if published_acc else None,
        "test_accuracy_difference": best_acc - published_acc[0] if published_acc else None,
        "post_overfitting": POST_OVERFITTING.get(run.model),
        "seed": config.get("seed"),
        "recipe": recipe.get("name", "seed"),
        "batch_size": recipe.get("batch_size"),
        "lr": recipe.get("lr"),
        "lr_decay": recipe.get("lr_decay", Recipe.lr_decay),  # the seed's, where none is recorded
        "lr_milestones": recipe.get("lr_milestones"),
        "n_train": config.get("n_train"),
        "n_test": config.get("n_test"),
        "limit_train": config.get("limit_train"),
        "limit_test": config.get("limit_test"),
        "torch": (config.get("versions") or {}).get("torch"),
    }
    if config.get("val_split"):
        summary.update(_split_numbers(run, best_at))
    return summary


def _split_numbers(run: RunData, best_at: int) -> dict:
    """A run with a validation split: its per-epoch columns are the held-out images', so the
    test figures are the two evaluations at its end (None while it is unfinished)."""
    result, metrics = run.result or {}, run.metrics
    final_test, best_test = (
        result.get("test_accuracy_final"),
        result.get("test_accuracy_at_best_val"),
    )
    published = PUBLISHED_ACCURACY.get(run.model)
    return {
        "epoch_chosen_by": "validation",
        "val_split": run.config["val_split"],
        "best_val_accuracy": metrics["val_accuracy"][best_at],
        "final_val_accuracy": metrics["val_accuracy"][-1],
        "test_accuracy_final": final_test,
        "test_accuracy_at_best_val": best_test,
        "best_test_accuracy": best_test,
        "final_test_accuracy": final_test,
        "generalisation_gap": None if final_test is None else metrics["accuracy"][-1] - final_test,
        "test_accuracy_difference": (
            best_test - published[0] if published and best_test is not None else None
        ),
    }
