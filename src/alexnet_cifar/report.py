"""The study's report: any set of run folders as tables, figures and a verdict, like the post.

``build_report(run_dirs, out)`` reads each run folder (``config.json``, ``metrics.csv``, and
``result.json`` and ``model.pt`` once the run has finished), and writes into ``out``:

* ``report.md``: renders on GitHub, with the figures as PNG files beside it;
* ``report.html``: the same in one self-contained file (figures inlined, CSS inline, no script);
* ``summary.json``: every number of the tables per run, the figure files and the best variant;
* the PNG figures (Matplotlib, Agg): learning curves of all runs, train vs test per run, model
  sizes, and the confusion matrix and per-class accuracy of the best variant.

Definitions used throughout: the generalisation gap is the final train accuracy minus the final
test accuracy; the train figures are the epoch averages Keras reports (augmentation and dropout
on); a run overfits when its test loss ends more than ``OVERFIT_RISE`` above its minimum.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .checkpoint import MODEL_FILE, atomic_write_bytes, atomic_write_text
from .models import PRESETS, PUBLISHED_PARAMS, AlexNetConfig, layer_table

__all__ = [
    "OVERFIT_RISE",
    "POST_BEST",
    "PUBLISHED_ACCURACY",
    "ReportError",
    "RunData",
    "build_report",
    "load_run",
    "load_runs",
    "run_summary",
]

#: Test accuracy the post reports, as (value compared against, the post's words).
PUBLISHED_ACCURACY: dict[str, tuple[float, str]] = {
    "alexnet_slim": (0.90, "90%+"),
    "alexnet_slim_regular": (0.92, "~92%"),
}
#: The post's verdict: the variant with the highest accuracy.
POST_BEST = "alexnet_slim_regular"
#: What the post says about each variant's overfitting.
POST_OVERFITTING: dict[str, str] = {
    "alexnet": 'heavy: test loss falls, then climbs (the "Nike swoosh")',
    "alexnet_slim": "still overfits",
    "alexnet_slim_regular": "less than alexnet_slim",
    "alexnet_thinner_2": "somewhat: test loss rises late",
    "alexnet_thinner_4": "none: test loss does not rise",
}
SEED_EPOCHS = 300
SEED_TRAIN, SEED_TEST = 50_000, 10_000
SEED_BATCH = 64
#: A run overfits when its final test loss exceeds its lowest test loss by more than this share.
OVERFIT_RISE = 0.05

METRICS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
DPI = 110
_MARKERS_UP_TO = 40  # epochs; longer curves are drawn as plain lines
_RC = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


class ReportError(ValueError):
    """A folder that cannot be reported on (not a run folder, no finished epoch, damaged)."""


# ---------------------------------------------------------------------- reading runs


@dataclass
class RunData:
    """One run folder as read from disk."""

    path: Path
    config: dict
    metrics: dict[str, list]  # column -> values, one per finished epoch
    result: dict | None  # None while the run is unfinished
    model_bytes: int | None  # size of model.pt on disk; None while unfinished
    label: str = ""
    color: str = "C0"

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def epochs_done(self) -> int:
        return len(self.metrics["epoch"])

    @property
    def epochs_planned(self) -> int:
        return int(self.config["recipe"]["epochs"])

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return f"unfinished (epoch {self.epochs_done} of {self.epochs_planned})"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is damaged ({what} is not valid JSON: {e})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is damaged ({what} is not a JSON object)")
    return data


def _read_metrics(path: Path) -> dict[str, list]:
    f = path / "metrics.csv"
    if not f.is_file():
        raise ReportError(
            f"{path} has no metrics.csv: no epoch of this run has finished, so there is nothing "
            "to report yet"
        )
    try:
        text = f.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {f}: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in METRICS if c not in (reader.fieldnames or [])]
    if missing:
        raise ReportError(
            f"{f} is not a metrics file of this package: it lacks the column(s) "
            + ", ".join(missing)
        )
    cols: dict[str, list] = {c: [] for c in METRICS}
    for line, row in enumerate(reader, start=2):
        for c in METRICS:
            text_value = row.get(c)
            try:
                v = float(text_value)
            except (TypeError, ValueError):
                raise ReportError(
                    f"{f}, line {line}: {c} is {text_value!r}, not a number"
                ) from None
            cols[c].append(int(v) if c == "epoch" else v)
    if not cols["epoch"]:
        raise ReportError(f"{f} holds no finished epoch: nothing to report")
    if cols["epoch"] != list(range(1, len(cols["epoch"]) + 1)):
        raise ReportError(f"{f} is damaged: its epochs are not 1, 2, 3, ...")
    return cols


def load_run(path: str | os.PathLike) -> RunData:
    """Read one run folder; a folder that is not one raises ReportError saying why."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder: give run folders (made by train or study)")
    if not (path / "config.json").is_file():
        raise ReportError(
            f"{path} is not a run folder: it has no config.json (a run folder is what "
            "'alexnet-cifar train' or 'study' writes)"
        )
    config = _read_json(path / "config.json", "config.json")
    for key in ("model", "model_config", "recipe"):
        if key not in config:
            raise ReportError(f"{path / 'config.json'} lacks {key!r}: not a run of this package")
    try:
        AlexNetConfig.from_dict(config["model_config"])
        int(config["recipe"]["epochs"])
    except (TypeError, ValueError, KeyError) as e:
        raise ReportError(f"{path / 'config.json'} is damaged: {e}") from None
    metrics = _read_metrics(path)
    result = None
    if (path / "result.json").is_file():
        result = _read_json(path / "result.json", "result.json")
    model_file = path / MODEL_FILE
    model_bytes = model_file.stat().st_size if result is not None and model_file.is_file() else None
    return RunData(path, config, metrics, result, model_bytes)


