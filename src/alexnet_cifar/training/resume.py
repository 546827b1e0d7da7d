"""Whether a run folder can be continued as asked: the run's identity, compared field by field,
and the settings beside it that a resume keeps (one table, :data:`KEPT`).

A run's identity is what decides what it computes: the model, the class count, the seed, the
subsets, every field of the recipe, and the precision and memory layout its engine computes
in. A resume must ask for the same identity; the one change it accepts, with ``force``, is more
epochs (the learning-rate drops stay where they were, so the epochs already trained stay what
they were). A study compares its runs the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..distributed import resolve_device
from ..engine.options import engine_setting_kinds
from ..errors import (
    AlexnetCifarError,
    CheckpointError,
    DataNotFoundError,
    RunSetupError,
    SettingError,
    param,
)
from ..files import (
    CHECKPOINT,
    CONFIG_FILE,
    MODEL_FILE,
    PREV_CHECKPOINT,
    RESULT_FILE,
    atomic_write_json,
    check_fields,
    read_json_object,
)
from ..recipe import Recipe
from ..variants import recorded_identity, shape_identity
from .checkpoint import load_checkpoint

__all__ = [
    "IDENTITY_FIELDS",
    "KEPT",
    "KEPT_FIELDS",
    "NUMERICS",
    "SAFE_CHANGES",
    "RUN_SETTINGS",
    "Kept",
    "check_recorded_data_folder",
    "check_resumable",
    "data_folder",
    "kept_settings",
    "kept_settings_of",
    "record_change",
    "record_kept_changes",
    "differences",
    "has_checkpoint",
    "identity_of_config",
    "load_resume_state",
    "restart_notice",
    "run_identity",
    "run_settings",
    "settings_on_resume",
    "stopped_before_first_checkpoint",
]

#: The run's identity outside its recipe and its numerics (what config.json and the checkpoint
#: record of it), and the kind of each.
IDENTITY_KINDS = {
    "model": "str",
    "num_classes": "int",
    "seed": "int",
    "limit_train": "int?",
    "limit_test": "int?",
}
IDENTITY_FIELDS = tuple(IDENTITY_KINDS)
#: The engine's settings that change the numbers a run computes (``EngineOptions.numerics``,
#: resolved for the device): part of the identity. Runs recorded before they were compare
#: without them where their config.json does not say.
NUMERICS = ("precision", "channels_last")


def data_folder(data_dir) -> str | None:
    """The data folder as a run records it: the one given (or ``$CIFAR10_DIR``), absolute, so
    that a resume from anywhere finds it; None for the per-user cache."""
    chosen = data_dir if data_dir is not None else os.environ.get("CIFAR10_DIR") or None
    return None if chosen is None else os.path.abspath(os.path.expanduser(str(chosen)))


@dataclass(frozen=True)
class Kept:
    """A setting of a run beside its identity that a resume keeps: a flag left out takes the
    run's value. ``change`` says what a resume does with another value:

    - ``refused``: it would change what is computed;
    - ``same device``: refused unless both name the same device here;
    - ``md5-checked``: accepted when the data is md5-checked (the same files), and recorded;
    - ``recorded``: accepted (nothing computed changes), and config.json records it;
    - ``this time``: accepted for this invocation; config.json keeps the run's.
    """

    name: str  # the option (a field of TrainOptions) and, as --name, its flag
    field: str  # the field of config.json and study.json
    kind: str  # its kind there (files.check_fields)
    change: str
    record: Callable = lambda value: value  # the option's value as the files record it


#: The settings a resume keeps: the one table config.json, study.json, the checkpoint, the
#: command line and the resume read.
KEPT = (
    Kept("device", "device_requested", "str?", "same device"),
    Kept("data_dir", "data_dir", "str?", "md5-checked", data_folder),
    Kept("verify", "verify", "bool", "this time"),  # --no-verify only skips a check
    Kept("eval_batch_size", "eval_batch_size", "int?", "refused"),
    Kept("checkpoint_every", "checkpoint_every", "number", "recorded"),
)
#: The fields that record the kept settings (config.json, study.json), and their kinds.
KEPT_FIELDS = {k.field: k.kind for k in KEPT}
#: The fields of config.json that a resumed run takes its settings from, and their kinds.
RUN_SETTINGS = {
    **IDENTITY_KINDS,
    "recipe": "dict",
    "engine_requested": "dict",
    "device": "str?",
    **KEPT_FIELDS,
}
ENGINE_SETTINGS = engine_setting_kinds()  # the fields of EngineOptions and their kinds

#: Changes a resume accepts with ``force``: they extend the run without changing its past.
SAFE_CHANGES = {"recipe.epochs"}
#: Identity fields recorded only when set (a run without them is what it was before they
#: existed); a difference is still one when only one side has them.
OPTIONAL_FIELDS = ("val_split",)


def run_identity(options, numerics: dict) -> dict:
    """The fields that define what a run computes, flat (``recipe.lr``, ...), read by name from
    ``options`` (a TrainOptions), with the engine's ``numerics`` on the run's device; a variant
    that is not a preset adds its shape (``model_config.widths``, ...)."""
    ident = {name: getattr(options, name) for name in IDENTITY_FIELDS}
    ident.update({k: options.val_split for k in OPTIONAL_FIELDS if options.val_split is not None})
    if options.model_config is not None:
        ident.update(shape_identity(options.model_config))
    ident.update({f"recipe.{k}": v for k, v in options.recipe.to_dict().items()})
    ident.update({k: numerics[k] for k in NUMERICS})
    return ident


def identity_of_config(config: dict) -> dict:
    """The identity recorded in a run's config.json (the same flat form)."""
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    ident = {k: config.get(k) for k in IDENTITY_FIELDS}
    ident.update({k: config[k] for k in OPTIONAL_FIELDS if config.get(k) is not None})
    ident.update(recorded_identity(config))
    ident.update({f"recipe.{k}": v for k, v in recipe.items()})
    ident.update(_recorded_numerics(config))
    return ident


