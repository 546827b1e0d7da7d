"""The study as one call: train the chosen variants, with one seed or several, then report.

``run_study`` trains each run into its own folder of ``OUT`` (skipping finished runs, resuming
unfinished ones) through an executor, one run after another in this process or spread over
the devices and machines of a Ray cluster (:mod:`executors`), and writes the report into
``OUT``. With one seed a variant's run is ``OUT/runs/NAME``; with several, each seed's is
``OUT/NAME/seed-N``. ``OUT/study.json`` records the study's settings, so that a study started
once can be continued with the same settings, and ``OUT/.lock`` keeps a second study out of
the folder while one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .checkpoint import RunLock
from .errors import SettingError, param
from .executors import Job, Sequential
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
from .train import TrainOptions

__all__ = [
    "StudyRun",
    "check_existing",
    "plan_runs",
    "read_study_settings",
    "run_folder",
    "run_study",
    "study_seeds",
    "study_settings",
]


@dataclass
class StudyRun:
    """One run of a study: its variant, folder and training options (its seed among them)."""

    model: str
    run_dir: Path
    options: TrainOptions

    @property
    def seed(self) -> int:
        return self.options.seed


def run_folder(out: Path, model: str, seed: int, several_seeds: bool) -> Path:
    """Where a study keeps a run: ``OUT/runs/NAME``, or ``OUT/NAME/seed-N`` with several seeds."""
    return Path(out) / model / f"seed-{seed}" if several_seeds else Path(out) / "runs" / model


def plan_runs(
    out: Path, models: list[str], seeds: list[int], options_for: Callable[[str, Path], TrainOptions]
) -> list[StudyRun]:
    """One run per (variant, seed), variant by variant; ``options_for(model, run_dir)`` gives
    a run's options, whose seed is then set."""
    several = len(seeds) > 1
    runs = []
    for model in models:
        for seed in seeds:
            folder = run_folder(out, model, seed, several)
            runs.append(StudyRun(model, folder, replace(options_for(model, folder), seed=seed)))
    return runs


def study_seeds(seeds: list[int] | None, seed: int | None, prev: dict) -> list[int]:
    """The seeds a study runs: ``seeds``, else ``seed`` alone, else those of the study's
    earlier invocation (``prev``), else seed 0. A study keeps its layout: one seed per variant
    or several."""
    if seeds and seed is not None:
        raise SettingError(f"give {param('seed')} or {param('seeds')}, not both")
    chosen = seeds or ([seed] if seed is not None else None)
    chosen = chosen or prev.get("seeds") or [prev.get("seed", 0)]
    if prev.get("models") and (len(chosen) > 1) != ("seeds" in prev):
        had = "several seeds per variant" if "seeds" in prev else "one seed per variant"
        raise SettingError(
            f"this study folder holds a study with {had}; choose another {param('out')} for "
            f"a study with {'several seeds' if len(chosen) > 1 else 'one seed'}"
        )
    return list(chosen)


def read_study_settings(out: Path) -> dict:
    """The settings an earlier invocation recorded in ``OUT/study.json`` ({} if none)."""
    f = Path(out) / STUDY_FILE
    if not f.exists():
        return {}
    settings = read_json_object(f, "study settings", error=SettingError)
    spec = {"models": "strs", "recipe": "dict", "seed": "int", "limit_train": "int?"}
    spec.update({"limit_test": "int?", "seeds": "ints?", "val_split": "int?"})
    check_fields(settings, spec, str(f))
    if "recipe" in settings:
        Recipe.from_dict(settings["recipe"], f"{f}: the field 'recipe'")
    seeds = settings.get("seeds")
    if seeds is not None and (len(seeds) < 2 or min(seeds) < 0):
        raise SettingError(f"{f}: the field 'seeds' should list two or more seeds (0, 1, ...)")
    return settings


def study_settings(runs: list[StudyRun]) -> dict:
    """What study.json records: the models, the seeds and the settings the runs share."""
    first = runs[0].options
    seeds = list(dict.fromkeys(r.seed for r in runs))
    settings = {
        "models": list(dict.fromkeys(r.model for r in runs)),
        "recipe": first.recipe.to_dict(),  # whole, so a continued study keeps every field
        "seed": first.seed,
        "limit_train": first.limit_train,
        "limit_test": first.limit_test,
    }
    if len(seeds) > 1:
        del settings["seed"]
        settings["seeds"] = seeds
    if first.val_split is not None:
        settings["val_split"] = first.val_split
    return settings


def check_existing(run: StudyRun) -> None:
    """Refuse, before anything trains, a run folder that holds a run with other settings."""
    has_run = has_checkpoint(run.run_dir) or (run.run_dir / RESULT_FILE).exists()
    cfg_file = run.run_dir / CONFIG_FILE
    if not has_run or not cfg_file.is_file():
        return  # nothing there yet: training starts a new run
    have = identity_of_config(read_json_object(cfg_file, "run settings", error=SettingError))
    want = run.options.run_identity()
    diffs = [
        f"{k.removeprefix('recipe.')}: run has {have.get(k)!r}, this study asks {want.get(k)!r}"
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
    out: Path,
    runs: list[StudyRun],
    say: Callable[[str], None] = print,
    executor=None,
    warn=None,
) -> dict:
    """Train ``runs`` with ``executor`` (default: one after another in this process; finished
    runs are skipped, unfinished ones resumed), then write the report into ``out``; returns
    the report's summary. Another study running in ``out`` is refused."""
    out = Path(out)
    for run in runs:
        check_existing(run)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"cannot create the study folder {out}: {e.strerror or e}") from None
    lock = RunLock(out).acquire()
    try:
        atomic_write_json(out / STUDY_FILE, study_settings(runs), what="the study's settings")
        several = len({r.seed for r in runs}) > 1
        jobs = []
        for i, run in enumerate(runs, start=1):
            tag = f"[{i}/{len(runs)}] {run.model}" + (f" seed {run.seed}" if several else "")
            if (run.run_dir / RESULT_FILE).is_file():
                say(f"{tag}: finished earlier, skipped ({run.run_dir})")
            else:
                jobs.append(Job(tag, replace(run.options, resume=True)))
        (executor or Sequential()).run(jobs, say)
        return build_report([run.run_dir for run in runs], out, warn=warn)
    finally:
        lock.release()