def _run_folders_in(path: Path) -> list[Path] | None:
    """The run folders of a study folder (``DIR/runs/NAME``), or None if ``path`` is not one."""
    runs = path / "runs"
    if (path / "config.json").exists() or not runs.is_dir():
        return None
    found = sorted(p for p in runs.iterdir() if (p / "config.json").is_file())
    return found or None


def load_runs(paths) -> list[RunData]:
    """Read run folders (a study folder stands for its runs), label and order them."""
    seen: set[Path] = set()
    runs: list[RunData] = []
    for p in paths:
        p = Path(p)
        for folder in _run_folders_in(p) or [p]:
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            runs.append(load_run(folder))
    if not runs:
        raise ReportError("no run folders given")
    order = {name: i for i, name in enumerate(PRESETS)}
    runs.sort(key=lambda r: (order.get(r.model, len(order)), str(r.path)))
    _assign_labels(runs)
    for i, r in enumerate(runs):
        r.color = f"C{i % 10}"
    return runs


def _assign_labels(runs: list[RunData]) -> None:
    """The variant name where it is unique, else the run folder's name (which tells them apart)."""
    per_model = Counter(r.model for r in runs)
    for r in runs:
        if per_model[r.model] == 1:
            r.label = r.model
        elif r.model in r.path.name:
            r.label = r.path.name
        else:
            r.label = f"{r.model} ({r.path.name})"
    per_label = Counter(r.label for r in runs)
    for r in runs:
        if per_label[r.label] > 1:
            r.label = f"{r.model} ({r.path.parent.name}/{r.path.name})"
    seen: Counter = Counter()
    for r in runs:
        seen[r.label] += 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"


# ---------------------------------------------------------------------- the numbers


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


