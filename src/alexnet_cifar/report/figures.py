"""The report's figures as PNG files, drawn with Matplotlib's Agg backend (no pyplot).

Matplotlib is imported inside the functions that draw: the rest of the package never needs it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import ReportError
from ..files import atomic_write_bytes, read_json_object
from ..models import fp32_mb
from ..recipe import Recipe
from .numbers import held_out, held_out_of
from .runs import RunData, label_slug

__all__ = [
    "CURVES",
    "HELD_STYLE",
    "STYLE",
    "curve_file_stem",
    "curve_labels",
    "curves_figure",
    "draw_figures",
    "epoch_axis",
    "legend_outside",
    "model_size_figure",
    "new_figure",
    "remove_stale_figures",
    "save_figure",
    "train_vs_held_out_figure",
    "train_vs_test_files",
]

DPI = 110
MARKERS_UP_TO = 40  # epochs; longer curves are drawn as plain lines
STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Labels carry run folders' names: "$x$" or a backslash must show as typed, never be
    # parsed as mathtext (which fails on some names).
    "text.parse_math": False,
}

CURVES = [
    # file stem, metrics column, quantity, percent; val_* columns hold, per run, the
    # validation images where it has a split, else the test set
    ("test_accuracy", "val_accuracy", "accuracy", True),
    ("train_accuracy", "accuracy", "accuracy", True),
    ("test_loss", "val_loss", "loss", False),
    ("train_loss", "loss", "loss", False),
]
#: How a run's per-epoch held-out curve is drawn: validation dashed, test solid.
HELD_STYLE = {"validation": "--", "test": "-"}


def curve_labels(column: str, quantity: str, percent: bool, held: str) -> tuple[str, str]:
    """(title, y label) of a curve; ``held`` says what the val_* columns of its runs hold:
    "test", "validation" or "mixed" (then each line says which)."""
    if not column.startswith("val_"):
        where = "train"
    else:
        where = {"test": "test", "validation": "validation", "mixed": "validation or test"}[held]
    unit = " (%)" if percent else ""
    title = f"{where[0].upper()}{where[1:]} {quantity} by epoch"
    if column.startswith("val_") and held == "mixed":
        return title + " (validation dashed, test solid)", f"validation or test {quantity}{unit}"
    return title, f"{where} {quantity}{unit}"


def curve_file_stem(stem: str, column: str, held: str) -> str:
    """The name of a curve's figure (and its key in summary.json) after what it shows: the
    per-epoch held-out curves are ``test_*``, ``validation_*`` or ``validation_or_test_*``."""
    if not column.startswith("val_"):
        return stem
    where = {"test": "test", "validation": "validation", "mixed": "validation_or_test"}[held]
    return stem.replace("test", where, 1)


def legend_outside(ax, title: str | None = None) -> None:
    """The legend right of the axes, where it covers no data."""
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def train_vs_test_files(runs: list[RunData]) -> list[str]:
    """The file name of each run's train-vs-test figure: from its label, unique."""
    used: set[str] = set()
    names = []
    for r in runs:
        slug = label_slug(r.label)
        while slug in used:
            slug += "_"
        used.add(slug)
        names.append(f"curves_{slug}.png")
    return names


def draw_figures(
    runs: list[RunData], summaries: list[dict], class_index: int | None, out: Path
) -> dict[str, str]:
    """Draw every figure into ``out``; returns the shared figures as {key: file name}.

    Each run's own figure goes to its summary's ``figures["train_vs_test"]``; the confusion
    matrix and per-class accuracy are those of ``runs[class_index]`` (none if None).
    """
    import matplotlib

    figures: dict[str, str] = {}
    held = [held_out(s) for s in summaries]
    with matplotlib.rc_context(STYLE):
        for stem, column, quantity, percent in CURVES:
            name = curve_file_stem(stem, column, held_out_of(summaries))
            figures[name] = f"{name}.png"
            fig = curves_figure(runs, held, column, quantity, percent)
            save_figure(fig, out / figures[name])
        for r, s in zip(runs, summaries):
            save_figure(train_vs_held_out_figure(r, s), out / s["figures"]["train_vs_test"])
        figures["model_size"] = "model_size.png"
        save_figure(model_size_figure(runs, summaries), out / figures["model_size"])
        if class_index is not None:
            run = runs[class_index]
            classes, confusion, per_class = run.class_results()
            overall = summaries[class_index]["final_test_accuracy"]
            figures["confusion_matrix"] = "confusion_matrix.png"
            figures["per_class_accuracy"] = "per_class_accuracy.png"
            save_figure(
                _confusion_figure(run, classes, confusion), out / figures["confusion_matrix"]
            )
            save_figure(
                _per_class_figure(run, classes, per_class, overall),
                out / figures["per_class_accuracy"],
            )
    return figures