def _recorded_numerics(config: dict) -> dict:
    """The numerics a run's config.json records of the engine it used ({} if none)."""
    engine = config.get("engine_used") or config.get("engine")
    if not isinstance(engine, dict):
        return {}
    return {k: engine[k] for k in NUMERICS if engine.get(k) is not None}


def differences(have: dict, want: dict) -> list[str]:
    """The identity fields where ``have`` (a run) and ``want`` (what is asked) differ. A run
    recorded before its numerics were part of the identity is compared without them."""
    extra = [k for k in OPTIONAL_FIELDS if k in have and k not in want]
    keys = [k for k in [*want, *extra] if k in have or k not in NUMERICS]
    return [k for k in keys if have.get(k) != want.get(k)]


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / n).exists() for n in (CHECKPOINT, PREV_CHECKPOINT))


def stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """Whether a folder's own records show a run stopped before its first checkpoint: the
    config.json a run writes as it starts, and no checkpoint, result or final model."""
    run_dir = Path(run_dir)
    finished = (RESULT_FILE, MODEL_FILE)
    return (
        (run_dir / CONFIG_FILE).is_file()
        and not has_checkpoint(run_dir)
        and not any((run_dir / name).exists() for name in finished)
    )


def restart_notice(run_dir: Path) -> str:
    return (
        f"restarting {run_dir} from epoch 1: it holds the {CONFIG_FILE} of a run stopped before "
        f"its first checkpoint, and no {CHECKPOINT} to continue from"
    )


def check_resumable(run_dir: Path) -> None:
    """Refuse a resume of a folder with nothing to continue: a mistyped or empty folder would
    otherwise start a whole new run. A run stopped before its first checkpoint restarts."""
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir) or stopped_before_first_checkpoint(run_dir):
        return
    start_new = f"leave {param('resume', True)} out to start a new run there"
    if not run_dir.is_dir():
        why = f"the folder does not exist. Check its name, or {start_new}"
    elif any((run_dir / name).exists() for name in (RESULT_FILE, MODEL_FILE)):
        why = (
            f"it holds a model but no {CHECKPOINT} to continue training from; choose another "
            f"{param('out')} for a new run"
        )
    else:
        why = f"it holds no {CHECKPOINT} and no {CONFIG_FILE} of a run. Check its name, or "
        why += start_new
    raise RunSetupError(f"cannot resume {run_dir}: {why}.")


