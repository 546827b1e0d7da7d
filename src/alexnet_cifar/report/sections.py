"""The report's sections: each adds its part to the document from the report's content.

Every heading, caption and note names the images a number comes from: the per-epoch curves of
a run with a validation split are its validation images', the test set's otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .._version import __version__
from ..recipe import Recipe
from ..variants import variant_order
from . import cells
from .columns import post_columns, result_columns
from .document import Document, code, literal
from .figures import CURVES, curve_file_stem, curve_labels
from .numbers import (
    NOT_IN_POST,
    POST_BEST,
    POST_BEST_ACCURACY,
    SEED_BATCH,
    SEED_EPOCHS,
    SEED_TEST,
    SEED_TRAIN,
    held_out,
    held_out_of,
)
from .runs import RunData
from .verdict import run_best_text, verdict

__all__ = [
    "ReportContent",
    "against_the_post_section",
    "class_by_class_section",
    "learning_curves_section",
    "model_size_section",
    "results_section",
    "runs_section",
    "title_and_intro",
    "train_vs_held_out_section",
    "verdict_section",
]


@dataclass
class ReportContent:
    """What the report shows: the runs, their summaries, the best of them and the figure files."""

    title: str
    runs: list[RunData]
    summaries: list[dict]  # run_summary() of each run, with its run_dir and figures
    best: dict  # the summary with the highest headline test accuracy
    class_index: int | None  # the run whose per-class results are shown; None if no run has them
    figures: dict[str, str]  # the figures shared by all runs, key -> file name
    aggregate: dict | None = None  # several seeds per variant: aggregate.aggregate()

    @property
    def held(self) -> str:
        """What the runs' per-epoch curves hold: "test", "validation" or "mixed"."""
        return held_out_of(self.summaries)


_HELD_WORDS = {"test": "test", "validation": "validation", "mixed": "validation or test"}


def title_and_intro(doc: Document, content: ReportContent) -> None:
    n = len(content.runs)
    variants = sorted({s["model"] for s in content.summaries}, key=variant_order)
    doc.heading(1, content.title)
    doc.paragraph(
        f"{n} run{'s' if n != 1 else ''} of {len(variants)} variant"
        f"{'s' if len(variants) != 1 else ''} ("
        + ", ".join(f"`{v}`" for v in variants)
        + f"), trained with {_training_text(content.summaries)}. Written by "
        f"alexnet-cifar {__version__} on {time.strftime('%Y-%m-%d')}."
    )


def _training_text(summaries: list[dict]) -> str:
    """How the runs were trained: the seed recipe in words, or the names of the recipes."""
    recipes = sorted({s["recipe"] for s in summaries})
    lrs = " / ".join(f"{lr:g}" for lr in sorted({s["lr"] for s in summaries}))
    if recipes == ["seed"]:
        decays = sorted({s.get("lr_decay", Recipe.lr_decay) for s in summaries})
        drop = (
            f"divided by {1 / Recipe.lr_decay:g}"
            if decays == [Recipe.lr_decay]
            else "multiplied by " + " / ".join(f"{d:g}" for d in decays)
        )
        return (
            f"the seed recipe (SGD with Nesterov momentum, lr {lrs} {drop} at 1/3 and "
            "2/3 of the epochs, shifts and flips)"
        )
    return (
        "the recipes " + ", ".join(code(r) for r in recipes) + f" (peak lr {lrs}; the "
        "fields of each are in its run's config.json)"
    )


