"""The learning curves of several seeds per variant: the mean, a band from the lowest to the
highest run, and the single runs faint behind them (Matplotlib's Agg backend, as ``figures``).
"""

from __future__ import annotations

from pathlib import Path

from .figures import (
    CURVES,
    HELD_STYLE,
    STYLE,
    curve_labels,
    epoch_axis,
    legend_outside,
    new_figure,
    save_figure,
)
from .runs import RunData

__all__ = ["SEED_CURVES_FILE", "draw_seed_curves", "mean_and_range", "seed_curves_figure"]

SEED_CURVES_FILE = "curves_by_variant.png"


def mean_and_range(curves: list[list[float]]) -> tuple[list[int], list[float], list, list]:
    """(epochs, mean, min, max) per epoch over the curves that reach it."""
    longest = max(len(c) for c in curves)
    epochs, mean, low, high = [], [], [], []
    for e in range(longest):
        values = [c[e] for c in curves if len(c) > e]
        epochs.append(e + 1)
        mean.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
    return epochs, mean, low, high


def draw_seed_curves(runs: list[RunData], variants: list[dict], groups: list[dict], out: Path):
    """One figure of the four curves, each variant's runs as a mean with its range; returns
    its file name."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        save_figure(seed_curves_figure(runs, variants, groups), out / SEED_CURVES_FILE)
    return SEED_CURVES_FILE


def seed_curves_figure(runs: list[RunData], variants: list[dict], groups: list[dict]):
    """The figure of :func:`draw_seed_curves` (drawn within its Matplotlib style). Where some
    groups have a validation split and some not, each line says which it is."""
    held = [_held(v) for v in variants]
    kinds = set(held)
    fig = new_figure((14, 8.4))
    for ax, (_stem, column, quantity, percent) in zip(fig.subplots(2, 2).ravel(), CURVES):
        mixed = len(kinds) > 1 and column.startswith("val_")
        title, ylabel = curve_labels(
            column, quantity, percent, held[0] if len(kinds) == 1 else "mixed"
        )
        for i, (variant, group) in enumerate(zip(variants, groups)):
            scale = 100 if percent else 1
            curves = [[scale * v for v in runs[j].metrics[column]] for j in group["runs"]]
            label = f"{variant['label']} (mean of {len(curves)}{', ' + held[i] if mixed else ''})"
            _mean_and_band(ax, curves, f"C{i % 10}", HELD_STYLE[held[i]] if mixed else "-", label)
        epoch_axis(ax, max(r.epochs_done for r in runs))
        ax.set_title(title.replace(" (", "\n(", 1))  # four panels: narrower titles
        ax.set_ylabel(ylabel)
        legend_outside(ax, "variant")
    fig.suptitle("Learning curves per variant: mean, range over seeds, single runs")
    return fig


def _mean_and_band(ax, curves: list[list[float]], color: str, style: str, label: str) -> None:
    """The single runs faint, their range shaded and their mean thick (the one in the legend)."""
    for c in curves:
        ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.3, linewidth=0.8, linestyle=style)
    x, mean, low, high = mean_and_range(curves)
    ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
    ax.plot(
        x,
        mean,
        color=color,
        linewidth=2,
        linestyle=style,
        marker="o" if len(x) <= 40 else None,
        markersize=4 if len(x) > 1 else 7,
        label=label,
    )


def _held(variant: dict) -> str:
    """What a group's per-epoch val_* columns hold: "validation" or "test"."""
    return "validation" if variant["epoch_chosen_by"] == "validation" else "test"