def run_summary(run: RunData) -> dict:
    """Every number the report shows for one run, straight from its files."""
    m = run.metrics
    cfg = run.config
    n = run.epochs_done
    model_cfg = AlexNetConfig.from_dict(cfg["model_config"])
    table = layer_table(model_cfg)
    params = int(run.result["params"]) if run.result and "params" in run.result else table.params
    ib = _argbest(m["val_accuracy"], lambda a, b: a > b)
    il = _argbest(m["val_loss"], lambda a, b: a < b)
    final_test, final_train = m["val_accuracy"][-1], m["accuracy"][-1]
    lowest, final_loss = m["val_loss"][il], m["val_loss"][-1]
    rise = (final_loss - lowest) / lowest if lowest > 0 and math.isfinite(final_loss) else None
    if n < 2:
        overfitting, note = None, "one epoch: too short to tell"
    elif il == n - 1:
        overfitting, note = False, "test loss still falling at the last epoch: no sign yet"
    elif rise is not None and rise > OVERFIT_RISE:
        overfitting = True
        note = (
            f"test loss rose {rise:.0%} after its minimum ({lowest:.3f} at epoch {il + 1}, "
            f"{final_loss:.3f} at epoch {n})"
        )
    else:
        overfitting = False
        note = (
            f"test loss ends within {OVERFIT_RISE:.0%} of its minimum (epoch {il + 1}): "
            "little overfitting"
        )
    published_params = PUBLISHED_PARAMS.get(run.model)
    pub_acc = PUBLISHED_ACCURACY.get(run.model)
    best_acc = m["val_accuracy"][ib]
    recipe = cfg["recipe"]
    return {
        "label": run.label,
        "model": run.model,
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
        "best_epoch": m["epoch"][ib],
        "final_test_accuracy": final_test,
        "final_train_accuracy": final_train,
        "generalisation_gap": final_train - final_test,
        "final_test_loss": final_loss,
        "lowest_test_loss": lowest,
        "lowest_test_loss_epoch": m["epoch"][il],
        "test_loss_rise": rise,
        "overfitting": overfitting,
        "overfitting_note": note,
        "seconds_per_epoch": sum(m["seconds"]) / n,
        "total_seconds": sum(m["seconds"]),
        "device": _device_text(cfg),
        "published_test_accuracy": pub_acc[1] if pub_acc else None,
        "published_test_accuracy_value": pub_acc[0] if pub_acc else None,
        "test_accuracy_difference": best_acc - pub_acc[0] if pub_acc else None,
        "post_overfitting": POST_OVERFITTING.get(run.model),
        "seed": cfg.get("seed"),
        "recipe": recipe.get("name", "seed"),
        "batch_size": recipe.get("batch_size"),
        "lr": recipe.get("lr"),
        "lr_milestones": recipe.get("lr_milestones"),
        "n_train": cfg.get("n_train"),
        "n_test": cfg.get("n_test"),
        "limit_train": cfg.get("limit_train"),
        "limit_test": cfg.get("limit_test"),
        "torch": (cfg.get("versions") or {}).get("torch"),
    }


# ---------------------------------------------------------------------- formatting


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _pts(x) -> str:
    return "–" if x is None else f"{100 * x:+.2f} pts"


def _int(x) -> str:
    return "–" if x is None else f"{x:,}"


