"""The learning curves of several seeds per variant: the mean, a band from the lowest to the
highest run, and the single runs faint behind them (Matplotlib's Agg backend, as ``figures``).
"""

from __future__ import annotations

from pathlib import Path

from .figures import CURVES, STYLE, _epoch_axis, _figure, _save
from .runs import RunData

__all__ = ["SEED_CURVES_FILE", "draw_seed_curves", "mean_and_range"]

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
        fig = _figure((12, 8.4))
        axes = fig.subplots(2, 2).ravel()
        for ax, (_stem, column, title, ylabel, percent) in zip(axes, CURVES):
            for i, (variant, group) in enumerate(zip(variants, groups)):
                scale = 100 if percent else 1
                curves = [[scale * v for v in runs[j].metrics[column]] for j in group["runs"]]
                color = f"C{i % 10}"
                for c in curves:
                    ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.3, linewidth=0.8)
                x, mean, low, high = mean_and_range(curves)
                ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
                ax.plot(
                    x,
                    mean,
                    color=color,
                    linewidth=2,
                    marker="o" if len(x) <= 40 else None,
                    markersize=4 if len(x) > 1 else 7,
                    label=f"{variant['label']} (mean of {len(curves)})",
                )
            _epoch_axis(ax, max(r.epochs_done for r in runs))
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.legend(title="variant", loc="best")
        fig.suptitle("Learning curves per variant: mean, range over seeds, single runs")
        _save(fig, out / SEED_CURVES_FILE)
    return SEED_CURVES_FILE
