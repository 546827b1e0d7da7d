"""The report composed from its runs, and ``build_report``, which writes it."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..errors import ReportError
from ..files import atomic_write_json, atomic_write_text, json_safe
from ..models import PRESETS
from ..runlog import format_duration
from .aggregate import aggregate
from .document import Column, Document, code, literal
from .figures import CURVES, draw_figures, remove_stale_figures, train_vs_test_files
from .numbers import (
    OVERFIT_RISE,
    POST_BEST,
    SEED_BATCH,
    SEED_EPOCHS,
    SEED_TEST,
    SEED_TRAIN,
    run_summary,
)
from .runs import RunData, load_runs, tensorboard_command
from .seed_figures import draw_seed_curves
from .seed_sections import SEED_DEFINITIONS, seeds_section, seeds_summary, selection_section

__all__ = ["build_report"]


# Cells and inline numbers; "–" where a number is missing.


def _percent(x) -> str:
    """A share as a percentage: 0.9123 -> 91.23%; "diverged" for NaN (a diverged run)."""
    return _number(x, lambda v: f"{100 * v:.2f}%")


def _points(x) -> str:
    """A difference of shares in percentage points: 0.0123 -> +1.23 pts."""
    return _number(x, lambda v: f"{100 * v:+.2f} pts")


def _number(x, text) -> str:
    """``text(x)``; "–" where the number is missing, "diverged" where it is NaN or infinite."""
    if x is None:
        return "–"
    return text(x) if math.isfinite(x) else "diverged"


def _seconds(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _count(x) -> str:
    """A count with thousands separators: 1234567 -> 1,234,567."""
    return "–" if x is None else f"{x:,}"


def _signed_count(x) -> str:
    return "–" if x is None else ("0" if x == 0 else f"{x:+,}")


def _giga_macs(x: int) -> str:
    """Multiply-accumulates in billions."""
    return f"{x / 1e9:.3f} G"


def _megabytes(x) -> str:
    """Megabytes (10^6 bytes), one decimal."""
    return "–" if x is None else f"{x:.1f}"


def _variant(s: dict) -> str:
    return code(s["label"])


def _epochs(s: dict) -> str:
    if s["status"] == "finished":
        return str(s["epochs"])
    return f"unfinished (epoch {s['epochs']} of {s['epochs_planned']})"


def _accuracy(s: dict) -> float:
    """The best test accuracy for ranking; a run with none yet (a split run, unfinished) last."""
    return -math.inf if s["best_test_accuracy"] is None else s["best_test_accuracy"]


def _overfitting_word(s: dict) -> str:
    if s.get("diverged"):
        return "diverged"
    return {True: "yes", False: "no", None: "too short to tell"}[s["overfitting"]]


# The tables: one row per run summary (run_summary()); each cell function takes one.

#: The Results table.
RESULT_COLUMNS = [
    Column("variant", _variant),
    Column("epochs", _epochs),
    Column("params", lambda s: _count(s["params"]), numeric=True),
    Column("MACs / image", lambda s: _giga_macs(s["macs"]), numeric=True),
    Column("checkpoint MB", lambda s: _megabytes(s["checkpoint_mb"]), numeric=True),
    Column("best test acc.", lambda s: _percent(s["best_test_accuracy"]), numeric=True),
    Column("best at epoch", lambda s: str(s["best_epoch"]), numeric=True),
    Column("final test acc.", lambda s: _percent(s["final_test_accuracy"]), numeric=True),
    Column("final train acc.", lambda s: _percent(s["final_train_accuracy"]), numeric=True),
    Column("gap", lambda s: _points(s["generalisation_gap"]), numeric=True),
    Column("lowest test loss: epoch", lambda s: str(s["lowest_test_loss_epoch"]), numeric=True),
    Column("s / epoch", lambda s: _seconds(s["seconds_per_epoch"]), numeric=True),
    Column("total time", lambda s: format_duration(s["total_seconds"]), numeric=True),
    Column("device", lambda s: literal(s["device"])),
]

#: The Against the post table: the post's figures beside ours.
POST_COLUMNS = [
    Column("variant", _variant),
    Column("params: post", lambda s: _count(s["published_params"]), numeric=True),
    Column("params: ours", lambda s: _count(s["params"]), numeric=True),
    Column("difference", lambda s: _signed_count(s["params_difference"]), numeric=True),
    Column("test accuracy: post", lambda s: s["published_test_accuracy"] or "–", numeric=True),
    Column("best test accuracy: ours", lambda s: _percent(s["best_test_accuracy"]), numeric=True),
    Column("difference", lambda s: _points(s["test_accuracy_difference"]), numeric=True),
    Column("overfitting: post", lambda s: s["post_overfitting"] or "–"),
    Column("overfitting: ours", _overfitting_word),
]


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


def _verdict(summaries: list[dict], best: dict) -> list[str]:
    """The best run, the ranking, and whether that agrees with the post's best."""
    lines = [
        f"**Best by best test accuracy: {code(best['label'])}**, "
        f"{_percent(best['best_test_accuracy'])} at epoch {best['best_epoch']} of {best['epochs']}."
    ]
    if len(summaries) > 1:
        ranked = sorted(summaries, key=lambda s: -_accuracy(s))
        lines.append(
            "Ranking: "
            + ", ".join(f"{code(s['label'])} {_percent(s['best_test_accuracy'])}" for s in ranked)
            + "."
        )
    runs_of_post_best = [s for s in summaries if s["model"] == POST_BEST]
    if best["model"] == POST_BEST:
        lines.append(
            f"This agrees with the post, whose best is `{POST_BEST}` at about 92%; the difference "
            f"is {_points(best['test_accuracy_difference'])}."
        )
    elif runs_of_post_best and best["best_test_accuracy"] is not None:
        post_acc = max(_accuracy(s) for s in runs_of_post_best)
        lines.append(
            f"This differs from the post, whose best is `{POST_BEST}` at about 92%: here it "
            f"reached {_percent(post_acc)}, "
            f"{100 * (best['best_test_accuracy'] - post_acc):.2f} points below "
            f"{code(best['label'])}."
        )
    else:
        lines.append(
            f"The post's best, `{POST_BEST}` (about 92%), is not among these runs, so its verdict "
            "cannot be checked here."
        )
    return lines


