"""The report's sections for several seeds per variant and for runs with a validation split.

Both add to the single-run report and leave it as it was when they do not apply: "Across
seeds" appears when a variant has several runs, "Model selection" when a run has a validation
split.
"""

from __future__ import annotations

from . import cells
from .aggregate import AGGREGATED
from .document import Column, Document, code, literal
from .stats import CONFIDENCE, INFORMATIVE_N, SIGNIFICANCE
from .verdict import measure_name

__all__ = ["SEED_DEFINITIONS", "seeds_section", "seeds_summary", "selection_section"]

#: What summary.json says the aggregate numbers are.
SEED_DEFINITIONS = {
    "variants": "runs that differ only in their seed, described over their finished runs: "
    "mean, std (n - 1), 95% confidence interval of the mean (Student t), min and max; an "
    "accuracy's interval is clipped to 0-1 and a time's or a loss's at 0 (ci_clipped), and "
    "ci_informative is false with "
    f"fewer than {INFORMATIVE_N} runs; folders and differs_in say which runs a group holds",
    "best_variant": "the group with the highest mean headline accuracy, its interval, and "
    "Welch's t-test of its lead over the next (lead; significant at p < "
    f"{SIGNIFICANCE})",
    "claims": "the post's claims, each mean(a) - mean(b) of the headline accuracy "
    "(best_test_accuracy) with its 95% confidence interval and Welch's t-test p-value; "
    f"supported or contradicted at p < {SIGNIFICANCE}, else undecided",
}


def _number(x, kind: str, spread: bool = False, unit: str = "m") -> str:
    """A value of an aggregated number; ``spread``: a standard deviation of it; ``unit``: a
    duration's, one for its whole row."""
    if kind == "share":
        return cells.points(x, sign=False) if spread else cells.percent(x)
    if kind == "points":
        return cells.points(x, sign=not spread)
    if kind == "seconds":
        return cells.duration_in(x, unit)
    return cells.number(x, lambda v: f"{v:.4f}")


def _cell(r: dict, key: str, spread: bool = False) -> str:
    return _number(r[key], r["kind"], spread, r.get("unit", "m"))


def _interval(r: dict) -> str:
    """An interval, marked * where clipped to what the number can be (0-100%, or 0) and †
    where too few runs inform it."""
    if r["ci_low"] is None:
        return "–"
    marks = ("*" if r.get("ci_clipped") else "") + ("†" if not r.get("ci_informative") else "")
    return f"{_cell(r, 'ci_low')} to {_cell(r, 'ci_high')}{marks}"


def _measure_name(name: str, key: str, variant: dict) -> str:
    if variant["epoch_chosen_by"] != "validation":
        return name
    return {
        "best_test_accuracy": "test accuracy at the best validation epoch",
        "lowest_test_loss": "lowest validation loss",
    }.get(key, name)


#: The values of a described number that a row shows.
_VALUES = ("mean", "std", "ci_low", "ci_high", "min", "max")


def _variant_rows(agg: dict) -> list[dict]:
    rows = []
    for v in agg["variants"]:
        for key, name, kind in AGGREGATED:
            d = v[key]
            row = {"variant": v, "name": _measure_name(name, key, v), "kind": kind, **d}
            if kind == "seconds":  # one unit for the row's every cell
                row["unit"] = cells.duration_unit([d[k] for k in _VALUES])
            rows.append(row)
    return rows


VARIANT_COLUMNS = [
    Column("variant", lambda r: code(r["variant"]["label"])),
    Column("measure", lambda r: r["name"]),
    Column("runs", lambda r: f"{r['n']}", numeric=True),
    Column("mean", lambda r: _cell(r, "mean"), numeric=True),
    Column("std", lambda r: _cell(r, "std", spread=True), numeric=True),
    Column(f"{CONFIDENCE:.0%} CI", _interval, numeric=True),
    Column("min", lambda r: _cell(r, "min"), numeric=True),
    Column("max", lambda r: _cell(r, "max"), numeric=True),
]


def _diff_ci(c: dict) -> str:
    if c["ci_low"] is None:
        return "–"
    mark = "" if c.get("ci_informative", True) else "†"
    return f"{100 * c['ci_low']:+.2f} to {100 * c['ci_high']:+.2f} pts{mark}"


COMPARISON_COLUMNS = [
    Column("a - b", lambda c: f"{code(c['a'])} - {code(c['b'])}"),
    Column("runs", lambda c: f"{c['n_a']} / {c['n_b']}", numeric=True),
    Column("difference of means", lambda c: cells.points(c["difference"]), numeric=True),
    Column(f"{CONFIDENCE:.0%} CI", _diff_ci, numeric=True),
    Column("p (Welch)", lambda c: cells.p_value(c["p_value"]), numeric=True),
    Column("verdict", lambda c: c["verdict"]),
]
CLAIM_COLUMNS = [Column("question", lambda c: c["question"]), *COMPARISON_COLUMNS]


def _chosen_by_text(agg: dict) -> str:
    chosen = {v["epoch_chosen_by"] for v in agg["variants"]}
    if chosen == {"test"}:
        return (
            "Every run chose its best epoch by the test set, as the post does, so the best "
            "test accuracy is an optimistic figure; a validation split (`--val-split`) avoids "
            "that."
        )
    if chosen == {"validation"}:
        return (
            "Every run chose its best epoch by its held-out validation images; its test set "
            "was evaluated once, at the end."
        )
    return (
        "Some variants chose their best epoch by the test set and some by a validation split "
        "(see Model selection): their best test accuracies are not measured alike."
    )