def _signed_int(x) -> str:
    return "–" if x is None else ("0" if x == 0 else f"{x:+,}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _macs(x: int) -> str:
    return f"{x / 1e9:.3f} G"


def _mb(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


# ---------------------------------------------------------------------- figures


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def _line_style(n_points: int) -> dict:
    if n_points <= _MARKERS_UP_TO:
        return {"marker": "o", "markersize": 4 if n_points > 1 else 7}
    return {}


def _epoch_axis(ax, max_epoch: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if max_epoch <= 15:
        ax.set_xticks(range(1, max(max_epoch, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(max_epoch, 1) + 0.5)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _legend_label(run: RunData) -> str:
    return run.label if run.finished else f"{run.label}, {run.status}"


CURVES = [
    # file stem, metrics column, title, y label, percent
    ("test_accuracy", "val_accuracy", "Test accuracy by epoch", "test accuracy (%)", True),
    ("train_accuracy", "accuracy", "Train accuracy by epoch", "train accuracy (%)", True),
    ("test_loss", "val_loss", "Test loss by epoch", "test loss", False),
    ("train_loss", "loss", "Train loss by epoch", "train loss", False),
]


def _curves_figure(runs: list[RunData], column: str, title: str, ylabel: str, percent: bool):
    fig = _figure((9, 5.2))
    ax = fig.add_subplot()
    for r in runs:
        y = [100 * v for v in r.metrics[column]] if percent else r.metrics[column]
        ax.plot(
            r.metrics["epoch"],
            y,
            label=_legend_label(r),
            color=r.color,
            linewidth=1.6,
            **_line_style(r.epochs_done),
        )
    _epoch_axis(ax, max(r.epochs_done for r in runs))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(title="variant", loc="lower right" if percent else "upper right")
    return fig


def _lr_drops(ax, run: RunData) -> None:
    recipe = run.config["recipe"]
    if recipe.get("lr_schedule", "step") != "step":
        return  # a per-step schedule has no drops to mark
    drops = [int(m) for m in recipe.get("lr_milestones") or []]
    shown = [m for m in drops if 0 < m < run.epochs_done]
    for i, m in enumerate(shown):
        ax.axvline(
            m + 0.5, color="0.55", linestyle=":", linewidth=1, label="lr x0.1" if i == 0 else None
        )


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


def _train_vs_test_figure(run: RunData, s: dict):
    fig = _figure((11.5, 4.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    m, style = run.metrics, _line_style(run.epochs_done)
    x = m["epoch"]
    ax_loss.plot(x, m["loss"], label="train loss", color="C0", **style)
    ax_loss.plot(x, m["val_loss"], label="test loss", color="C3", **style)
    _star(
        ax_loss,
        s["lowest_test_loss_epoch"],
        s["lowest_test_loss"],
        f"lowest test loss (epoch {s['lowest_test_loss_epoch']})",
    )
    ax_acc.plot(x, [100 * v for v in m["accuracy"]], label="train accuracy", color="C0", **style)
    ax_acc.plot(x, [100 * v for v in m["val_accuracy"]], label="test accuracy", color="C3", **style)
    _star(
        ax_acc,
        s["best_epoch"],
        100 * s["best_test_accuracy"],
        f"best test accuracy (epoch {s['best_epoch']})",
    )
    for ax, ylabel, title in (
        (ax_loss, "loss", "Loss: train vs test"),
        (ax_acc, "accuracy (%)", "Accuracy: train vs test"),
    ):
        _lr_drops(ax, run)
        _epoch_axis(ax, run.epochs_done)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="best")
    status = "" if run.finished else f", {run.status}"
    fig.suptitle(f"{run.label}: train vs test{status}")
    return fig


def _model_size_figure(runs: list[RunData], summaries: list[dict]):
    import numpy as np

    fig = _figure((11.5, 5))
    ax_p, ax_s = fig.subplots(1, 2)
    x = np.arange(len(runs))
    w = 0.38
    labels = [r.label for r in runs]
    colors = [r.color for r in runs]

    ours = [s["params"] / 1e6 for s in summaries]
    post = [
        (s["published_params"] or 0) / 1e6 if s["published_params"] is not None else 0
        for s in summaries
    ]
    b1 = ax_p.bar(x - w / 2, ours, w, color=colors, label="this package")
    b2 = ax_p.bar(
        x + w / 2, post, w, facecolor="white", edgecolor="black", hatch="//", label="the post"
    )
    ax_p.bar_label(b1, labels=[f"{v:.1f}M" for v in ours], fontsize=8, padding=2)
    ax_p.bar_label(
        b2,
        labels=[
            f"{v:.1f}M" if s["published_params"] is not None else "–"
            for v, s in zip(post, summaries)
        ],
        fontsize=8,
        padding=2,
    )
    ax_p.set_title("Parameters")
    ax_p.set_ylabel("parameters (millions)")

    disk = [s["checkpoint_mb"] or 0 for s in summaries]
    fp32 = [s["params"] * 4 / 1e6 for s in summaries]
    b3 = ax_s.bar(x - w / 2, disk, w, color=colors, label="model.pt on disk")
    b4 = ax_s.bar(
        x + w / 2,
        fp32,
        w,
        facecolor="white",
        edgecolor="black",
        hatch="..",
        label="params x 4 bytes (about the post's .h5)",
    )
    ax_s.bar_label(
        b3,
        labels=[
            f"{v:.1f}" if s["checkpoint_mb"] is not None else "n/a" for v, s in zip(disk, summaries)
        ],
        fontsize=8,
        padding=2,
    )
    ax_s.bar_label(b4, labels=[f"{v:.1f}" for v in fp32], fontsize=8, padding=2)
    ax_s.set_title("Checkpoint size on disk")
    ax_s.set_ylabel("MB (10^6 bytes)")
    for ax, heights in ((ax_p, ours + post), (ax_s, disk + fp32)):
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylim(0, 1.4 * max(max(heights), 1e-9))  # headroom: the legend sits above the bars
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("Model size per variant")
    return fig


def _confusion_figure(run: RunData, classes: list[str], cm):
    import numpy as np

    cm = np.asarray(cm)
    fig = _figure((8, 7))
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
    fig = _figure((8.5, 5.2))
    ax = fig.add_subplot()
    y = list(range(len(classes)))
    vals = [100 * v for v in per_class]
    bars = ax.barh(y, vals, color=run.color)
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in vals], padding=3, fontsize=9)
    ax.axvline(
        100 * overall,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"all classes ({100 * overall:.1f}%)",
    )
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 108)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"Per-class test accuracy: {run.label} (final model)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _class_results(run: RunData):
    """(classes, confusion matrix, per-class accuracy) from result.json, or None if absent."""
    r = run.result or {}
    classes, cm, per = r.get("classes"), r.get("confusion_matrix"), r.get("per_class_accuracy")
    if isinstance(per, dict) and isinstance(classes, list):  # {class name: accuracy}
        per = [per.get(c) for c in classes]
    if not (isinstance(classes, list) and isinstance(cm, list) and isinstance(per, list)):
        return None
    if any(not isinstance(v, (int, float)) for v in per):
        return None
    k = len(classes)
    if k == 0 or len(cm) != k or any(len(row) != k for row in cm) or len(per) != k:
        return None
    return classes, cm, per


# ---------------------------------------------------------------------- a tiny document model


class _Doc:
    """Headings, paragraphs, lists, tables and figures, rendered as Markdown and as HTML.

    Inline text may hold `code` and **bold**, the only markup both renderings share.
    """

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], numeric: list[bool]):
        self.blocks.append(("table", header, rows, numeric))

    def img(self, file: str, alt: str, caption: str | None = None):
        self.blocks.append(("img", file, alt, caption))

    # Markdown -------------------------------------------------------------------------
    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in b[1]))
            elif kind == "table":
                _, header, rows, numeric = b
                align = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
                lines = [self._md_row(header), align] + [self._md_row(r) for r in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                _, file, alt, caption = b
                out.append(f"![{alt}]({file})" + (f"\n\n*{caption}*" if caption else ""))
        return "\n\n".join(out) + "\n"

    @staticmethod
    def _md_row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    # HTML -----------------------------------------------------------------------------
    def _html_row(self, cells: list[str], numeric: list[bool], tag: str) -> str:
        return (
            "<tr>"
            + "".join(
                f'<{tag} class="num">{self._inline(c)}</{tag}>'
                if n
                else f"<{tag}>{self._inline(c)}</{tag}>"
                for c, n in zip(cells, numeric)
            )
            + "</tr>"
        )

    @staticmethod
    def _inline(text: str) -> str:
        t = html.escape(text, quote=False)
        t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)

    def html(self, folder: Path, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                body.append(f"<h{b[1]}>{self._inline(b[2])}</h{b[1]}>")
            elif kind == "p":
                body.append(f"<p>{self._inline(b[1])}</p>")
            elif kind == "ul":
                items = "".join(f"<li>{self._inline(i)}</li>" for i in b[1])
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                _, header, rows, numeric = b
                body.append(
                    '<div class="table"><table><thead>'
                    + self._html_row(header, numeric, "th")
                    + "</thead><tbody>"
                    + "".join(self._html_row(r, numeric, "td") for r in rows)
                    + "</tbody></table></div>"
                )
            elif kind == "img":
                _, file, alt, caption = b
                data = (folder / file).read_bytes()
                w, h = _png_size(data)
                src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                cap = f"<figcaption>{self._inline(caption)}</figcaption>" if caption else ""
                body.append(
                    f'<figure><img src="{src}" alt="{html.escape(alt)}" width="{w}" '
                    f'height="{h}">{cap}</figure>'
                )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body)
            + "\n</main>\n</body>\n</html>\n"
        )


