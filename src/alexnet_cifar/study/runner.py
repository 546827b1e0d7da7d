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

from ..distributed import is_device_name
from ..engine.options import engine_setting_kinds
from ..errors import SettingError, param
from ..files import (
    CONFIG_FILE,
    RESULT_FILE,
    RUN_FILES,
    STUDY_FILE,
    atomic_write_json,
    check_fields,
    read_json_object,
    study_run_folder,
)
from ..models import PRESETS, AlexNetConfig, config_of
from ..recipe import Recipe
from ..report import build_report
from ..training.checkpoint import RunLock
from ..training.resume import (
    KEPT_FIELDS,
    differences,
    has_checkpoint,
    identity_of_config,
    kept_settings_of,
)
from ..training.trainer import TrainOptions
from ..variants import recorded_variant
from .executors import Job, Sequential

__all__ = [
    "STUDY_FIELDS",
    "StudyRun",
    "check_kept_runs",
    "check_study_folder",
    "check_existing",
    "plan_runs",
    "read_study_settings",
    "run_folder",
    "run_study",
    "study_seeds",
    "study_settings",
    "study_variants",
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


#: Where a study keeps a run (the layout's one owner is files.py, which the report reads too).
run_folder = study_run_folder


def plan_runs(
    out: Path,
    models: list[str | AlexNetConfig],
    seeds: list[int],
    options_for: Callable[[AlexNetConfig, Path], TrainOptions],
) -> list[StudyRun]:
    """One run per (variant, seed), variant by variant (presets' names or shapes);
    ``options_for(variant, run_dir)`` gives a run's options, whose seed is then set."""
    several = len(seeds) > 1
    runs = []
    for model in map(config_of, models):
        for seed in seeds:
            folder = run_folder(out, model.name, seed, several)
            options = replace(options_for(model, folder), seed=seed)
            runs.append(StudyRun(model.name, folder, options))
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


#: study.json: each field and its kind. ``study_settings`` writes these fields and no others,
#: ``read_study_settings`` checks them; one seed per variant records "seed", several "seeds".
STUDY_FIELDS = {
    "models": "strs",
    "variants": "dict",  # {name: shape} of the models that are not presets
    "recipe": "dict",
    "seed": "int",
    "seeds": "ints",
    "limit_train": "int?",
    "limit_test": "int?",
    "val_split": "int?",
    **KEPT_FIELDS,
    "engine_requested": "dict",  # the engine flags given: a continued study keeps them
}
#: Fields written only when they hold something.
_WRITTEN_WHEN_SET = ("variants", "seed", "seeds", "val_split")
#: Fields that must be a whole number at least this.
_AT_LEAST = {"seed": 0, "limit_train": 1, "limit_test": 1, "val_split": 1, "eval_batch_size": 1}


def read_study_settings(out: Path) -> dict:
    """The settings an earlier invocation recorded in ``OUT/study.json`` ({} if none), each
    field checked: a hand-edited file with a mistake is refused naming the file and field."""
    f = Path(out) / STUDY_FILE
    if not f.exists():
        return {}
    settings = read_json_object(f, "study settings", error=SettingError)
    unknown = [k for k in settings if k not in STUDY_FIELDS]
    if unknown:
        raise SettingError(f"{f}: the field {unknown[0]!r} is not one a study records")
    check_fields(settings, STUDY_FIELDS, str(f), required=("models", "recipe"))
    Recipe.from_dict(settings["recipe"], f"{f}: the field 'recipe'")
    check_fields(
        settings.get("engine_requested") or {},
        engine_setting_kinds(),
        f"{f}: the field 'engine_requested'",
        error=SettingError,
    )
    _check_list(f, "models", settings["models"], 1)
    study_variants(settings, f)
    if ("seed" in settings) == ("seeds" in settings):
        raise SettingError(f"{f}: the field 'seed' (one seed) or 'seeds' (several) is needed")
    if "seeds" in settings:
        _check_list(f, "seeds", settings["seeds"], 2)
        if min(settings["seeds"]) < 0:
            raise SettingError(f"{f}: the field 'seeds' should list seeds 0 or above")
    for name, lo in _AT_LEAST.items():
        if settings.get(name) is not None and settings[name] < lo:
            raise SettingError(f"{f}: the field {name!r} should be at least {lo}")
    device = settings.get("device_requested")
    if device is not None and not is_device_name(device):
        raise SettingError(f"{f}: the field 'device_requested' should be auto, cpu or cuda[:N]")
    return settings


def study_variants(settings: dict, f: Path | str = STUDY_FILE) -> list[AlexNetConfig]:
    """The variants a study recorded (``settings``: its study.json): the presets by name,
    the others by the shape recorded beside it, so that no variant file is needed again."""
    shapes = settings.get("variants") or {}
    variants = []
    for name in settings.get("models") or []:
        if name in PRESETS:
            variants.append(PRESETS[name])
        elif isinstance(shapes.get(name), dict):
            where = f"{f}: the field 'variants', {name!r}"
            variants.append(recorded_variant(name, shapes[name], where, "its name in 'models'"))
        else:
            raise SettingError(
                f"{f}: the field 'models': unknown model {name!r} (no preset, and the field "
                "'variants' holds no shape of that name)"
            )
    return variants


def _check_list(f: Path, name: str, values: list, least: int) -> None:
    if len(values) < least:
        raise SettingError(
            f"{f}: the field {name!r} should list {'one' if least == 1 else least} or more"
        )
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise SettingError(f"{f}: the field {name!r} lists {twice[0]!r} twice")


def study_settings(runs: list[StudyRun]) -> dict:
    """What study.json records: the models, the seeds and the settings the runs share."""
    first = runs[0].options
    seeds = list(dict.fromkeys(r.seed for r in runs))
    custom = {r.model: r.options.model_config for r in runs if r.options.model_config}
    values = {
        "models": list(dict.fromkeys(r.model for r in runs)),
        "variants": {name: shape.to_dict() for name, shape in custom.items()} or None,
        "recipe": first.recipe.to_dict(),  # whole, so a continued study keeps every field
        "seed": first.seed if len(seeds) == 1 else None,
        "seeds": seeds if len(seeds) > 1 else None,
        "limit_train": first.limit_train,
        "limit_test": first.limit_test,
        "val_split": first.val_split,
        **kept_settings_of(first),
        "engine_requested": first.engine.to_dict(),
    }
    return {
        k: values[k]
        for k in STUDY_FIELDS
        if not (k in _WRITTEN_WHEN_SET and values[k] is None)
    }


def check_kept_runs(
    out: Path, prev: dict, models: list[str | AlexNetConfig], seeds: list[int]
) -> None:
    """Refuse an invocation that would leave out a run the study folder holds (a narrower
    ``--models`` or ``--seeds``): its report would drop finished runs without a word. A wider
    one adds runs."""
    several = "seeds" in prev
    had = prev.get("seeds") or [prev.get("seed", 0)]
    names = [config_of(m).name for m in models]
    left_out = [
        (m, s)
        for m in prev.get("models") or []
        for s in had
        if (m not in names or (several and s not in seeds))
        and _holds_run(run_folder(out, m, s, several))
    ]
    if left_out:
        shown = ", ".join(f"{m} seed {s}" if several else m for m, s in left_out[:4])
        more = f" and {len(left_out) - 4} more" if len(left_out) > 4 else ""
        raise SettingError(
            f"{out} holds runs this invocation leaves out ({shown}{more}); a study keeps its "
            f"runs: give {param('models')} and {param('seeds')} that include them (or leave "
            f"them out to continue the study as it was), or choose another {param('out')}"
        )


def _holds_run(run_dir: Path) -> bool:
    return has_checkpoint(run_dir) or (run_dir / RESULT_FILE).exists()


def check_existing(run: StudyRun) -> None:
    """Refuse, before anything trains, a run folder that holds a run with other settings."""
    has_run = _holds_run(run.run_dir)
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


def check_study_folder(out: Path) -> None:
    """Refuse a folder that holds files but no study.json (a run folder above all): a study
    there would nest its runs among files that are not its own. A new or empty folder, or
    one that holds only folders (runs trained into its layout beforehand), is a study's."""
    out = Path(out)
    if not out.is_dir() or (out / STUDY_FILE).exists():
        return
    found = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.is_file())
    if not found:
        return
    of_run = [name for name in found if name in RUN_FILES]
    if of_run:
        what = f"is a run folder (it holds {', '.join(of_run)})"
    else:
        what = f"holds files ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
    raise SettingError(
        f"{out} {what} and no {STUDY_FILE}: it is not a study folder. Choose another "
        f"{param('out')} for the study: a new or empty folder, or one a study wrote"
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
    check_study_folder(out)
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