def load_resume_state(
    run_dir: Path, recipe: Recipe, identity, resume: bool, force: bool, say, warn
) -> tuple[dict | None, Recipe]:
    """(the checkpoint to continue from or None for a new run, the recipe to train with).

    ``identity(recipe)`` gives the identity this run asks for with a recipe. Refuses a folder
    that holds a run when ``resume`` is off, and a checkpoint whose identity differs (beyond
    more epochs with ``force``), naming every difference.
    """
    run_dir = Path(run_dir)
    if not resume:
        if has_checkpoint(run_dir):
            raise RunSetupError(
                f"{run_dir} already holds a run. Add {param('resume', True)} to continue it, "
                f"or choose another {param('out')} for a new run."
            )
        return None, recipe
    if not has_checkpoint(run_dir):  # a new run (a study's), or one to restart
        if stopped_before_first_checkpoint(run_dir):
            warn(restart_notice(run_dir))  # on the terminal even when quiet
        return None, recipe
    state, path = load_checkpoint(run_dir, warn=warn)
    theirs = dict(state.get("run_identity") or {})
    if not all(k in theirs for k in NUMERICS):  # a checkpoint from before: its config says
        theirs.update(_recorded_numerics(_config_or_empty(run_dir)))
    if force and theirs.get("recipe.epochs") != recipe.epochs:
        recipe = _extended(run_dir, path, state, theirs, recipe, say)
    asked = identity(recipe)
    refused = [k for k in differences(theirs, asked) if not (force and k in SAFE_CHANGES)]
    if refused:
        lines = [
            f"{k}: checkpoint has {theirs.get(k)!r}, this run asks {asked.get(k)!r}"
            for k in refused
        ]
        advice = (
            f"{param('force', True)} accepts only a change of {param('epochs')}"
            if force
            else f"add {param('force', True)} to change only the number of epochs"
        )
        raise CheckpointError(
            f"cannot resume {path} with different settings:\n  "
            + "\n  ".join(lines)
            + "\nResume with the original settings (leave the flags out to reuse them; "
            f"{advice}), or start a new run in another {param('out')}."
        )
    if state["epoch"] >= recipe.epochs:
        say(f"{run_dir} has finished all {state['epoch']} epochs: nothing to train")
    else:
        say(f"resuming {path} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state, recipe


def _extended(run_dir: Path, path: Path, state: dict, theirs: dict, recipe: Recipe, say) -> Recipe:
    """The recipe for more epochs than the run had: its learning-rate drops stay put."""
    kept = tuple(theirs.get("recipe.lr_milestones") or ())
    extended = recipe.with_(lr_milestones=kept)
    if theirs.get("recipe.epochs", 0) > recipe.epochs or state["epoch"] > recipe.epochs:
        raise CheckpointError(
            f"{path} has trained {state['epoch']} epochs; {param('epochs')} "
            f"{recipe.epochs} cannot shorten a run"
        )
    say(
        f"continuing to {recipe.epochs} epochs; the learning-rate drops stay at epochs "
        f"{', '.join(map(str, kept)) or 'none'}"
    )
    _record_extension(run_dir, theirs.get("recipe.epochs"), extended)
    return extended


def _record_extension(run_dir: Path, old_epochs, recipe: Recipe) -> None:
    """config.json follows a forced change, so a later plain resume reuses it."""
    record_change(run_dir, "recipe", recipe.to_dict(), ("recipe.epochs", old_epochs, recipe.epochs))


def record_change(run_dir: Path, field: str, value, change: tuple | None = None) -> None:
    """config.json takes ``value`` for ``field`` and lists ``change`` (name, old, new) among
    its changes, so a later plain resume reuses it and the record says when it changed."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = read_json_object(path)
    except AlexnetCifarError:  # a missing or damaged config.json is rewritten on resume
        return
    name, old, new = change or (field, config.get(field), value)
    config[field] = value
    config.setdefault("changes", []).append({name: [old, new], "at": time.ctime()})
    atomic_write_json(path, config, what="the run's settings")


# ---------------------------------------------------------------------- settings kept on resume


def _config_or_empty(run_dir: Path) -> dict:
    try:
        return read_json_object(Path(run_dir) / CONFIG_FILE)
    except AlexnetCifarError:  # missing or damaged: rewritten on resume
        return {}


def kept_settings_of(options) -> dict:
    """The kept settings of a run's options (a TrainOptions), as config.json and study.json
    record them."""
    return {k.field: k.record(getattr(options, k.name)) for k in KEPT}


def record_kept_changes(run_dir: Path, options) -> None:
    """A resumed run whose settings differ from its config.json where a resume accepts and
    records a change (another md5-checked data folder, another checkpoint cadence):
    config.json now holds the new value, and lists the change."""
    config = _config_or_empty(run_dir)
    for k in KEPT:
        if k.change == "recorded" or (k.change == "md5-checked" and options.verify):
            value = k.record(getattr(options, k.name))
            if k.field in config and config[k.field] != value:
                record_change(run_dir, k.field, value)


def kept_settings(config: dict) -> dict:
    """The kept settings a run (or a study) recorded, by option name; None where it recorded
    nothing. Runs from before ``device_requested`` was recorded keep the kind of device they
    ran on."""
    kept = {k.name: config.get(k.field) for k in KEPT}
    if kept["device"] is None and isinstance(config.get("device"), str):
        kept["device"] = config["device"].split(":")[0]
    return kept


def settings_on_resume(recorded: dict, given: dict, where) -> dict:
    """The kept settings for a continued run, by option name: ``given`` (None: the flag was
    left out) over ``recorded`` (:func:`kept_settings`). Refuses a change that :data:`KEPT`
    says would change what is computed, naming each. A data folder the run recorded that is
    gone is named as recorded."""
    check_recorded_data_folder(recorded, given, where)
    chosen = {}
    for k in KEPT:
        asked = given.get(k.name)
        chosen[k.name] = asked if asked is not None else recorded.get(k.name)
    refused = []
    for k in KEPT:
        have, asked = recorded.get(k.name), given.get(k.name)
        if asked is None or have == asked:
            continue
        if k.change == "refused" or (k.change == "same device" and have is not None):
            if k.change == "same device" and _same_device(have, asked):
                continue
            shown = "the default" if have is None else param(k.name, have)
            refused.append(f"{param(k.name, asked)}: the run has {shown}")
        elif k.change == "md5-checked" and k.record(asked) != have and chosen["verify"] is False:
            refused.append(
                f"{param(k.name, asked)}: without the md5 check ({param('verify', False)}) a "
                "new data folder cannot be told to hold the same files"
            )
    if refused:
        raise SettingError(
            f"cannot continue {where} with other settings than it was started with: "
            + "; ".join(refused)
            + ". Leave these flags out to keep the run's own, or start a new run in another "
            f"{param('out')}."
        )
    return chosen


def check_recorded_data_folder(recorded: dict, given: dict, where) -> None:
    """A data folder that a run (``where``: its folder) or a study recorded and that is gone
    is named with where it was recorded, not as if it had been given."""
    have = recorded.get("data_dir")
    if given.get("data_dir") is not None or have is None or Path(have).is_dir():
        return
    source = f"in {Path(where) / CONFIG_FILE}" if isinstance(where, Path) else f"by {where}"
    raise DataNotFoundError(
        f"the data folder {have}, recorded {source}, does not exist: give "
        f"{param('data_dir')} with the folder that holds CIFAR-10 now (the md5 check tells "
        "whether it holds the same files)"
    )


def _same_device(a: str, b: str) -> bool:
    """Whether two device names pick the same device here (``auto`` and ``cpu`` on a machine
    without CUDA): then nothing computed changes."""
    try:
        return resolve_device(a) == resolve_device(b)
    except SettingError:
        return False


def run_settings(run_dir: Path, warn=None) -> dict:
    """The settings a run was started with, for a resume to take the flags left out from:
    its config.json, checked field by field, or when that file is gone, its checkpoint.
    {} when the folder holds no run."""
    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILE
    if config_file.exists():
        config = read_json_object(config_file, "run settings", error=SettingError)
        check_fields(config, RUN_SETTINGS, str(config_file))
        check_fields(
            config.get("engine_requested") or {},
            ENGINE_SETTINGS,
            f"{config_file}: the field 'engine_requested'",
        )
        if "recipe" in config:
            Recipe.from_dict(config["recipe"], f"{config_file}: the field 'recipe'")
        return config
    if not has_checkpoint(run_dir):
        return {}
    state, _ = load_checkpoint(run_dir, warn=warn or (lambda msg: None))
    ident = state["run_identity"]
    settings = {k: ident.get(k) for k in IDENTITY_FIELDS}
    settings.update({k: ident[k] for k in OPTIONAL_FIELDS if ident.get(k) is not None})
    settings["recipe"] = {
        k.removeprefix("recipe."): v for k, v in ident.items() if k.startswith("recipe.")
    }
    settings["num_classes"] = ident.get("num_classes", 10)
    settings["model_config"] = state["model_config"]  # the variant's shape, for a resume by name
    if isinstance(state.get("engine_requested"), dict):
        settings["engine_requested"] = state["engine_requested"]
    if isinstance(state.get("settings"), dict):  # the kept settings (KEPT_FIELDS)
        settings.update(state["settings"])
    return settings