_CSS = """
body{margin:0;background:#fff;color:#1f2328;font:15px/1.5 -apple-system,"Segoe UI",
Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.4em;border-bottom:1px solid #d0d7de;padding-bottom:.25em;margin-top:1.8em}
code{font:0.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;
padding:.1em .3em;border-radius:4px}
.table{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right}
td.num{white-space:nowrap}
figure{margin:1.2em 0}
img{max-width:100%;height:auto;display:block}
figcaption{color:#59636e;font-size:.92em;margin-top:.3em}
"""


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("a figure is not a PNG file")
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------- the report


def _setting_notes(summaries: list[dict]) -> list[str]:
    """How these runs differ from the post's setting (300 epochs, all 50,000 / 10,000 images)."""
    notes = []
    other = sorted({s["recipe"] for s in summaries} - {"seed"})
    if other:
        notes.append("recipe " + ", ".join(f"`{r}`" for r in other) + " instead of the seed's")
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
        notes.append("unfinished: " + ", ".join(f"`{u}`" for u in unfinished))
    return notes


def _verdict(summaries: list[dict], best: dict) -> list[str]:
    lines = [
        f"**Best by best test accuracy: `{best['label']}`**, "
        f"{_pct(best['best_test_accuracy'])} at epoch {best['best_epoch']} of {best['epochs']}."
    ]
    if len(summaries) > 1:
        ranked = sorted(summaries, key=lambda s: -s["best_test_accuracy"])
        lines.append(
            "Ranking: "
            + ", ".join(f"`{s['label']}` {_pct(s['best_test_accuracy'])}" for s in ranked)
            + "."
        )
    post = [s for s in summaries if s["model"] == POST_BEST]
    if best["model"] == POST_BEST:
        lines.append(
            f"This agrees with the post, whose best is `{POST_BEST}` at about 92%; the difference "
            f"is {_pts(best['test_accuracy_difference'])}."
        )
    elif post:
        p = max(post, key=lambda s: s["best_test_accuracy"])
        lines.append(
            f"This differs from the post, whose best is `{POST_BEST}` at about 92%: here it "
            f"reached {_pct(p['best_test_accuracy'])}, "
            f"{100 * (best['best_test_accuracy'] - p['best_test_accuracy']):.2f} points below "
            f"`{best['label']}`."
        )
    else:
        lines.append(
            f"The post's best, `{POST_BEST}` (about 92%), is not among these runs, so its verdict "
            "cannot be checked here."
        )
    return lines