DEFAULT_TITLE = "AlexNet on CIFAR-10: the variants compared"


@dataclass
class ReportContent:
    """What the report shows: the runs, their summaries, the best of them and the figure files."""

    title: str
    runs: list[RunData]
    summaries: list[dict]  # run_summary() of each run, with its run_dir and figures
    best: dict  # the summary with the highest best test accuracy
    class_index: int | None  # the run whose per-class results are shown; None if no run has them
    figures: dict[str, str]  # the figures shared by all runs, key -> file name
    aggregate: dict | None = None  # several seeds per variant: aggregate.aggregate()


def build_report(run_dirs, out: str | os.PathLike, *, title: str | None = None, warn=None) -> dict:
    """Write report.md, report.html, summary.json and the figures of ``run_dirs`` into ``out``.

    Returns the summary (also ``out/summary.json``). A folder that is not a run folder, holds
    no finished epoch or is damaged is left out, said through ``warn``; ReportError when no
    folder can be reported on.
    """
    runs = load_runs(run_dirs, warn=warn)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report folder {out}: {e.strerror or e}") from None
    summaries = [run_summary(r) for r in runs]
    for r, s, name in zip(runs, summaries, train_vs_test_files(runs)):
        s["run_dir"] = os.path.relpath(r.path.resolve(), out.resolve())
        s["figures"] = {"train_vs_test": name}
    best_index = max(range(len(runs)), key=lambda i: (_accuracy(summaries[i]), -i))
    class_index = _class_results_run(runs, summaries)
    figures = draw_figures(runs, summaries, class_index, out)
    seeds = aggregate(runs, summaries)
    if seeds is not None:
        figures["curves_by_variant"] = draw_seed_curves(
            runs, seeds["variants"], seeds["groups"], out
        )
    remove_stale_figures(
        out, set(figures.values()) | {s["figures"]["train_vs_test"] for s in summaries}
    )
    content = ReportContent(
        title or DEFAULT_TITLE, runs, summaries, summaries[best_index], class_index, figures, seeds
    )
    doc = Document()
    for section in SECTIONS:
        section(doc, content)
    summary = _summary(content)
    atomic_write_text(out / "report.md", doc.markdown(), what="the report")
    atomic_write_text(out / "report.html", doc.html(out, content.title), what="the report")
    atomic_write_json(out / "summary.json", summary, what="the report's summary")
    return json_safe(summary)


