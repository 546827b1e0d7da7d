"""The report's statistics against published values: Student's t quantiles from a printed
table, Welch's test from the worked examples of its Wikipedia article (t, degrees of freedom
and p as printed there, to their rounding)."""

import math

import pytest

from alexnet_cifar.report.stats import describe, welch

# Welch's t-test, Wikipedia, "Examples": two samples of 15 (unequal spreads) and of 10 and 20.
EXAMPLE_1 = (
    [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
    [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4],
    (-2.46, 25.0, 0.021, 2.060),  # and t(0.975) for 25 degrees of freedom, from a table
)
EXAMPLE_2 = (
    [17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
    [21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8]
    + [20.7, 21.7, 21.5, 22.5, 23.6, 21.5, 22.5, 23.5, 21.5, 21.8],
    (-1.57, 9.9, 0.149, 2.228),  # t(0.975) for 10
)


@pytest.mark.parametrize("a, b, printed", [EXAMPLE_1, EXAMPLE_2])
def test_welch_gives_the_published_examples(a, b, printed):
    t, df, p, t_table = printed
    w = welch(a, b)
    assert (round(w["t"], 2), round(w["df"], 1), round(w["p_value"], 3)) == (t, df, p)
    assert w["difference"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b), rel=1e-12)
    # the interval is the difference -+ t(0.975, df) standard errors, so it holds 0 exactly
    # when the test does not reject at 5%
    assert (w["ci_low"] < 0 < w["ci_high"]) == (w["p_value"] >= 0.05)
    se = w["difference"] / w["t"]
    assert w["ci_high"] - w["difference"] == pytest.approx(w["difference"] - w["ci_low"])
    assert (w["ci_high"] - w["ci_low"]) / (2 * se) == pytest.approx(t_table, abs=0.01)


@pytest.mark.parametrize("values, t_table", [([1.0, 2.0, 3.0], 4.303), ([2, 4, 4, 5, 10], 2.776)])
def test_the_interval_of_a_mean_uses_students_t(values, t_table):
    """t(0.975) for 2 and 4 degrees of freedom, as printed tables give them."""
    d = describe(values)
    n, mean = len(values), sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert (d["n"], d["mean"], d["std"]) == (n, pytest.approx(mean), pytest.approx(std))
    half = t_table * std / math.sqrt(n)
    assert d["ci_low"] == pytest.approx(mean - half, abs=1e-3 * std)
    assert d["ci_high"] == pytest.approx(mean + half, abs=1e-3 * std)
    assert d["ci_informative"] and not d["ci_clipped"]


def test_too_few_or_identical_values_give_none_never_nan():
    assert describe([0.5])["std"] is None and describe([0.5])["mean"] == 0.5
    assert describe([None, float("nan")])["n"] == 0
    two = describe([0.97, 0.99], bounds=(0.0, 1.0))
    assert two["ci_high"] == 1.0 and two["ci_clipped"] and not two["ci_informative"]
    same = welch([0.5, 0.5], [0.5, 0.5])
    assert same["difference"] == 0 and same["p_value"] is same["t"] is same["ci_low"] is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a report prints no warning for nearly equal runs
        u = math.nextafter(0.5, 1.0)  # the next float: runs that differ by rounding only
        close = welch([0.5, u, 0.5], [0.5, 0.5, u, u])
    assert close["difference"] is not None
    one = welch([0.5], [0.4, 0.6])
    assert one["difference"] == pytest.approx(0.0) and one["p_value"] is None