def _setting_notes(summaries: list[dict]) -> list[str]:
    """How these runs differ from the post's setting (300 epochs, all 50,000 / 10,000 images)."""
    notes = []
    other = sorted({s["recipe"] for s in summaries} - {"seed"})
    if other:
        notes.append("recipe " + ", ".join(code(r) for r in other) + " instead of the seed's")
    epochs = sorted({s["epochs_planned"] for s in summaries})
    if any(e != SEED_EPOCHS for e in epochs):
        notes.append(
            f"{' / '.join(str(e) for e in epochs)} epoch{'s' if epochs != [1] else ''} planned "
            f"instead of the post's {SEED_EPOCHS}"
        )
    batches = sorted({s["batch_size"] for s in summaries if s["batch_size"] is not None})
    if any(b != SEED_BATCH for b in batches):
        notes.append(f"batch {' / '.join(str(b) for b in batches)} instead of {SEED_BATCH}")
    trains = sorted({s["n_train"] for s in summaries if s["n_train"] is not None})
    if any(n != SEED_TRAIN for n in trains):
        notes.append(
            f"{' / '.join(f'{n:,}' for n in trains)} of the {SEED_TRAIN:,} training images"
        )
    tests = sorted({s["n_test"] for s in summaries if s["n_test"] is not None})
    if any(n != SEED_TEST for n in tests):
        notes.append(f"{' / '.join(f'{n:,}' for n in tests)} of the {SEED_TEST:,} test images")
    unfinished = [s["label"] for s in summaries if s["status"] != "finished"]
    if unfinished:
        notes.append("unfinished: " + ", ".join(code(u) for u in unfinished))
    return notes


def verdict_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Verdict")
    doc.bullets(verdict(content.summaries, content.best, content.aggregate))
    notes = _setting_notes(content.summaries)
    if notes:
        doc.paragraph(
            "**Not the post's setting:** "
            + "; ".join(notes)
            + ". The numbers show how far this training got; they are not comparable with the "
            "post's results."
        )
    doc.paragraph(
        f"Overfitting (a {_HELD_WORDS[content.held]} loss that rises after its minimum; the "
        "same words in every section):"
    )
    doc.bullets([f"{code(s['label'])}: {s['overfitting_note']}." for s in content.summaries])


def results_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Results")
    doc.table(result_columns(content.held), content.summaries)
    if content.held == "test":
        measured = (
            "test accuracy is measured on the test set after each epoch, and the best epoch "
            "is chosen by it (optimistic)"
        )
    else:
        measured = (
            "a run with a validation split is measured on its validation images after each "
            "epoch, which choose its best epoch (**val.**); its test set is evaluated once, at "
            "the end, on the weights of that epoch and on the final ones"
        )
        if content.held == "mixed":
            measured += "; a run without one uses the test set for both (**test**, optimistic)"
    doc.paragraph(
        "**gap** (generalisation gap) = final train accuracy − final test accuracy. Train "
        "accuracy is the average over the epoch's batches with augmentation and dropout on, as "
        f"Keras reports it; {measured}. **checkpoint MB** is the "
        "size of the run's `model.pt` on disk (10^6 bytes; – while unfinished). **s / epoch** is "
        "the mean and **total time** the sum of the per-epoch seconds in `metrics.csv` (training "
        "and the evaluation after each epoch)."
    )


def against_the_post_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Against the post")
    doc.table(post_columns(content.held), content.summaries)
    doc.paragraph(
        'The post publishes the parameter counts of all five variants, "90%+" test accuracy '
        f"for `alexnet_slim` (compared here as 90%) and {POST_BEST_ACCURACY} for `{POST_BEST}`; "
        "for the others it gives curves but no number (–). Differences are ours minus the "
        "post's, in percentage points (pts) for accuracy."
        + (
            f" A variant of your own is {NOT_IN_POST}."
            if any(not s.get("in_post", True) for s in content.summaries)
            else ""
        )
    )


def _curve_captions(held: str) -> dict[str, str]:
    where = {
        "test": "Test accuracy of every run after each epoch (the test set).",
        "validation": "Validation accuracy of every run after each epoch (its held-out "
        "validation images, not the test set).",
        "mixed": "Accuracy after each epoch on the validation images of the runs with a split "
        "(dashed, marked validation) and on the test set of the others (solid, marked test).",
    }[held]
    loss = {
        "test": "Test loss",
        "validation": "Validation loss",
        "mixed": "Validation or test loss",
    }
    return {
        "test_accuracy": where,
        "train_accuracy": "Train accuracy (epoch average, augmentation and dropout on).",
        "test_loss": f"{loss[held]} (cross-entropy, plus the L2 term for the regularised "
        "variants). A curve that falls and then climbs is the post's \"Nike swoosh\": "
        "overfitting.",
        "train_loss": "Train loss (epoch average, plus the L2 term where the variant has one).",
    }


