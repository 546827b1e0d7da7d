"""The report's verdict: the best run, or with several seeds the best variant by its mean; how
it compares with the post's best; and runs whose accuracy is near chance.

"Best" always says how it was chosen. A run without a validation split chose its best epoch by
the test set (optimistic: the same images chose and measured it); a run with one chose it by
its validation images, and its test set was evaluated at that epoch and at the last.
"""

from __future__ import annotations

import math

from . import cells
from .document import code
from .numbers import POST_BEST, POST_BEST_ACCURACY, held_out, held_out_of
from .stats import CONFIDENCE, SIGNIFICANCE

__all__ = ["CHANCE", "accuracy", "chance_measure", "chance_note", "interval_text",
    "measure_name", "run_best_text", "verdict"]

#: The accuracy of guessing among CIFAR-10's ten classes.
CHANCE = 1 / 10
#: An accuracy below this is called near chance.
NEAR_CHANCE = 0.20


def accuracy(s: dict) -> float:
    """A run's headline test accuracy for ranking; a run with none yet (unfinished) last."""
    v = s["best_test_accuracy"]
    return -math.inf if v is None or not math.isfinite(v) else v


def run_best_text(s: dict) -> str:
    """What "best" means for one run, with its numbers."""
    final = f"final test accuracy {cells.percent(s['final_test_accuracy'])}"
    if held_out(s) == "validation" and s["final_test_accuracy"] is None:
        return (
            f"best validation accuracy {cells.percent(s['best_val_accuracy'])} at epoch "
            f"{s['best_epoch']} so far; the test set is evaluated when the run finishes"
        )
    if held_out(s) == "validation":
        return (
            f"best validation accuracy {cells.percent(s['best_val_accuracy'])} at epoch "
            f"{s['best_epoch']}; test accuracy at that epoch "
            f"{cells.percent(s['best_test_accuracy'])}; {final}"
        )
    return (
        f"best test accuracy {cells.percent(s['best_test_accuracy'])} at epoch "
        f"{s['best_epoch']} (chosen by the test set, optimistic); {final}"
    )


def interval_text(d: dict) -> str:
    """A described accuracy's interval in words: clipped, or uninformative with few runs."""
    if d["ci_low"] is None:
        return "no interval: it needs two runs that vary"
    text = f"{CONFIDENCE:.0%} CI {cells.percent(d['ci_low'])} to {cells.percent(d['ci_high'])}"
    notes = []
    if d.get("ci_clipped"):
        notes.append("clipped to 0-100%")
    if not d.get("ci_informative", True):
        notes.append(f"uninformative with {d['n']} runs")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def measure_name(agg: dict) -> str:
    """The headline accuracy variants are judged by, in words."""
    chosen = {v["epoch_chosen_by"] for v in agg["variants"]}
    if chosen == {"validation"}:
        return "test accuracy at the best validation epoch"
    if chosen == {"test"}:
        return "best test accuracy (chosen by the test set, optimistic)"
    return "headline test accuracy (at the best validation epoch with a split, else best test)"


def _lead_text(best: dict) -> str:
    lead = best["lead"]
    if lead is None:
        return "It is the only variant."
    other = f"{code(best['runner_up'])}"
    diff = cells.points(lead["difference"])
    if best["significant"] is None:
        return (
            f"Its lead over {other} is {diff}; whether it is significant cannot be tested "
            "(it needs two finished runs of each that vary)."
        )
    ci = (
        f"{CONFIDENCE:.0%} CI {cells.points(lead['ci_low'])} to {cells.points(lead['ci_high'])}"
    )
    p = cells.p_value(lead["p_value"])
    p = p if p.startswith("<") else f"= {p}"
    if best["significant"]:
        return (
            f"Its lead over {other} is {diff} ({ci}, Welch p {p}): significant at "
            f"p < {SIGNIFICANCE}."
        )
    return (
        f"Its lead over {other} is {diff} ({ci}, Welch p {p}): not significant at "
        f"p < {SIGNIFICANCE}; these seeds cannot tell the two apart."
    )


