"""The study as one call: train the chosen variants in turn into one folder, then report.

``run_study`` trains each variant into ``OUT/runs/NAME`` (skipping finished runs, resuming
unfinished ones) and writes the report into ``OUT``. ``OUT/study.json`` records the study's
settings, so that a study started once can be continued with the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import load_cifar10
from .errors import SettingError, param
from .files import (
    CONFIG_FILE,
    RESULT_FILE,
    STUDY_FILE,
    atomic_write_json,
    check_fields,
    read_json_object,
)
from .recipe import Recipe
from .report import build_report
from .resume import differences, has_checkpoint, identity_of_config
from .train import TrainOptions, train

__all__ = ["StudyRun", "check_existing", "read_study_settings", "run_study", "study_settings"]


@dataclass
class StudyRun:
    """One run of a study: its variant, folder and training options."""

    model: str
    run_dir: Path
    options: TrainOptions


def read_study_settings(out: Path) -> dict:
    """The settings an earlier invocation recorded in ``OUT/study.json`` ({} if none)."""
    f = Path(out) / STUDY_FILE
    if not f.exists():
        return {}
    settings = read_json_object(f, "study settings", error=SettingError)
    spec = {"models": "strs", "recipe": "dict", "seed": "int", "limit_train": "int?"}
    check_fields(settings, {**spec, "limit_test": "int?"}, str(f))
    if "recipe" in settings:
        Recipe.from_dict(settings["recipe"], f"{f}: the field 'recipe'")
    return settings


def study_settings(runs: list[StudyRun]) -> dict:
    """What study.json records: the models and the settings they share."""
    first = runs[0].options
    return {
        "models": [r.model for r in runs],
        "recipe": first.recipe.to_dict(),  # whole, so a continued study keeps every field
        "seed": first.seed,
        "limit_train": first.limit_train,
        "limit_test": first.limit_test,
    }


def check_existing(run: StudyRun) -> None:
    """Refuse, before anything trains, a run folder that holds a run with other settings."""
    has_run = has_checkpoint(run.run_dir) or (run.run_dir / RESULT_FILE).exists()
    cfg_file = run.run_dir / CONFIG_FILE
    if not has_run or not cfg_file.is_file():
        return  # nothing there yet: training starts a new run
    have = identity_of_config(read_json_object(cfg_file, "run settings", error=SettingError))
    want = run.options.run_identity()
    diffs = [
        f"{k.removeprefix('recipe.')}: run has {have.get(k)!r}, this study asks {want[k]!r}"
        for k in differences(have, want)
    ]
    if diffs:
        raise SettingError(
            f"{run.run_dir} holds a run with other settings than this study:\n  "
            + "\n  ".join(diffs)
            + "\nLeave the flags out to continue the study as it was started, or choose "
            f"another {param('out')} for a new study."
        )


def run_study(
    out: Path, runs: list[StudyRun], say: Callable[[str], None] = print, warn=None
) -> dict:
    """Train ``runs`` one after another (finished ones are skipped, unfinished ones resumed),
    then write the report into ``out``; returns the report's summary."""
    out = Path(out)
    for run in runs:
        check_existing(run)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"cannot create the study folder {out}: {e.strerror or e}") from None
    atomic_write_json(out / STUDY_FILE, study_settings(runs), what="the study's settings")
    data = None
    for i, run in enumerate(runs, start=1):
        tag = f"[{i}/{len(runs)}] {run.model}"
        if (run.run_dir / RESULT_FILE).is_file():
            say(f"{tag}: finished earlier, skipped ({run.run_dir})")
            continue
        say(f"{tag}: {'resuming' if has_checkpoint(run.run_dir) else 'training'} in {run.run_dir}")
        if data is None:
            opts = run.options
            data = load_cifar10(opts.data_dir, verify=opts.verify, progress=not opts.quiet)
        result = train(run.options, data=data)
        say(
            f"{tag}: test accuracy {result['test_accuracy']:.4f}, best "
            f"{result['best_test_accuracy']:.4f} at epoch {result['best_epoch']}, "
            f"{result['train_seconds']:.1f} s"
        )
    return build_report([run.run_dir for run in runs], out, warn=warn)
