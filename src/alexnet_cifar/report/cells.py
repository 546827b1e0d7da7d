"""The report's one set of cell formatters: every number of its tables and sentences.

"–" where a number is missing (None: a run with none yet), "diverged" where it is NaN or
infinite (a diverged run), so that no table ever shows "nan".
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..training.runlog import format_duration
from .document import code

__all__ = [
    "count",
    "duration",
    "duration_in",
    "duration_unit",
    "epochs",
    "giga_macs",
    "megabytes",
    "number",
    "p_value",
    "percent",
    "points",
    "seconds",
    "signed_count",
    "variant",
]


def number(x, text: Callable[[float], str]) -> str:
    """``text(x)``; "–" where the number is missing, "diverged" where it is NaN or infinite."""
    if x is None:
        return "–"
    return text(x) if math.isfinite(x) else "diverged"


def percent(x) -> str:
    """A share as a percentage: 0.9123 -> 91.23%."""
    return number(x, lambda v: f"{100 * v:.2f}%")


def points(x, sign: bool = True) -> str:
    """A difference of shares in percentage points: 0.0123 -> +1.23 pts (a spread unsigned)."""
    return number(x, lambda v: f"{100 * v:+.2f} pts" if sign else f"{100 * v:.2f} pts")


def seconds(x) -> str:
    return number(x, lambda v: f"{v:.1f}")


def duration(x) -> str:
    return number(x, format_duration)


def duration_unit(values) -> str:
    """The one unit a row of durations is written in, set by its largest: "s" (42.0 s) below
    a minute, "m" (3m05s) below an hour, else "h" (2h07m)."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    return "s" if top < 59.95 else "m" if top < 3599.5 else "h"


def duration_in(x, unit: str) -> str:
    """A duration in the unit :func:`duration_unit` chose for its row."""

    def text(v: float) -> str:
        if unit == "s":
            return f"{v:.1f} s"
        whole = int(round(v))
        if unit == "m":
            return f"{whole // 60}m{whole % 60:02d}s"
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"

    return number(x, text)


def count(x) -> str:
    """A count with thousands separators: 1234567 -> 1,234,567."""
    return "–" if x is None else f"{x:,}"


def signed_count(x) -> str:
    return "–" if x is None else ("0" if x == 0 else f"{x:+,}")


def giga_macs(x) -> str:
    """Multiply-accumulates in billions."""
    return number(x, lambda v: f"{v / 1e9:.3f} G")


def megabytes(x) -> str:
    """Megabytes (10^6 bytes), one decimal."""
    return number(x, lambda v: f"{v:.1f}")


def p_value(x) -> str:
    return number(x, lambda v: "< 0.001" if v < 0.001 else f"{v:.3f}")


def variant(s: dict) -> str:
    return code(s["label"])


def epochs(s: dict) -> str:
    if s["status"] == "finished":
        return str(s["epochs"])
    return f"unfinished (epoch {s['epochs']} of {s['epochs_planned']})"