def remove_stale_figures(out: Path, keep: set[str]) -> None:
    """Figures an earlier report in ``out`` wrote and this one does not (e.g. a dropped run)."""
    old = out / "summary.json"
    if not old.is_file():
        return
    try:
        prev = read_json_object(old, "report summary", error=ReportError)
        names = list(prev.get("figures", {}).values())
        names += [r["figures"]["train_vs_test"] for r in prev.get("runs", [])]
    except (ReportError, KeyError, TypeError, AttributeError):
        return
    for name in names:
        if isinstance(name, str) and name.endswith(".png") and "/" not in name and name not in keep:
            (out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------- drawing helpers


def new_figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue(), what="the report figure")


def _line_style(n_points: int) -> dict:
    if n_points <= MARKERS_UP_TO:
        return {"marker": "o", "markersize": 4 if n_points > 1 else 7}
    return {}


def epoch_axis(ax, max_epoch: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if max_epoch <= 15:
        ax.set_xticks(range(1, max(max_epoch, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(max_epoch, 1) + 0.5)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _legend_label(run: RunData, held: str | None = None) -> str:
    """The run's label, its status when unfinished, and ``held`` where runs differ in it."""
    label = run.label if run.finished else f"{run.label}, {run.status}"
    return label if held is None else f"{label} ({held})"


def _star(ax, x, y, label: str) -> None:
    """A hollow star that shows the point beneath it."""
    ax.plot(
        [x],
        [y],
        linestyle="none",
        marker="*",
        markersize=16,
        markerfacecolor="none",
        markeredgecolor="black",
        markeredgewidth=1.3,
        label=label,
    )


# ---------------------------------------------------------------------- the figures


def curves_figure(
    runs: list[RunData], held: list[str], column: str, quantity: str, percent: bool
):
    """One curve of every run; ``held[i]``: what run i's val_* columns hold ("validation" or
    "test"). Where runs differ in it, each line says which (and validation is dashed)."""
    kinds = set(held)
    mixed = len(kinds) > 1 and column.startswith("val_")
    title, ylabel = curve_labels(
        column, quantity, percent, kinds.pop() if len(kinds) == 1 else "mixed"
    )
    fig = new_figure((10.5, 5.2))
    ax = fig.add_subplot()
    for r, h in zip(runs, held):
        y = [100 * v for v in r.metrics[column]] if percent else r.metrics[column]
        ax.plot(
            r.metrics["epoch"],
            y,
            label=_legend_label(r, h if mixed else None),
            color=r.color,
            linewidth=1.6,
            linestyle=HELD_STYLE[h] if mixed else "-",
            **_line_style(r.epochs_done),
        )
    epoch_axis(ax, max(r.epochs_done for r in runs))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    legend_outside(ax, "run")
    return fig


def _lr_drops(ax, run: RunData) -> None:
    """Dotted lines where a step schedule multiplied the learning rate, labelled by how much."""
    recipe = run.config["recipe"]
    if recipe.get("lr_schedule", "step") != "step":
        return  # a per-step schedule has no drops to mark
    drops = [int(m) for m in recipe.get("lr_milestones") or []]
    shown = [m for m in drops if 0 < m < run.epochs_done]
    label = _lr_drop_label(recipe)
    for i, m in enumerate(shown):
        ax.axvline(
            m + 0.5, color="0.55", linestyle=":", linewidth=1, label=label if i == 0 else None
        )


def _lr_drop_label(recipe: dict) -> str:
    """``lr x0.1``: the factor of the recipe's drops (``lr_decay``, the seed's where it has
    none)."""
    decay = recipe.get("lr_decay")
    if decay is None:
        decay = Recipe.lr_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        return "lr drop"  # a damaged config.json: still mark the drop
    return f"lr x{decay:g}"


def train_vs_held_out_figure(run: RunData, s: dict):
    fig = new_figure((11.5, 4.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    m, style = run.metrics, _line_style(run.epochs_done)
    x = m["epoch"]
    held = held_out(s)  # what the per-epoch val_* columns hold
    ax_loss.plot(x, m["loss"], label="train loss", color="C0", **style)
    ax_loss.plot(x, m["val_loss"], label=f"{held} loss", color="C3", **style)
    _star(
        ax_loss,
        s["lowest_test_loss_epoch"],
        s["lowest_test_loss"],
        f"lowest {held} loss (epoch {s['lowest_test_loss_epoch']})",
    )
    ax_acc.plot(x, [100 * v for v in m["accuracy"]], label="train accuracy", color="C0", **style)
    held_accuracy = [100 * v for v in m["val_accuracy"]]
    ax_acc.plot(x, held_accuracy, label=f"{held} accuracy", color="C3", **style)
    _star(
        ax_acc,
        s["best_epoch"],
        held_accuracy[s["best_epoch"] - 1],
        f"best {held} accuracy (epoch {s['best_epoch']})",
    )
    for ax, ylabel, title in (
        (ax_loss, "loss", f"Loss: train vs {held}"),
        (ax_acc, "accuracy (%)", f"Accuracy: train vs {held}"),
    ):
        _lr_drops(ax, run)
        epoch_axis(ax, run.epochs_done)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    status = "" if run.finished else f", {run.status}"
    fig.suptitle(f"{run.label}: train vs {held}{status}")
    return fig


def model_size_figure(runs: list[RunData], summaries: list[dict]):
    """Parameters and model file size, one bar of each per variant (its runs share them: the
    first run of a variant stands for it, a finished one where there is one)."""
    first: dict[str, int] = {}
    for i, s in enumerate(summaries):
        if s["model"] not in first or (
            summaries[first[s["model"]]]["checkpoint_mb"] is None and s["checkpoint_mb"] is not None
        ):
            first[s["model"]] = i
    shown = list(first.values())
    runs, summaries = [runs[i] for i in shown], [summaries[i] for i in shown]
    fig = new_figure((11.5, 5))
    ax_params, ax_size = fig.subplots(1, 2)
    x = np.arange(len(runs))
    colors = [r.color for r in runs]
    heights_params = _params_bars(ax_params, x, colors, summaries)
    heights_size = _checkpoint_bars(ax_size, x, colors, summaries)
    labels = [s["model"] for s in summaries]
    for ax, heights in ((ax_params, heights_params), (ax_size, heights_size)):
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylim(0, 1.4 * max(max(heights), 1e-9))  # headroom: the legend sits above the bars
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("Model size per variant")
    return fig


_BAR_WIDTH = 0.38


def _params_bars(ax, x, colors: list[str], summaries: list[dict]) -> list[float]:
    """Our parameter counts beside the post's, in millions; returns every bar's height."""
    w = _BAR_WIDTH
    ours = [s["params"] / 1e6 for s in summaries]
    post = [
        (s["published_params"] or 0) / 1e6 if s["published_params"] is not None else 0
        for s in summaries
    ]
    bars_ours = ax.bar(x - w / 2, ours, w, color=colors, label="this package")
    bars_post = ax.bar(
        x + w / 2, post, w, facecolor="white", edgecolor="black", hatch="//", label="the post"
    )
    ax.bar_label(bars_ours, labels=[f"{v:.1f}M" for v in ours], fontsize=8, padding=2)
    ax.bar_label(
        bars_post,
        labels=[
            f"{v:.1f}M"
            if s["published_params"] is not None
            else ("–" if s.get("in_post", True) else "not in post")
            for v, s in zip(post, summaries)
        ],
        fontsize=8,
        padding=2,
    )
    ax.set_title("Parameters")
    ax.set_ylabel("parameters (millions)")
    return ours + post


def _checkpoint_bars(ax, x, colors: list[str], summaries: list[dict]) -> list[float]:
    """model.pt on disk beside params x 4 bytes, in MB; returns every bar's height."""
    w = _BAR_WIDTH
    disk = [s["checkpoint_mb"] or 0 for s in summaries]
    fp32 = [fp32_mb(s["params"]) for s in summaries]
    bars_disk = ax.bar(x - w / 2, disk, w, color=colors, label="model.pt on disk")
    bars_fp32 = ax.bar(
        x + w / 2,
        fp32,
        w,
        facecolor="white",
        edgecolor="black",
        hatch="..",
        label="params x 4 bytes (about the post's .h5)",
    )
    ax.bar_label(
        bars_disk,
        labels=[
            f"{v:.1f}" if s["checkpoint_mb"] is not None else "n/a" for v, s in zip(disk, summaries)
        ],
        fontsize=8,
        padding=2,
    )
    ax.bar_label(bars_fp32, labels=[f"{v:.1f}" for v in fp32], fontsize=8, padding=2)
    ax.set_title("Checkpoint size on disk")
    ax.set_ylabel("MB (10^6 bytes)")
    return disk + fp32


def _confusion_figure(run: RunData, classes: list[str], confusion):
    cm = np.asarray(confusion)
    fig = new_figure((8, 7))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    k = len(classes)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.colorbar(im, ax=ax, shrink=0.8, label="test images")
    n = int(cm.sum())
    acc = float(np.trace(cm)) / n if n else 0.0
    ax.set_title(
        f"Confusion matrix: {run.label}\nfinal model, {n:,} test images, accuracy {100 * acc:.2f}%"
    )
    return fig


def _per_class_figure(run: RunData, classes: list[str], per_class: list[float], overall: float):
    fig = new_figure((8.5, 5.2))
    ax = fig.add_subplot()
    y = list(range(len(classes)))
    vals = [100 * v for v in per_class]
    ax.barh(y, vals, color=run.color)
    # The values in a column of their own right of 100%, where the dashed line of the mean
    # (at most 100%) never crosses them; the line is named above the plot.
    for row, v in zip(y, vals):
        ax.text(101.5, row, f"{v:.1f}%", va="center", ha="left", fontsize=9)
    ax.axvline(100 * overall, color="black", linestyle="--", linewidth=1)
    ax.text(
        100 * overall,
        1.01,
        f"all classes {100 * overall:.1f}%",
        transform=ax.get_xaxis_transform(),
        ha="center",
        va="bottom",
        fontsize=9,
    )
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"Per-class test accuracy: {run.label} (final model)", pad=18)
    ax.grid(axis="x", alpha=0.3)
    return fig