def build_report(run_dirs, out: str | os.PathLike, *, title: str | None = None) -> dict:
    """Write report.md, report.html, summary.json and the figures of ``run_dirs`` into ``out``.

    Returns the summary (also ``out/summary.json``). Raises ReportError for a folder that is not
    a run folder or holds no finished epoch.
    """
    import matplotlib

    runs = load_runs(run_dirs)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report folder {out}: {e.strerror or e}") from None
    out_abs = out.resolve()
    summaries = [run_summary(r) for r in runs]
    for r, s in zip(runs, summaries):
        rel = os.path.relpath(r.path.resolve(), out_abs)
        s["run_dir"] = rel
    best_i = max(range(len(runs)), key=lambda i: (summaries[i]["best_test_accuracy"], -i))
    best = summaries[best_i]
    with_classes = [
        (s["best_test_accuracy"], -i, i)
        for i, (r, s) in enumerate(zip(runs, summaries))
        if _class_results(r) is not None
    ]
    class_i = max(with_classes)[2] if with_classes else None

    figures: dict[str, str] = {}
    with matplotlib.rc_context(_RC):
        for stem, column, fig_title, ylabel, percent in CURVES:
            figures[stem] = f"{stem}.png"
            _save(_curves_figure(runs, column, fig_title, ylabel, percent), out / figures[stem])
        used: set[str] = set()
        for r, s in zip(runs, summaries):
            slug = _slug(r.label)
            while slug in used:
                slug += "_"
            used.add(slug)
            name = f"curves_{slug}.png"
            s["figures"] = {"train_vs_test": name}
            _save(_train_vs_test_figure(r, s), out / name)
        figures["model_size"] = "model_size.png"
        _save(_model_size_figure(runs, summaries), out / figures["model_size"])
        if class_i is not None:
            cr = runs[class_i]
            classes, cm, per = _class_results(cr)
            figures["confusion_matrix"] = "confusion_matrix.png"
            figures["per_class_accuracy"] = "per_class_accuracy.png"
            _save(_confusion_figure(cr, classes, cm), out / figures["confusion_matrix"])
            overall = summaries[class_i]["final_test_accuracy"]
            _save(_per_class_figure(cr, classes, per, overall), out / figures["per_class_accuracy"])

    all_figures = list(figures.values()) + [s["figures"]["train_vs_test"] for s in summaries]
    _remove_stale_figures(out, set(all_figures))

    title = title or "AlexNet on CIFAR-10: the variants compared"
    doc = _compose(runs, summaries, best, class_i, figures, out_abs, title)
    summary = {
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
        "class_results_of": summaries[class_i]["label"] if class_i is not None else None,
        "figures": figures,
        "report": {"markdown": "report.md", "html": "report.html"},
    }
    atomic_write_text(out / "report.md", doc.markdown())
    atomic_write_text(out / "report.html", doc.html(out, title))
    atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return _json_safe(summary)


