"""The report put together: ``build_report`` reads the runs, draws, composes the sections and
writes report.md, report.html and summary.json."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .._version import __version__
from ..errors import ReportError
from ..files import atomic_write_json, atomic_write_text, json_safe
from .aggregate import aggregate
from .document import Document, code
from .figures import draw_figures, remove_stale_figures, train_vs_test_files
from .numbers import OVERFIT_RISE, POST_BEST, run_summary
from .runs import RunData, load_runs, tensorboard_command
from .sections import (
    ReportContent,
    against_the_post_section,
    class_by_class_section,
    learning_curves_section,
    model_size_section,
    results_section,
    runs_section,
    title_and_intro,
    train_vs_held_out_section,
    verdict_section,
)
from .seed_figures import draw_seed_curves
from .seed_sections import SEED_DEFINITIONS, seeds_section, seeds_summary, selection_section
from .verdict import accuracy

__all__ = ["build_report"]

DEFAULT_TITLE = "AlexNet on CIFAR-10: the variants compared"


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
    seeds = aggregate(runs, summaries)
    best_index = _best_run(summaries, seeds)
    class_index = _class_results_run(runs, summaries, best_index)
    figures = draw_figures(runs, summaries, class_index, out)
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


def _best_run(summaries: list[dict], seeds: dict | None) -> int:
    """The run with the highest headline test accuracy; with several seeds, the best run of
    the best variant (by its mean), so that every "best" of the report agrees."""
    candidates = range(len(summaries))
    if seeds is not None:
        label = seeds["best_variant"]["label"]
        candidates = next(g["runs"] for g in seeds["groups"] if g["label"] == label)
    return max(candidates, key=lambda i: (accuracy(summaries[i]), -i))


def _class_results_run(runs: list[RunData], summaries: list[dict], best: int) -> int | None:
    """The best run if it has per-class results, else the run with the highest headline test
    accuracy among those that have them."""
    if runs[best].class_results() is not None:
        return best
    with_classes = [
        (accuracy(s), -i, i)
        for i, (r, s) in enumerate(zip(runs, summaries))
        if r.class_results() is not None
    ]
    return max(with_classes)[2] if with_classes else None


def _summary(content: ReportContent) -> dict:
    """summary.json: every run's numbers, the definitions, the best and the files."""
    best, summaries = content.best, content.summaries
    agg = content.aggregate
    judged = agg["best_variant"]["model"] if agg else best["model"]
    return {
        "generator": f"alexnet-cifar {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "definitions": {
            "generalisation_gap": "final train accuracy - final test accuracy",
            "best_test_accuracy": "without a validation split: the highest test accuracy over "
            "the epochs (chosen by the test set, optimistic); with one (epoch_chosen_by "
            "'validation'): the test accuracy at the epoch of the best validation accuracy "
            "(best_val_accuracy); best_epoch is that epoch",
            "final_test_accuracy": "test accuracy of the final weights",
            "lowest_test_loss": "lowest per-epoch loss: of the validation images where the "
            "run has a split, else of the test set",
            "test_accuracy_difference": "best test accuracy - the post's published accuracy",
            "params_difference": "our parameter count - the post's published count",
            "seconds_per_epoch": "mean of the seconds column of metrics.csv",
            "total_seconds": "sum of the seconds column of metrics.csv",
            "checkpoint_bytes": "size of the run's model.pt on disk",
            "overfitting": f"final per-epoch loss (validation with a split, else test) more "
            f"than {OVERFIT_RISE:.0%} above its minimum; overfitting_verdict in words",
            **(SEED_DEFINITIONS if content.aggregate else {}),
        },
        "runs": summaries,
        "best": {
            "label": best["label"],
            "model": best["model"],
            "run_dir": best["run_dir"],
            "best_test_accuracy": best["best_test_accuracy"],
            "best_epoch": best["best_epoch"],
            "epoch_chosen_by": best.get("epoch_chosen_by", "test"),
            "best_val_accuracy": best.get("best_val_accuracy"),
            "final_test_accuracy": best["final_test_accuracy"],
            "of_variant": agg["best_variant"]["label"] if agg else None,
        },
        "verdict": "best_variant" if agg else "best",
        "post_best": POST_BEST,
        "agrees_with_post": (
            judged == POST_BEST if any(s["model"] == POST_BEST for s in summaries) else None
        ),
        "class_results_of": (
            summaries[content.class_index]["label"] if content.class_index is not None else None
        ),
        "figures": content.figures,
        "report": {"markdown": "report.md", "html": "report.html"},
        **seeds_summary(content.aggregate),
    }


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
    title_and_intro,
    verdict_section,
    seeds_section,
    selection_section,
    results_section,
    against_the_post_section,
    learning_curves_section,
    train_vs_held_out_section,
    model_size_section,
    class_by_class_section,
    runs_section,
    _tensorboard_section,
)
