"""The statistics of a study with several seeds: a sample described, and two samples compared.

A sample of runs is described by its mean, its standard deviation (n - 1 in the denominator),
the 95% confidence interval of the mean from Student's t distribution, and its range. Two
samples are compared by the difference of their means, with its 95% confidence interval and
the two-sided p-value of Welch's t-test (which does not assume equal variances). With fewer
than two runs on a side, a spread, an interval and a test are undefined: those numbers are
None (written "–" and null), never NaN; with two the interval is defined but uninformative.
An accuracy's interval is clipped to 0-100%, and marked as clipped.

The t quantiles and Welch's test are ``scipy.stats``' (``t.ppf``, ``ttest_ind`` with
``equal_var=False``), imported where they are used: a command that makes no report does not
load SciPy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

__all__ = ["CONFIDENCE", "INFORMATIVE_N", "SIGNIFICANCE", "describe", "welch"]

#: The confidence level of every interval.
CONFIDENCE = 0.95
#: A comparison decides a claim when its p-value is below this.
SIGNIFICANCE = 0.05
#: Fewer runs than this give an interval too wide to say anything (t = 12.7 for two).
INFORMATIVE_N = 3


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def describe(values: Sequence[float | None], bounds: tuple[float, float] | None = None) -> dict:
    """n, mean, std, the 95% CI of the mean (ci_low, ci_high), min and max of ``values``
    (None and NaN left out).

    ``bounds``: the range the number cannot leave (0 to 1 for an accuracy); an interval that
    reaches past it is clipped to it, and ``ci_clipped`` says so. With fewer than
    ``INFORMATIVE_N`` values an interval exists but is too wide to inform: ``ci_informative``.
    """
    x = _finite(values)
    n = len(x)
    out = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    out.update(ci_clipped=False, ci_informative=n >= INFORMATIVE_N)
    out.update(min=min(x) if x else None, max=max(x) if x else None)
    if n == 0:
        return out
    mean = math.fsum(x) / n
    out["mean"] = mean
    if n < 2:
        return out
    from scipy import stats

    std = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None and (low < bounds[0] or high > bounds[1]):
        low, high = max(low, bounds[0]), min(high, bounds[1])
        out["ci_clipped"] = True
    out.update(std=std, ci_low=low, ci_high=high)
    return out


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """mean(a) - mean(b) with its 95% CI, Welch's t, its degrees of freedom and the two-sided
    p-value. The difference needs one value on each side; the rest needs two, and a spread
    (two samples without any variance cannot be tested)."""
    x, y = _finite(a), _finite(b)
    out = {
        "n_a": len(x),
        "n_b": len(y),
        "difference": None,
        "ci_low": None,
        "ci_high": None,
        "t": None,
        "df": None,
        "p_value": None,
        "ci_informative": min(len(x), len(y)) >= INFORMATIVE_N,
    }
    if not x or not y:
        return out
    da, db = describe(x), describe(y)
    out["difference"] = da["mean"] - db["mean"]
    if len(x) < 2 or len(y) < 2 or da["std"] == db["std"] == 0:
        return out
    from scipy import stats

    with warnings.catch_warnings():  # nearly equal runs: SciPy warns of rounding, on stderr
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(x, y, equal_var=False)
        ci = test.confidence_interval(CONFIDENCE)
    out.update(
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        t=float(test.statistic),
        df=float(test.df),
        p_value=float(test.pvalue),
    )
    return out