def _json_safe(obj):
    """NaN and infinities become null: summary.json stays valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _remove_stale_figures(out: Path, keep: set[str]) -> None:
    """Figures an earlier report in ``out`` wrote and this one does not (e.g. a dropped run)."""
    old = out / "summary.json"
    if not old.is_file():
        return
    try:
        prev = json.loads(old.read_text())
        names = list(prev.get("figures", {}).values())
        names += [r["figures"]["train_vs_test"] for r in prev.get("runs", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    for name in names:
        if isinstance(name, str) and name.endswith(".png") and "/" not in name and name not in keep:
            (out / name).unlink(missing_ok=True)


def _compose(runs, summaries, best, class_i, figures, out_abs: Path, title: str) -> _Doc:
    doc = _Doc()
    doc.h(1, title)
    variants = sorted({s["model"] for s in summaries}, key=list(PRESETS).index)
    recipes = sorted({s["recipe"] for s in summaries})
    lrs = " / ".join(f"{lr:g}" for lr in sorted({s["lr"] for s in summaries}))
    if recipes == ["seed"]:
        how = (
            f"the seed recipe (SGD with Nesterov momentum, lr {lrs} divided by 10 at 1/3 and "
            "2/3 of the epochs, shifts and flips)"
        )
    else:
        how = (
            "the recipes " + ", ".join(f"`{r}`" for r in recipes) + f" (peak lr {lrs}; the "
            "fields of each are in its run's config.json)"
        )
    doc.p(
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} of "
        + ", ".join(f"`{v}`" for v in variants)
        + f", trained with {how}. Written by "
        f"alexnet-cifar {__version__} on {time.strftime('%Y-%m-%d')}."
    )

    doc.h(2, "Verdict")
    doc.ul(_verdict(summaries, best))
    notes = _setting_notes(summaries)
    if notes:
        doc.p(
            "**Not the post's setting:** "
            + "; ".join(notes)
            + ". The numbers show how far this training got; they are not comparable with the "
            "post's results."
        )
    doc.p("Overfitting (a test loss that rises after its minimum):")
    doc.ul([f"`{s['label']}`: {s['overfitting_note']}." for s in summaries])

    doc.h(2, "Results")
    header = [
        "variant",
        "epochs",
        "params",
        "MACs / image",
        "checkpoint MB",
        "best test acc.",
        "best at epoch",
        "final test acc.",
        "final train acc.",
        "gap",
        "lowest test loss: epoch",
        "s / epoch",
        "total time",
        "device",
    ]
    rows = []
    for s in summaries:
        epochs = (
            str(s["epochs"])
            if s["status"] == "finished"
            else f"unfinished (epoch {s['epochs']} of {s['epochs_planned']})"
        )
        rows.append(
            [
                f"`{s['label']}`",
                epochs,
                _int(s["params"]),
                _macs(s["macs"]),
                _mb(s["checkpoint_mb"]),
                _pct(s["best_test_accuracy"]),
                str(s["best_epoch"]),
                _pct(s["final_test_accuracy"]),
                _pct(s["final_train_accuracy"]),
                _pts(s["generalisation_gap"]),
                str(s["lowest_test_loss_epoch"]),
                f"{s['seconds_per_epoch']:.1f}",
                _duration(s["total_seconds"]),
                s["device"],
            ]
        )
    numeric = [False, False] + [True] * 11 + [False]
    doc.table(header, rows, numeric)
    doc.p(
        "**gap** (generalisation gap) = final train accuracy − final test accuracy. Train "
        "accuracy is the average over the epoch's batches with augmentation and dropout on, as "
        "Keras reports it; test accuracy is measured after the epoch. **checkpoint MB** is the "
        "size of the run's `model.pt` on disk (10^6 bytes; – while unfinished). **s / epoch** is "
        "the mean and **total time** the sum of the per-epoch seconds in `metrics.csv` (training "
        "and the test pass)."
    )

    doc.h(2, "Against the post")
    header2 = [
        "variant",
        "params: post",
        "params: ours",
        "difference",
        "test accuracy: post",
        "best test accuracy: ours",
        "difference",
        "overfitting: post",
        "overfitting: ours",
    ]
    rows2 = []
    for s in summaries:
        ours_over = {True: "yes", False: "no", None: "too short to tell"}[s["overfitting"]]
        rows2.append(
            [
                f"`{s['label']}`",
                _int(s["published_params"]),
                _int(s["params"]),
                _signed_int(s["params_difference"]),
                s["published_test_accuracy"] or "–",
                _pct(s["best_test_accuracy"]),
                _pts(s["test_accuracy_difference"]),
                s["post_overfitting"] or "–",
                ours_over,
            ]
        )
    doc.table(header2, rows2, [False, True, True, True, True, True, True, False, False])
    doc.p(
        'The post publishes the parameter counts of all five variants, "90%+" test accuracy '
        "for `alexnet_slim` (compared here as 90%) and about 92% for `alexnet_slim_regular`; "
        "for the others it gives curves but no number (–). Differences are ours minus the post's, "
        "in percentage points (pts) for accuracy."
    )

    doc.h(2, "Learning curves")
    captions = {
        "test_accuracy": "Test accuracy of every run after each epoch.",
        "train_accuracy": "Train accuracy (epoch average, augmentation and dropout on).",
        "test_loss": "Test loss (cross-entropy, plus the L2 term for the regularised variants). "
        'A curve that falls and then climbs is the post\'s "Nike swoosh": overfitting.',
        "train_loss": "Train loss (epoch average, plus the L2 term where the variant has one).",
    }
    for stem, _col, fig_title, _y, _p in CURVES:
        doc.img(figures[stem], fig_title, captions[stem])

    doc.h(2, "Train vs test, per variant")
    doc.p(
        "Each run's train and test curves side by side; the star marks the lowest test loss and "
        "the best test accuracy, dotted lines the learning-rate drops."
    )
    for r, s in zip(runs, summaries):
        doc.h(3, f"`{s['label']}`" + ("" if r.finished else f": {r.status}"))
        doc.img(s["figures"]["train_vs_test"], f"{s['label']}: train vs test", None)
        doc.p(
            f"Final train accuracy {_pct(s['final_train_accuracy'])}, final test accuracy "
            f"{_pct(s['final_test_accuracy'])} (gap {_pts(s['generalisation_gap'])}); "
            f"{s['overfitting_note']}."
        )

    doc.h(2, "Model size")
    doc.img(
        figures["model_size"],
        "Parameters and checkpoint size per variant",
        "Left: parameters, ours and the post's. Right: the final model file on disk, beside "
        "params x 4 bytes (float32), which is about the size of the post's saved .h5 files.",
    )

    doc.h(2, "The best variant, class by class")
    if class_i is None:
        doc.p(
            "No run has finished with per-class results (`result.json`), so there is no "
            "confusion matrix yet."
        )
    else:
        cs = summaries[class_i]
        if cs is not best:
            why = (
                "has not finished"
                if best["status"] != "finished"
                else "has no per-class results in its result.json"
            )
            doc.p(
                f"`{best['label']}` {why}, so these are the results of `{cs['label']}`, the "
                "best run that has them."
            )
        doc.p(
            f"`{cs['label']}`: the final model on its {_int(cs['n_test'])} test images "
            f"(test accuracy {_pct(cs['final_test_accuracy'])})."
        )
        doc.img(figures["confusion_matrix"], f"Confusion matrix of {cs['label']}", None)
        doc.img(figures["per_class_accuracy"], f"Per-class accuracy of {cs['label']}", None)

    doc.h(2, "Runs")
    items = []
    for r, s in zip(runs, summaries):
        subset = ""
        if s["limit_train"] or s["limit_test"]:
            subset = f", subsets of {_int(s['n_train'])} train / {_int(s['n_test'])} test images"
        items.append(
            f"`{s['label']}`: `{s['run_dir']}`, {r.status}, seed {s['seed']}, "
            f"{s['epochs_planned']} epochs, batch {s['batch_size']}, lr {s['lr']:g}{subset}; "
            f"{s['device']}, torch {s['torch']}"
        )
    doc.ul(items)

    doc.h(2, "TensorBoard")
    rels = [s["run_dir"] for s in summaries]
    if all(not rel.startswith("..") for rel in rels):
        doc.p(
            "The runs' TensorBoard events lie under this folder; `tensorboard --logdir .` here "
            "shows all runs side by side (scalars `loss`, `accuracy`, `val_loss`, "
            "`val_accuracy`, `lr`, `seconds`)."
        )
    else:
        spec = ",".join(f"{_slug(s['label'])}:{s['run_dir']}" for s in summaries)
        doc.p(f"From this folder, `tensorboard --logdir_spec {spec}` shows all runs side by side.")
    return doc
