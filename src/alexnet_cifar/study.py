"""The study as one command: train the chosen variants in turn into one folder, then report.

``alexnet-cifar study`` trains each variant into ``OUT/runs/NAME`` (skipping finished runs,
resuming unfinished ones) and writes the report into ``OUT``; ``alexnet-cifar report`` writes
the same report from run folders that already exist. ``OUT/study.json`` records the study's
settings, so that a study started once is continued by ``alexnet-cifar study --out OUT``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import CHECKPOINT, PREV_CHECKPOINT, atomic_write_json
from .models import PRESETS, UnknownModelError, get_config

__all__ = ["STUDY_FILE", "add_parsers", "cmd_report", "cmd_study", "parse_models"]

STUDY_FILE = "study.json"


def add_parsers(sub) -> None:
    """The ``study`` and ``report`` subcommands."""
    from .cli import add_train_flags

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
        metavar="all|NAME,NAME,...",
        help="the variants, comma-separated (default: all five)",
    )
    add_train_flags(s)
    s.add_argument(
        "--out",
        type=Path,
        help="study folder (default study): runs in OUT/runs/NAME, the report in OUT",
    )
    s.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    s.set_defaults(func=cmd_study)

    r = sub.add_parser(
        "report",
        help="the comparison report of existing run folders",
        description="Write the comparison report (report.md, report.html, summary.json, "
        "figures) of existing run folders: any mix of variants, epochs and devices; unfinished "
        "runs show their curves so far. A study folder stands for its runs.",
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run or study folders")
    r.add_argument("--out", type=Path, default=Path("report"), help="report folder (report)")
    r.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    r.set_defaults(func=cmd_report)


def parse_models(text: str) -> list[str]:
    """``all`` or comma-separated variant names, in the order given, without repeats."""
    from .cli import UserError

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--models needs 'all' or variant names separated by commas")
    if "all" in names:
        if names != ["all"]:
            raise UserError("--models: give 'all' alone, or a list of variants without it")
        return list(PRESETS)
    for n in names:
        try:
            get_config(n)
        except UnknownModelError as e:
            raise UserError(f"--models: {e}") from None
    return list(dict.fromkeys(names))


def _read_study(out: Path) -> dict:
    from .cli import UserError

    f = out / STUDY_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"{f} is damaged ({e}); remove it and give all flags again, or choose another --out"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{f} is damaged; remove it and give all flags again")
    return data


def _check_existing(run_dir: Path, opts) -> None:
    """Refuse, before anything trains, a run folder that holds a run with other settings."""
    from .cli import UserError

    has_run = any((run_dir / n).exists() for n in (CHECKPOINT, PREV_CHECKPOINT, "result.json"))
    cfg_file = run_dir / "config.json"
    if not has_run or not cfg_file.is_file():
        return  # nothing there yet: training starts a new run
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_file} is damaged ({e}); move {run_dir} away to retrain it") from None
    mine = opts.run_identity()
    if isinstance(mine.get("recipe"), dict):  # the recipe as one entry: flatten it
        mine = {k: v for k, v in mine.items() if k != "recipe"} | {
            f"recipe.{f}": v for f, v in mine["recipe"].items()
        }
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    diffs = []
    for k, want in mine.items():
        have = recipe.get(k[len("recipe.") :]) if k.startswith("recipe.") else cfg.get(k)
        if have != want:
            diffs.append(f"{k.removeprefix('recipe.')}: run has {have!r}, this study asks {want!r}")
    if diffs:
        raise UserError(
            f"{run_dir} holds a run with other settings than this study:\n  "
            + "\n  ".join(diffs)
            + "\nLeave the flags out to continue the study as it was started, or choose "
            "another --out for a new study."
        )


def cmd_study(args) -> int:
    from .cli import UserError, train_options
    from .data import load_cifar10
    from .report import ReportError, build_report
    from .train import TrainingInterrupted, train

    out = args.out if args.out is not None else Path("study")
    prev = _read_study(out)
    if args.models is not None:
        models = parse_models(args.models)
    elif prev.get("models"):
        models = parse_models(",".join(prev["models"]))
    else:
        models = list(PRESETS)
    plans = []
    for name in models:
        run_dir = out / "runs" / name
        plans.append((name, run_dir, train_options(args, name, run_dir, prev, resume=True)))
    for _name, run_dir, opts in plans:
        _check_existing(run_dir, opts)

    first = plans[0][2]
    settings = {
        "models": models,
        "recipe": first.recipe.to_dict(),  # whole, so a continued study keeps every field
        "seed": first.seed,
        "limit_train": first.limit_train,
        "limit_test": first.limit_test,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / STUDY_FILE, settings)
    except OSError as e:
        raise UserError(f"cannot write the study folder {out}: {e.strerror or e}") from None

    quiet = args.quiet or args.json

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    data = None
    for i, (name, run_dir, opts) in enumerate(plans, start=1):
        tag = f"[{i}/{len(plans)}] {name}"
        if (run_dir / "result.json").is_file():
            say(f"{tag}: finished earlier, skipped ({run_dir})")
            continue
        resuming = any((run_dir / n).exists() for n in (CHECKPOINT, PREV_CHECKPOINT))
        say(f"{tag}: {'resuming' if resuming else 'training'} in {run_dir}")
        if data is None:
            data = load_cifar10(opts.data_dir, verify=opts.verify, progress=not quiet)
        try:
            result = train(opts, data=data)
        except TrainingInterrupted as e:
            first_line = str(e).splitlines()[0]
            raise TrainingInterrupted(
                f"{first_line}\nResume the study with: alexnet-cifar study --out {out}",
                e.signum,
            ) from None
        say(
            f"{tag}: test accuracy {result['test_accuracy']:.4f}, best "
            f"{result['best_test_accuracy']:.4f} at epoch {result['best_epoch']}, "
            f"{result['train_seconds']:.1f} s"
        )

    try:
        summary = build_report([run_dir for _n, run_dir, _o in plans], out)
    except ReportError as e:
        raise UserError(str(e)) from None
    _print_summary(summary, out, args.json)
    return 0


def cmd_report(args) -> int:
    from .cli import UserError
    from .report import ReportError, build_report

    try:
        summary = build_report(args.runs, args.out)
    except ReportError as e:
        raise UserError(str(e)) from None
    _print_summary(summary, args.out, args.json)
    return 0


def _print_summary(summary: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
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
            f"{r['label']:<{width}}{epochs:>8}{100 * r['best_test_accuracy']:>10.2f}%"
            f"{r['best_epoch']:>5}{100 * r['final_test_accuracy']:>11.2f}%"
            f"{100 * r['final_train_accuracy']:>12.2f}%"
            f"{100 * r['generalisation_gap']:>+8.2f}%{r['seconds_per_epoch']:>9.1f}"
        )
    best = summary["best"]
    print(
        f"\nbest: {best['label']} ({100 * best['best_test_accuracy']:.2f}% at epoch "
        f"{best['best_epoch']}); the post's best: alexnet_slim_regular (~92%)"
    )
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
