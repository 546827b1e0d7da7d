"""``study`` and ``report``: the five-way comparison, trained and reported."""

from __future__ import annotations

import sys
from pathlib import Path

from ..models import PRESETS, parse_model_list
from ..report import build_report
from ..study import StudyRun, read_study_settings, run_study
from .flags import add_train_flags, folder, model_list, print_json, train_options

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "study",
        help="train the variants in turn and write the comparison report",
        description="Train each chosen variant with the seed recipe into OUT/runs/NAME, one "
        "after another (finished runs are skipped, unfinished ones resumed), then write the "
        "comparison report into OUT: report.md, report.html, summary.json and the figures. "
        "Flags left out are taken from the study's earlier invocation (OUT/study.json), so "
        "'alexnet-cifar study --out OUT' continues an interrupted study.",
    )
    s.add_argument(
        "--models",
        type=model_list,
        metavar="all|NAME,NAME,...",
        help="the variants, comma-separated (default: all five)",
    )
    add_train_flags(s)
    s.add_argument(
        "--out",
        type=folder,
        help="study folder (default study): runs in OUT/runs/NAME, the report in OUT",
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


def _resume_study(args, e) -> list[str]:
    return ["study", "--out", str(_study_dir(args))]


def cmd_study(args) -> int:
    out = _study_dir(args)
    prev = read_study_settings(out)
    models = args.models or parse_model_list(",".join(prev.get("models") or PRESETS))
    runs = [
        StudyRun(
            name, out / "runs" / name, train_options(args, name, out / "runs" / name, prev, True)
        )
        for name in models
    ]
    quiet = args.quiet or args.json
    summary = run_study(out, runs, say=(lambda msg: None) if quiet else _say, warn=_warn)
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


def _share(x, sign: str = "") -> str:
    """A share as a percentage, "–" where summary.json holds none (a diverged run's NaN)."""
    return "–" if x is None else f"{100 * x:{sign}.2f}%"


def _number(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _print_summary(summary: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    runs = summary["runs"]
    width = max(22, max(len(r["label"]) for r in runs) + 2)
    print(
        f"\n{'variant':<{width}}{'epochs':>8}{'best test':>11}{'at':>5}{'final test':>12}"
        f"{'final train':>13}{'gap':>9}{'s/epoch':>9}"
    )
    for r in runs:
        epochs = f"{r['epochs']}" + ("" if r["status"] == "finished" else f"/{r['epochs_planned']}")
        print(
            f"{r['label']:<{width}}{epochs:>8}{_share(r['best_test_accuracy']):>11}"
            f"{r['best_epoch']:>5}{_share(r['final_test_accuracy']):>12}"
            f"{_share(r['final_train_accuracy']):>13}"
            f"{_share(r['generalisation_gap'], '+'):>9}{_number(r['seconds_per_epoch']):>9}"
        )
    best = summary["best"]
    print(
        f"\nbest: {best['label']} ({100 * best['best_test_accuracy']:.2f}% at epoch "
        f"{best['best_epoch']}); the post's best: alexnet_slim_regular (~92%)"
    )
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
