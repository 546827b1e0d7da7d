"""Several seeds per variant: the runs grouped, each group described, the post's claims tested.

Runs belong to one group when they differ in nothing but their seed (the same variant, recipe,
subsets and validation split). Each group's finished runs are described (mean, standard
deviation, 95% Student-t interval, range) for the numbers the report shows per run, and pairs of
groups are compared by Welch's t-test on the headline accuracy: the best test accuracy (the
post's measure), or with a validation split the test accuracy of the epoch validation chose.

The post's claims, each a difference of means that it says is positive:

* ``alexnet_slim_regular`` - ``alexnet_slim``: he_normal and L2 raise accuracy;
* ``alexnet_thinner_N`` - ``alexnet_slim_regular``, negated: thinning costs accuracy (the post's
  best is ``alexnet_slim_regular``);
* ``alexnet_slim`` - ``alexnet``: the 3x3/1 stem beats the 11x11/4 stem and its max-pool.

A claim is supported when the difference has its sign and p < 0.05, contradicted when it has
the other sign and p < 0.05, and otherwise undecided with this many seeds (one run on a side
cannot decide it at all). Pairs of groups no claim covers are compared the same way, without a
claim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations

from ..training.resume import identity_of_config
from .runs import RunData
from .stats import SIGNIFICANCE, describe, welch

__all__ = ["AGGREGATED", "CLAIMS", "Claim", "aggregate", "groups_of"]


@dataclass(frozen=True)
class Claim:
    """The post says ``a`` is more accurate than ``b`` (tested as mean(a) - mean(b) > 0)."""

    a: str
    b: str
    question: str
    claim: str


CLAIMS = [
    Claim(
        "alexnet_slim_regular",
        "alexnet_slim",
        "does he_normal + L2 help?",
        "`alexnet_slim_regular` is more accurate than `alexnet_slim`",
    ),
    Claim(
        "alexnet_slim_regular",
        "alexnet_thinner_2",
        "what does thinning to half width cost?",
        "`alexnet_slim_regular` is more accurate than `alexnet_thinner_2`",
    ),
    Claim(
        "alexnet_slim_regular",
        "alexnet_thinner_4",
        "what does thinning to a quarter cost?",
        "`alexnet_slim_regular` is more accurate than `alexnet_thinner_4`",
    ),
    Claim(
        "alexnet_slim",
        "alexnet",
        "does the stem matter?",
        "`alexnet_slim` (one conv 3x3/1) is more accurate than `alexnet` (conv 11x11/4 and "
        "max-pool)",
    ),
]

#: The numbers described per group: summary key, name, kind of number.
AGGREGATED = [
    ("best_test_accuracy", "best test accuracy", "share"),
    ("final_test_accuracy", "final test accuracy", "share"),
    ("lowest_test_loss", "lowest test loss", "loss"),
    ("generalisation_gap", "generalisation gap", "points"),
    ("total_seconds", "time", "seconds"),
]
#: The range each kind of number cannot leave: its interval is clipped to it (and marked).
BOUNDS = {"share": (0.0, 1.0), "loss": (0.0, math.inf), "seconds": (0.0, math.inf)}
#: The number pairs of groups are compared on.
COMPARED = "best_test_accuracy"


def _identity_key(config: dict) -> str:
    ident = {k: v for k, v in identity_of_config(config).items() if k != "seed"}
    return json.dumps(ident, sort_keys=True, default=str)


def groups_of(runs: list[RunData]) -> list[dict]:
    """The runs grouped by everything but their seed, in the runs' order: each group's label
    (its variant, numbered where a variant has several groups), variant and run indices."""
    order: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        order.setdefault(_identity_key(r.config), []).append(i)
    groups = [{"model": runs[idx[0]].model, "runs": idx} for idx in order.values()]
    for g in groups:
        same = [h for h in groups if h["model"] == g["model"]]
        g["label"] = g["model"] if len(same) == 1 else f"{g['model']} [{same.index(g) + 1}]"
    return groups


def _group_numbers(group: dict, runs: list[RunData], summaries: list[dict]) -> dict:
    members = [summaries[i] for i in group["runs"]]
    finished = [s for s in members if s["status"] == "finished"]
    chosen = {s.get("epoch_chosen_by", "test") for s in members}
    out = {
        "label": group["label"],
        "model": group["model"],
        "runs": [s["label"] for s in members],
        "seeds": [s["seed"] for s in members],
        "n_runs": len(members),
        "n_finished": len(finished),
        "epoch_chosen_by": chosen.pop() if len(chosen) == 1 else "mixed",
        "val_split": runs[group["runs"][0]].config.get("val_split"),
    }
    out["folders"] = [s["run_dir"] for s in members]
    for key, _name, kind in AGGREGATED:
        out[key] = describe([s[key] for s in finished], BOUNDS.get(kind))
    return out


def _differences(groups: list[dict], runs: list[RunData]) -> None:
    """Each group's ``differs_in``: the settings that tell it from the other groups of its
    variant (as {setting: its value}); empty for a variant with one group."""
    idents = [identity_of_config(runs[g["runs"][0]].config) for g in groups]
    for g, ident in zip(groups, idents):
        others = [i for h, i in zip(groups, idents) if h is not g and h["model"] == g["model"]]
        keys = sorted({k for o in others for k in set(o) | set(ident) if o.get(k) != ident.get(k)})
        g["differs_in"] = {k: ident.get(k) for k in keys if k != "seed"}


def _best_variant(numbers: list[dict], summaries: list[dict], groups: list[dict]) -> dict:
    """The group with the highest mean headline accuracy, and whether it leads the next one
    by more than chance (Welch's t-test, p < SIGNIFICANCE)."""

    def mean(g: dict) -> float:
        m = g[COMPARED]["mean"]
        return -math.inf if m is None else m

    ranked = sorted(numbers, key=lambda g: -mean(g))
    best = ranked[0]
    out = {
        "label": best["label"],
        "model": best["model"],
        "measure": COMPARED,
        **{k: best[COMPARED][k] for k in ("n", "mean", "std", "ci_low", "ci_high")},
        "ci_clipped": best[COMPARED]["ci_clipped"],
        "ci_informative": best[COMPARED]["ci_informative"],
        "ranking": [g["label"] for g in ranked],
        "runner_up": None,
        "lead": None,
        "significant": None,
    }
    if len(ranked) > 1 and best[COMPARED]["mean"] is not None:
        lead = _compare(best, ranked[1], None, summaries, groups)
        out["runner_up"] = ranked[1]["label"]
        out["lead"] = lead
        out["significant"] = (
            None
            if lead["p_value"] is None
            else bool(lead["p_value"] < SIGNIFICANCE and lead["difference"] > 0)
        )
    return out


def _verdict(comparison: dict, expected_sign: int | None) -> str:
    p, diff = comparison["p_value"], comparison["difference"]
    if comparison["n_a"] < 2 or comparison["n_b"] < 2:
        return "cannot be decided: needs two finished runs of each"
    if p is None:
        return "cannot be decided: the runs do not vary"
    if p >= SIGNIFICANCE:
        return "undecided with this many seeds" if expected_sign else "no difference shown"
    if expected_sign is None:
        return "differ"
    return "supported" if diff * expected_sign > 0 else "contradicted"


def _compare(a: dict, b: dict, claim: Claim | None, summaries, groups) -> dict:
    by_label = {g["label"]: g for g in groups}
    values = [
        [summaries[i][COMPARED] for i in by_label[x["label"]]["runs"] if _done(summaries[i])]
        for x in (a, b)
    ]
    result = welch(*values)
    return {
        "a": a["label"],
        "b": b["label"],
        "question": claim.question if claim else None,
        "claim": claim.claim if claim else None,
        "measure": COMPARED,
        **result,
        "verdict": _verdict(result, 1 if claim else None),
    }


def _done(summary: dict) -> bool:
    return summary["status"] == "finished"


def aggregate(runs: list[RunData], summaries: list[dict]) -> dict | None:
    """The groups described and compared; None when no group has several runs (the report
    is then the single-run report)."""
    groups = groups_of(runs)
    if all(len(g["runs"]) < 2 for g in groups):
        return None
    _differences(groups, runs)
    numbers = [_group_numbers(g, runs, summaries) for g in groups]
    for g, n in zip(groups, numbers):
        n["differs_in"] = g["differs_in"]
    by_model = {}
    for g in numbers:
        by_model.setdefault(g["model"], g)  # a variant's first group stands for it in claims
    claims, covered = [], set()
    for c in CLAIMS:
        if c.a in by_model and c.b in by_model:
            claims.append(_compare(by_model[c.a], by_model[c.b], c, summaries, groups))
            covered.add(frozenset((by_model[c.a]["label"], by_model[c.b]["label"])))
    others = [
        _compare(a, b, None, summaries, groups)
        for a, b in combinations(numbers, 2)
        if frozenset((a["label"], b["label"])) not in covered
    ]
    verdicts: dict[str, list[str]] = {"supported": [], "contradicted": [], "undecided": []}
    for c in claims:
        kind = c["verdict"] if c["verdict"] in ("supported", "contradicted") else "undecided"
        verdicts[kind].append(c["claim"])
    return {
        "groups": groups,
        "variants": numbers,
        "claims": claims,
        "other_pairs": others,
        "claims_verdict": verdicts,
        "best_variant": _best_variant(numbers, summaries, groups),
    }