def learning_curves_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Learning curves")
    captions = _curve_captions(content.held)
    for stem, column, quantity, percent in CURVES:
        title, _ylabel = curve_labels(column, quantity, percent, content.held)
        name = curve_file_stem(stem, column, content.held)
        doc.figure(content.figures[name], title, captions[stem])


def train_vs_held_out_section(doc: Document, content: ReportContent) -> None:
    words = _HELD_WORDS[content.held]
    doc.heading(2, f"Train vs {words}, per run")
    doc.paragraph(
        f"Each run's train and {words} curves side by side (validation for a run with a "
        f"split, test otherwise); the star marks the lowest {words} loss and the best {words} "
        "accuracy, dotted lines the learning-rate drops."
    )
    for r, s in zip(content.runs, content.summaries):
        held = held_out(s)
        doc.heading(3, code(s["label"]) + ("" if r.finished else f": {r.status}"))
        doc.figure(s["figures"]["train_vs_test"], f"{s['label']}: train vs {held}", None)
        doc.paragraph(
            f"{run_best_text(s)[0].upper()}{run_best_text(s)[1:]}. Final train accuracy "
            f"{cells.percent(s['final_train_accuracy'])} (gap "
            f"{cells.points(s['generalisation_gap'])} to the final test accuracy). Overfitting: "
            f"{s['overfitting_note']}."
        )


def model_size_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Model size")
    doc.figure(
        content.figures["model_size"],
        "Parameters and checkpoint size per variant",
        "Left: parameters, ours and the post's. Right: the final model file on disk, beside "
        "params x 4 bytes (float32), which is about the size of the post's saved .h5 files.",
    )


def class_by_class_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "The best run, class by class")
    if content.class_index is None:
        doc.paragraph(
            "No run has finished with per-class results (`result.json`), so there is no "
            "confusion matrix yet."
        )
        return
    shown, best = content.summaries[content.class_index], content.best
    if shown is not best:
        why = (
            "has not finished"
            if best["status"] != "finished"
            else "has no per-class results in its result.json"
        )
        doc.paragraph(
            f"{code(best['label'])} {why}, so these are the results of {code(shown['label'])}, "
            "the best run that has them."
        )
    elif content.aggregate is not None:
        doc.paragraph(
            f"The best run of the best variant, "
            f"{code(content.aggregate['best_variant']['label'])}."
        )
    doc.paragraph(
        f"{code(shown['label'])}: the final model on its {cells.count(shown['n_test'])} test "
        f"images (test accuracy {cells.percent(shown['final_test_accuracy'])})."
    )
    doc.figure(content.figures["confusion_matrix"], f"Confusion matrix of {shown['label']}", None)
    doc.figure(
        content.figures["per_class_accuracy"], f"Per-class accuracy of {shown['label']}", None
    )


def runs_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Runs")
    items = []
    for r, s in zip(content.runs, content.summaries):
        subset = ""
        if s["limit_train"] or s["limit_test"]:
            subset = (
                f", subsets of {cells.count(s['n_train'])} train / "
                f"{cells.count(s['n_test'])} test images"
            )
        if s.get("val_split"):
            subset += f", {cells.count(s['val_split'])} validation images held out"
        items.append(
            f"{code(s['label'])}: {code(s['run_dir'])}, {r.status}, seed {s['seed']}, "
            f"{s['epochs_planned']} epochs, batch {s['batch_size']}, lr {s['lr']:g}{subset}; "
            f"{literal(s['device'])}, torch {literal(s['torch'])}"
        )
    doc.bullets(items)