def _class_results_run(runs: list[RunData], summaries: list[dict]) -> int | None:
    """The run with the highest best test accuracy among those with per-class results."""
    with_classes = [
        (_accuracy(s), -i, i)
        for i, (r, s) in enumerate(zip(runs, summaries))
        if r.class_results() is not None
    ]
    return max(with_classes)[2] if with_classes else None


def _summary(content: ReportContent) -> dict:
    """summary.json: every run's numbers, the definitions, the best and the files."""
    best, summaries = content.best, content.summaries
    return {
        "generator": f"alexnet-cifar {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "definitions": {
            "generalisation_gap": "final train accuracy - final test accuracy",
            "best_test_accuracy": "highest test accuracy over the epochs; best_epoch is its epoch",
            "test_accuracy_difference": "best test accuracy - the post's published accuracy",
            "params_difference": "our parameter count - the post's published count",
            "seconds_per_epoch": "mean of the seconds column of metrics.csv",
            "total_seconds": "sum of the seconds column of metrics.csv",
            "checkpoint_bytes": "size of the run's model.pt on disk",
            "overfitting": f"final test loss more than {OVERFIT_RISE:.0%} above its minimum",
            **(SEED_DEFINITIONS if content.aggregate else {}),
        },
        "runs": summaries,
        "best": {
            "label": best["label"],
            "model": best["model"],
            "run_dir": best["run_dir"],
            "best_test_accuracy": best["best_test_accuracy"],
            "best_epoch": best["best_epoch"],
        },
        "post_best": POST_BEST,
        "agrees_with_post": (
            best["model"] == POST_BEST if any(s["model"] == POST_BEST for s in summaries) else None
        ),
        "class_results_of": (
            summaries[content.class_index]["label"] if content.class_index is not None else None
        ),
        "figures": content.figures,
        "report": {"markdown": "report.md", "html": "report.html"},
        **seeds_summary(content.aggregate),
    }


# ---------------------------------------------------------------------- the sections


def _title_and_intro(doc: Document, content: ReportContent) -> None:
    n = len(content.runs)
    variants = sorted({s["model"] for s in content.summaries}, key=list(PRESETS).index)
    doc.heading(1, content.title)
    doc.paragraph(
        f"{n} run{'s' if n != 1 else ''} of "
        + ", ".join(f"`{v}`" for v in variants)
        + f", trained with {_training_text(content.summaries)}. Written by "
        f"alexnet-cifar {__version__} on {time.strftime('%Y-%m-%d')}."
    )


