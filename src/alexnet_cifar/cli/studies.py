"""``study`` and ``report``: the five-way comparison, trained and reported."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SettingError, param
from ..models import PRESETS
from ..report import POST_BEST, PUBLISHED_ACCURACY, build_report
from ..study import executors
from ..study.executors import EXECUTORS, RAY_PORT, RayExecutor
from ..study.pool import LocalPool
from ..study.runner import (
    check_kept_runs,
    plan_runs,
    read_study_settings,
    run_study,
    study_seeds,
    study_variants,
)
from .flags import (
    add_train_flags,
    flag_name,
    folder,
    int_at_least,
    model_list,
    print_json,
    train_options,
)

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "study",
        help="train the variants in turn and write the comparison report",
        description="Train each chosen variant with the recipe --recipe names (default: the "
        "seed's) into OUT/runs/NAME (with several --seeds: OUT/NAME/seed-N), one after another, "
        "--jobs N at once, or on Ray (finished runs are skipped, unfinished ones resumed), then "
        "write the "
        "comparison report into OUT: report.md, report.html, summary.json and the figures. "
        "Flags left out are taken from the study's earlier invocation (OUT/study.json), so "
        "'alexnet-cifar study --out OUT' continues an interrupted study.",
    )
    s.add_argument(
        "--models",
        type=model_list,
        metavar="all|NAME,NAME,...",
        help="the variants, comma-separated: presets' names and JSON files of shapes (see "
        "'models --config'); all: the five presets, also with files (all,mine.json); default: "
        "the study's own, else all five",
    )
    s.add_argument(
        "--seeds",
        type=seed_list,
        metavar="N|S,S,...",
        help="several runs per variant: N for seeds 0..N-1, or the seeds comma-separated; the "
        "report then gives mean, spread and confidence intervals, and tests the post's claims",
    )
    add_train_flags(s)
    s.add_argument(
        "--out",
        type=folder,
        help="study folder (default study): runs in OUT/runs/NAME (OUT/NAME/seed-N with "
        "several seeds), the report in OUT",
    )
    r_ = s.add_argument_group("executor (default: one run after another in this process)")
    r_.add_argument(
        "--jobs",
        type=jobs_count,
        metavar="N|auto",
        help="train up to N runs at once on this machine, each in a process of its own with "
        "cores // N torch threads (at least one; never more processes than runs left to "
        "train); default 1: one run after another in this process, on every core. Runs side "
        "by side finish sooner only where one run gains little from more threads "
        "(docs/performance.md: on 2 cores it does not pay). auto: at least 4 threads a run, "
        "so one process below 8 cores (on CUDA: 1). Ctrl-C stops every run with its "
        "checkpoint; the same command continues them all",
    )
    r_.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="ray: each run a Ray task, spread over the GPUs (or CPUs) of this machine or of a "
        "cluster; needs pip install 'alexnet-cifar[ray]'",
    )
    r_.add_argument(
        "--address",
        help=f"the Ray cluster (HOST:{RAY_PORT} of 'ray start --head', or auto); default: "
        "RAY_ADDRESS, else a cluster started here, else a new Ray on this machine",
    )
    r_.add_argument(
        "--gpus-per-run",
        type=gpu_share,
        metavar="F",
        help="GPUs each run asks for (default 1; 0.5 or 0.25 let small variants share a card); "
        "on a cluster without GPUs, CPUs (and torch threads) per run",
    )
    s.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    s.set_defaults(func=cmd_study, resume_command=_resume_study)

    r = sub.add_parser(
        "report",
        help="the comparison report of existing run folders",
        description="Write the comparison report (report.md, report.html, summary.json, "
        "figures) of existing run folders: any mix of variants, epochs and devices; unfinished "
        "runs show their curves so far. A study folder stands for its runs.",
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run or study folders")
    r.add_argument("--out", type=folder, default=Path("report"), help="report folder (report)")
    r.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    r.set_defaults(func=cmd_report)


def _study_dir(args) -> Path:
    return args.out if args.out is not None else Path("study")


def seed_list(text: str) -> list[int]:
    """``3``: seeds 0, 1, 2; ``0,4,7``: those seeds."""
    parts = [p.strip() for p in text.split(",")]
    if "," in text and not all(parts):
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: an empty seed; give N, or seeds separated by commas (0,1,2)"
        )
    if len(parts) == 1:
        n = int_at_least(1, "--seeds")(parts[0])
        if n > 1000:
            raise argparse.ArgumentTypeError(f"--seeds {n}: at most 1000 runs per variant")
        return list(range(n))
    seeds = [int_at_least(0, "--seeds")(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text}: a seed is given twice")
    return seeds


def gpu_share(text: str) -> float:
    try:
        return executors.gpu_share(text)
    except SettingError as e:
        raise argparse.ArgumentTypeError(e.render(flag_name)) from None


def jobs_count(text: str):
    """``auto`` or a whole number of runs at once, at least 1."""
    if text.strip().lower() == "auto":
        return "auto"
    return int_at_least(1, "--jobs")(text)


def _resume_study(args, e) -> list[str]:
    return ["study", "--out", str(_study_dir(args)), *_executor_flags(args)]


def _executor_flags(args) -> list[str]:
    if args.executor != "ray":
        return [] if args.jobs in (None, 1) else ["--jobs", str(args.jobs)]
    flags = ["--executor", "ray"]
    if args.address:
        flags += ["--address", args.address]
    if args.gpus_per_run is not None:
        flags += ["--gpus-per-run", f"{args.gpus_per_run:g}"]
    return flags


def _executor(args):
    if args.executor == "ray" and args.jobs is not None:
        raise SettingError(
            f"{param('jobs')} is for the runs on this machine; on Ray, "
            f"{param('gpus_per_run')} sets what each run asks for"
        )
    if args.executor != "ray":
        for name in ("address", "gpus_per_run"):
            if getattr(args, name) is not None:
                raise SettingError(f"{param(name)} is for {param('executor', 'ray')}")
        return None if args.jobs in (None, 1) else LocalPool(args.jobs)
    gpus = 1.0 if args.gpus_per_run is None else args.gpus_per_run
    return RayExecutor(address=args.address, gpus_per_run=gpus)


def cmd_study(args) -> int:
    out = _study_dir(args)
    prev = read_study_settings(out)
    models = args.models or study_variants(prev) or list(PRESETS.values())
    seeds = study_seeds(args.seeds, args.seed, prev)
    check_kept_runs(out, prev, models, seeds)
    runs = plan_runs(
        out,
        models,
        seeds,
        lambda variant, run_dir: train_options(
            args, variant, run_dir, prev, True, where=f"the study in {out}"
        ),
    )
    quiet = args.quiet or args.json
    summary = run_study(
        out, runs, say=(lambda msg: None) if quiet else _say, executor=_executor(args), warn=_warn
    )
    _print_summary(summary, out, args.json)
    return 0


def cmd_report(args) -> int:
    summary = build_report(args.runs, args.out, warn=_warn)
    _print_summary(summary, args.out, args.json)
    return 0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _number(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _print_summary(summary: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    runs = summary["runs"]
    width = max(22, max(len(r["label"]) for r in runs) + 2)
    # The test accuracy of the chosen epoch: chosen by validation where a run has a split.
    chosen = {r.get("epoch_chosen_by", "test") for r in runs}
    if len(chosen) > 1:  # runs with and without a split
        column = "test@*"
    else:
        column = {"test": "best test", "validation": "test@val"}[chosen.pop()]
    print(
        f"\n{'variant':<{width}}{'epochs':>8}{column:>11}{'at':>5}{'final test':>12}"
        f"{'final train':>13}{'gap':>9}{'s/epoch':>9}"
    )
    for r in runs:
        epochs = f"{r['epochs']}" + ("" if r["status"] == "finished" else f"/{r['epochs_planned']}")
        print(
            f"{r['label']:<{width}}{epochs:>8}{_pct(r['best_test_accuracy']):>11}"
            f"{r['best_epoch']:>5}{_pct(r['final_test_accuracy']):>12}"
            f"{_pct(r['final_train_accuracy']):>13}"
            f"{_pct(r['generalisation_gap'], '+'):>9}{_number(r['seconds_per_epoch']):>9}"
        )
    if column != "best test":
        print(
            "test@val: the test accuracy at the epoch of best validation accuracy"
            + ("; *: a run without a split chose by the test set" if column == "test@*" else "")
        )
    _print_best(summary)
    _print_seeds(summary)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")


def _pct(x, sign: str = "") -> str:
    """A share as a percentage, "–" where summary.json holds none (a diverged run's NaN)."""
    return "–" if x is None else f"{100 * x:{sign}.2f}%"


def _print_best(summary: dict) -> None:
    """The verdict: with several seeds the best variant by its mean, else the best run."""
    best = summary["best"]
    if best["epoch_chosen_by"] == "validation":
        run = (
            f"best validation accuracy {_pct(best['best_val_accuracy'])} at epoch "
            f"{best['best_epoch']}; test accuracy at that epoch "
            f"{_pct(best['best_test_accuracy'])}"
        )
    else:
        run = (
            f"best test accuracy {_pct(best['best_test_accuracy'])} at epoch "
            f"{best['best_epoch']} (chosen by the test set, optimistic)"
        )
    run += f"; final test accuracy {_pct(best['final_test_accuracy'])}"
    v = summary.get("best_variant")
    if v is None:
        print(f"\nbest: {best['label']}: {run}")
    else:
        print(f"\nbest variant by its mean {v['measure_name']}: {v['label']}, {_variant_text(v)}")
        print(f"its best run: {best['label']}: {run}")
    print(f"the post's best: {POST_BEST} ({PUBLISHED_ACCURACY[POST_BEST][1]})")


def _variant_text(v: dict) -> str:
    """A variant's mean with its interval (and what limits it), and whether its lead holds."""
    if v["ci_low"] is None:
        text = f"mean {_pct(v['mean'])} (n={v['n']}, no interval"
    else:
        text = f"mean {_pct(v['mean'])} (n={v['n']}, 95% CI {_pct(v['ci_low'])} to "
        text += _pct(v["ci_high"])
        text += "; clipped to 0-100%" if v["ci_clipped"] else ""
        text += "" if v["ci_informative"] else f"; uninformative with {v['n']} runs"
    text += ")"
    lead = v["lead"]
    if lead is None:
        return text
    p = "–" if lead["p_value"] is None else f"{lead['p_value']:.3f}"
    diff = "–" if lead["difference"] is None else f"{100 * lead['difference']:+.2f} pts"
    verdict = {True: "significant", False: "not significant", None: "cannot be tested"}
    return f"{text}; lead over {v['runner_up']} {diff}, p = {p}: {verdict[v['significant']]}"


def _print_seeds(summary: dict) -> None:
    """With several seeds: each variant's headline accuracy, and the post's claims."""
    if "variants" not in summary:
        return
    print(f"\nacross seeds ({summary['best_variant']['measure_name']}: mean +- std, 95% CI):")
    for v in summary["variants"]:
        d = v["best_test_accuracy"]
        std = "–" if d["std"] is None else f"{100 * d['std']:.2f}"
        ci = "–" if d["ci_low"] is None else f"{_pct(d['ci_low'])} to {_pct(d['ci_high'])}"
        ci += " (clipped to 0-100%)" if d.get("ci_clipped") else ""
        print(f"  {v['label']}: {_pct(d['mean'])} +- {std} (n={d['n']}), CI {ci}")
    for c in summary["claims"] + summary["other_pairs"]:
        p = "–" if c["p_value"] is None else f"{c['p_value']:.3f}"
        diff = "–" if c["difference"] is None else f"{100 * c['difference']:+.2f} pts"
        print(f"  {c['a']} - {c['b']}: {diff}, p = {p}: {c['verdict']}")