def seeds_section(doc: Document, content) -> None:
    """Across seeds: each variant described, the post's claims tested, the curves' spread."""
    agg = content.aggregate
    if agg is None:
        return
    doc.heading(2, "Across seeds")
    seeds = sorted({seed for v in agg["variants"] for seed in v["seeds"] if seed is not None})
    n_runs, n_groups = sum(v["n_runs"] for v in agg["variants"]), len(agg["variants"])
    n_variants = len({v["model"] for v in agg["variants"]})
    groups = "" if n_groups == n_variants else f" in {n_groups} groups"
    doc.paragraph(
        f"{n_runs} runs of {n_variants} variant{'s' if n_variants != 1 else ''}{groups}, seeds "
        + ", ".join(str(s) for s in seeds)
        + ". A group is the runs that differ in nothing but their seed. Each number is "
        "described over the finished runs of a group: mean, standard deviation, "
        f"{CONFIDENCE:.0%} confidence interval of the mean (Student t) and range; with one run "
        "the spread and the interval are undefined (–). An accuracy's interval is clipped to "
        "0-100%, and a time's or a loss's at 0, where it would reach past them (marked *); a "
        f"row of times is written in one unit; with fewer than {INFORMATIVE_N} "
        "runs the interval is too wide to inform (marked †: t is 12.7 with two runs). "
        + _chosen_by_text(agg)
    )
    doc.bullets([_group_item(v) for v in agg["variants"]])
    doc.table(VARIANT_COLUMNS, _variant_rows(agg))
    doc.heading(3, "The post's claims")
    _claims(doc, agg)
    if agg["other_pairs"]:
        doc.heading(3, "Other pairs")
        doc.table(COMPARISON_COLUMNS, agg["other_pairs"])
    doc.paragraph(
        "Each comparison is the difference of the variants' mean headline accuracy (the best "
        "test accuracy; with a validation split the test accuracy of the epoch validation "
        f"chose), with its {CONFIDENCE:.0%} confidence interval and the two-sided p-value of "
        f"Welch's t-test. A claim is supported or contradicted at p < {SIGNIFICANCE}; "
        "otherwise these seeds cannot decide it."
    )
    doc.figure(
        content.figures["curves_by_variant"],
        "Learning curves per variant: mean and range over seeds",
        "Each variant's mean over its runs (thick line), the range of its runs (shaded, min "
        "to max) and the single runs (faint lines).",
    )


def _group_item(v: dict) -> str:
    """A group: its label, what tells it from the variant's other groups, and its folders."""
    differs = ", ".join(
        f"{k} {literal(val)}" if val is not None else f"no {k}"
        for k, val in v.get("differs_in", {}).items()
    )
    finished = "" if v["n_finished"] == v["n_runs"] else f", {v['n_finished']} finished"
    return (
        f"{code(v['label'])}: {v['n_runs']} run{'s' if v['n_runs'] != 1 else ''}{finished}"
        + (f" ({differs})" if differs else "")
        + ": "
        + ", ".join(code(f) for f in v["folders"])
    )


def _claims(doc: Document, agg: dict) -> None:
    if not agg["claims"]:
        doc.paragraph(
            "None of the post's claims compares two variants of this study (they compare "
            "`alexnet_slim_regular` with `alexnet_slim` and with each thinner variant, and "
            "`alexnet_slim` with `alexnet`)."
        )
        return
    doc.table(CLAIM_COLUMNS, agg["claims"])
    v = agg["claims_verdict"]
    lines = []
    for kind, words in (
        ("supported", "Supported by these runs"),
        ("contradicted", "Contradicted by these runs"),
        ("undecided", "Not decided with this many seeds"),
    ):
        if v[kind]:
            lines.append(f"**{words}:** " + "; ".join(v[kind]) + ".")
    doc.bullets(lines)


SELECTION_COLUMNS = [
    Column("run", lambda s: code(s["label"])),
    Column(
        "epoch chosen by",
        lambda s: (
            f"{s['val_split']:,} validation images"
            if s.get("epoch_chosen_by") == "validation"
            else "the test set"
        ),
    ),
    Column("best epoch", lambda s: str(s["best_epoch"]), numeric=True),
    Column("best validation acc.", lambda s: cells.percent(s.get("best_val_accuracy")), True),
    Column("test acc. at that epoch", lambda s: cells.percent(s["best_test_accuracy"]), True),
    Column("final test acc.", lambda s: cells.percent(s["final_test_accuracy"]), True),
]


def selection_section(doc: Document, content) -> None:
    """Model selection: which runs chose their epoch by the test set, which by validation."""
    if not any(s.get("epoch_chosen_by") == "validation" for s in content.summaries):
        return
    doc.heading(2, "Model selection")
    doc.paragraph(
        "A run without a validation split evaluates the test set after every epoch and its "
        "best epoch is chosen by it, as in the post: its best test accuracy is optimistic. A "
        "run with a split holds out class-balanced training images, fixed by its seed, to "
        "evaluate each epoch; its test set is evaluated once, at the end, on the final weights "
        "and on those of the best validation epoch. For such runs the per-epoch curves, the "
        "lowest loss and the overfitting notes are of the validation images, and the test "
        "accuracies in the tables are those two evaluations (– while unfinished)."
    )
    doc.table(SELECTION_COLUMNS, content.summaries)


def seeds_summary(agg: dict | None) -> dict:
    """What summary.json gains from several seeds: the variants and the comparisons."""
    if agg is None:
        return {}
    return {
        "variants": agg["variants"],
        "claims": agg["claims"],
        "other_pairs": agg["other_pairs"],
        "claims_verdict": agg["claims_verdict"],
        "best_variant": {**agg["best_variant"], "measure_name": measure_name(agg)},
    }