def _training_text(summaries: list[dict]) -> str:
    """How the runs were trained: the seed recipe in words, or the names of the recipes."""
    recipes = sorted({s["recipe"] for s in summaries})
    lrs = " / ".join(f"{lr:g}" for lr in sorted({s["lr"] for s in summaries}))
    if recipes == ["seed"]:
        decays = sorted({s.get("lr_decay", 0.1) for s in summaries})
        drop = (
            "divided by 10"
            if decays == [0.1]
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


def _verdict_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Verdict")
    doc.bullets(_verdict(content.summaries, content.best))
    notes = _setting_notes(content.summaries)
    if notes:
        doc.paragraph(
            "**Not the post's setting:** "
            + "; ".join(notes)
            + ". The numbers show how far this training got; they are not comparable with the "
            "post's results."
        )
    doc.paragraph("Overfitting (a test loss that rises after its minimum):")
    doc.bullets([f"{code(s['label'])}: {s['overfitting_note']}." for s in content.summaries])


def _results_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Results")
    doc.table(RESULT_COLUMNS, content.summaries)
    doc.paragraph(
        "**gap** (generalisation gap) = final train accuracy − final test accuracy. Train "
        "accuracy is the average over the epoch's batches with augmentation and dropout on, as "
        "Keras reports it; test accuracy is measured after the epoch. **checkpoint MB** is the "
        "size of the run's `model.pt` on disk (10^6 bytes; – while unfinished). **s / epoch** is "
        "the mean and **total time** the sum of the per-epoch seconds in `metrics.csv` (training "
        "and the test pass)."
    )


def _against_the_post_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Against the post")
    doc.table(POST_COLUMNS, content.summaries)
    doc.paragraph(
        'The post publishes the parameter counts of all five variants, "90%+" test accuracy '
        "for `alexnet_slim` (compared here as 90%) and about 92% for `alexnet_slim_regular`; "
        "for the others it gives curves but no number (–). Differences are ours minus the post's, "
        "in percentage points (pts) for accuracy."
    )


_CURVE_CAPTIONS = {
    "test_accuracy": "Test accuracy of every run after each epoch.",
    "train_accuracy": "Train accuracy (epoch average, augmentation and dropout on).",
    "test_loss": "Test loss (cross-entropy, plus the L2 term for the regularised variants). "
    'A curve that falls and then climbs is the post\'s "Nike swoosh": overfitting.',
    "train_loss": "Train loss (epoch average, plus the L2 term where the variant has one).",
}


def _learning_curves_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Learning curves")
    for stem, _column, title, _ylabel, _percent in CURVES:
        doc.figure(content.figures[stem], title, _CURVE_CAPTIONS[stem])


def _train_vs_test_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Train vs test, per variant")
    doc.paragraph(
        "Each run's train and test curves side by side; the star marks the lowest test loss and "
        "the best test accuracy, dotted lines the learning-rate drops."
    )
    for r, s in zip(content.runs, content.summaries):
        doc.heading(3, code(s["label"]) + ("" if r.finished else f": {r.status}"))
        doc.figure(s["figures"]["train_vs_test"], f"{s['label']}: train vs test", None)
        doc.paragraph(
            f"Final train accuracy {_percent(s['final_train_accuracy'])}, final test accuracy "
            f"{_percent(s['final_test_accuracy'])} (gap {_points(s['generalisation_gap'])}); "
            f"{s['overfitting_note']}."
        )


def _model_size_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Model size")
    doc.figure(
        content.figures["model_size"],
        "Parameters and checkpoint size per variant",
        "Left: parameters, ours and the post's. Right: the final model file on disk, beside "
        "params x 4 bytes (float32), which is about the size of the post's saved .h5 files.",
    )


def _class_by_class_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "The best variant, class by class")
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
    doc.paragraph(
        f"{code(shown['label'])}: the final model on its {_count(shown['n_test'])} test images "
        f"(test accuracy {_percent(shown['final_test_accuracy'])})."
    )
    doc.figure(content.figures["confusion_matrix"], f"Confusion matrix of {shown['label']}", None)
    doc.figure(
        content.figures["per_class_accuracy"], f"Per-class accuracy of {shown['label']}", None
    )


def _runs_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "Runs")
    items = []
    for r, s in zip(content.runs, content.summaries):
        subset = ""
        if s["limit_train"] or s["limit_test"]:
            subset = (
                f", subsets of {_count(s['n_train'])} train / {_count(s['n_test'])} test images"
            )
        items.append(
            f"{code(s['label'])}: {code(s['run_dir'])}, {r.status}, seed {s['seed']}, "
            f"{s['epochs_planned']} epochs, batch {s['batch_size']}, lr {s['lr']:g}{subset}; "
            f"{literal(s['device'])}, torch {literal(s['torch'])}"
        )
    doc.bullets(items)


def _tensorboard_section(doc: Document, content: ReportContent) -> None:
    doc.heading(2, "TensorBoard")
    if all(not s["run_dir"].startswith("..") for s in content.summaries):
        doc.paragraph(
            "The runs' TensorBoard events lie under this folder; `tensorboard --logdir .` here "
            "shows all runs side by side (scalars `loss`, `accuracy`, `val_loss`, "
            "`val_accuracy`, `lr`, `seconds`)."
        )
    else:
        runs = [(s["label"], s["run_dir"]) for s in content.summaries]
        doc.paragraph(
            f"From this folder, {code(tensorboard_command(runs))} shows all runs side by side."
        )


#: The report's sections, in order; each adds its part to the document.
SECTIONS = (
    _title_and_intro,
    _verdict_section,
    seeds_section,
    selection_section,
    _results_section,
    _against_the_post_section,
    _learning_curves_section,
    _train_vs_test_section,
    _model_size_section,
    _class_by_class_section,
    _runs_section,
    _tensorboard_section,
)