def _variant_lines(agg: dict, summaries: list[dict]) -> list[str]:
    best = agg["best_variant"]
    measure = measure_name(agg)
    if best["mean"] is None:
        return ["No variant has a finished run with a test accuracy yet, so none is best yet."]
    lines = [
        f"**Best variant by its mean {measure}: {code(best['label'])}**, mean "
        f"{cells.percent(best['mean'])} over {best['n']} finished run"
        f"{'s' if best['n'] != 1 else ''} ({interval_text(best)}). " + _lead_text(best)
    ]
    ranked = sorted(summaries, key=lambda s: -accuracy(s))
    lines.append(
        "Single runs, for reference (a variant is judged by its mean, not by its luckiest "
        "run): "
        + ", ".join(f"{code(s['label'])} {cells.percent(s['best_test_accuracy'])}" for s in ranked)
        + "."
    )
    return lines


def _run_lines(summaries: list[dict], best: dict) -> list[str]:
    lines = [f"**Best run: {code(best['label'])}**: {run_best_text(best)}."]
    if len(summaries) > 1:
        ranked = sorted(summaries, key=lambda s: -accuracy(s))
        by = {
            "test": "best test accuracy",
            "validation": "test accuracy at the best validation epoch",
            "mixed": "test accuracy at the best epoch (chosen by validation with a split, "
            "else by the test set)",
        }[held_out_of(summaries)]
        lines.append(
            f"Ranking by {by}: "
            + ", ".join(
                f"{code(s['label'])} {cells.percent(s['best_test_accuracy'])}" for s in ranked
            )
            + "."
        )
    return lines


def _post_line(summaries: list[dict], model: str, label: str, value) -> str:
    """Whether the best (a run or a variant) agrees with the post's best."""
    if model == POST_BEST:
        return f"This agrees with the post, whose best is `{POST_BEST}` at {POST_BEST_ACCURACY}."
    of_post_best = [s for s in summaries if s["model"] == POST_BEST]
    if of_post_best and value is not None:
        post_acc = max(accuracy(s) for s in of_post_best)
        return (
            f"This differs from the post, whose best is `{POST_BEST}` at {POST_BEST_ACCURACY}: "
            f"here its best run reached {cells.percent(post_acc)}, below {code(label)} "
            f"({cells.percent(value)})."
        )
    return (
        f"The post's best, `{POST_BEST}` ({POST_BEST_ACCURACY}), is not among these runs, so "
        "its verdict cannot be checked here."
    )


def chance_measure(s: dict) -> tuple[str, float] | None:
    """The accuracy a run is judged by, with its name: its headline test accuracy, or for a
    run with a split that has not reached its test yet, its best validation accuracy."""
    v = s["best_test_accuracy"]
    if v is not None and math.isfinite(v):
        if held_out(s) == "validation":
            return "test accuracy at the best validation epoch", v
        return "best test accuracy", v
    v = s.get("best_val_accuracy")
    if held_out(s) == "validation" and v is not None and math.isfinite(v):
        return "best validation accuracy so far", v
    return None


def chance_note(summaries: list[dict]) -> str | None:
    """Runs whose accuracy is near 10%, the accuracy of guessing one of ten classes, each
    with the one accuracy that puts it there, named."""
    near = [(s, m) for s in summaries if (m := chance_measure(s)) and m[1] < NEAR_CHANCE]
    if not near:
        return None
    listed = ", ".join(f"{code(s['label'])} ({name} {cells.percent(v)})" for s, (name, v) in near)
    return (
        f"Near chance: {listed}. 10% is chance for CIFAR-10's ten classes (guessing), so "
        f"{'this run has' if len(near) == 1 else 'these runs have'} barely learned yet."
    )


def verdict(summaries: list[dict], best: dict, agg: dict | None) -> list[str]:
    """The verdict's bullet points."""
    if agg is not None:
        lines = _variant_lines(agg, summaries)
        b = agg["best_variant"]
        lines.append(_post_line(summaries, b["model"], b["label"], b["mean"]))
    else:
        lines = _run_lines(summaries, best)
        line = _post_line(summaries, best["model"], best["label"], best["best_test_accuracy"])
        if best["model"] == POST_BEST and best["test_accuracy_difference"] is not None:
            line += f" Ours differs from it by {cells.points(best['test_accuracy_difference'])}."
        lines.append(line)
    note = chance_note(summaries)
    return lines + ([note] if note else [])
