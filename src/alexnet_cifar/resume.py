"""Whether a run folder can be continued as asked: the run's identity, compared field by field.

A run's identity is what decides what it computes: the model, the class count, the seed, the
subsets and every field of the recipe. A resume must ask for the same identity; the one change
it accepts, with ``force``, is more epochs (the learning-rate drops stay where they were, so
the epochs already trained stay what they were). A study compares its runs the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

from .checkpoint import load_checkpoint
from .engine_options import engine_setting_kinds
from .errors import AlexnetCifarError, CheckpointError, RunSetupError, SettingError, param
from .files import (
    CHECKPOINT,
    CONFIG_FILE,
    PREV_CHECKPOINT,
    atomic_write_json,
    check_fields,
    read_json_object,
)
from .recipe import Recipe

__all__ = [
    "SAFE_CHANGES",
    "RUN_SETTINGS",
    "differences",
    "has_checkpoint",
    "identity_of_config",
    "load_resume_state",
    "run_identity",
    "run_settings",
]

#: The fields of config.json that a resumed run takes its settings from, and their kinds.
RUN_SETTINGS = {
    "model": "str",
    "recipe": "dict",
    "seed": "int",
    "limit_train": "int?",
    "limit_test": "int?",
    "num_classes": "int",
    "engine_requested": "dict",
}
ENGINE_SETTINGS = engine_setting_kinds()  # the fields of EngineOptions and their kinds

#: Changes a resume accepts with ``force``: they extend the run without changing its past.
SAFE_CHANGES = {"recipe.epochs"}
#: Identity fields recorded only when set (a run without them is what it was before they
#: existed); a difference is still one when only one side has them.
OPTIONAL_FIELDS = ("val_split",)


def run_identity(
    model: str,
    num_classes: int,
    seed: int,
    limit_train: int | None,
    limit_test: int | None,
    recipe: Recipe,
    val_split: int | None = None,
) -> dict:
    """The fields that define what a run computes, flat (``recipe.lr``, ...)."""
    ident = {
        "model": model,
        "num_classes": num_classes,
        "seed": seed,
        "limit_train": limit_train,
        "limit_test": limit_test,
    }
    if val_split is not None:
        ident["val_split"] = val_split
    ident.update({f"recipe.{k}": v for k, v in recipe.to_dict().items()})
    return ident


def identity_of_config(config: dict) -> dict:
    """The identity recorded in a run's config.json (the same flat form)."""
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    ident = {
        k: config.get(k) for k in ("model", "num_classes", "seed", "limit_train", "limit_test")
    }
    ident.update({k: config[k] for k in OPTIONAL_FIELDS if config.get(k) is not None})
    ident.update({f"recipe.{k}": v for k, v in recipe.items()})
    return ident


def differences(have: dict, want: dict) -> list[str]:
    """The identity fields where ``have`` (a run) and ``want`` (what is asked) differ."""
    extra = [k for k in OPTIONAL_FIELDS if k in have and k not in want]
    return [k for k in [*want, *extra] if have.get(k) != want.get(k)]


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / n).exists() for n in (CHECKPOINT, PREV_CHECKPOINT))


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
    if not has_checkpoint(run_dir):
        say(f"nothing to resume in {run_dir}: starting a new run there")
        return None, recipe
    state, path = load_checkpoint(run_dir, warn=warn)
    theirs = state.get("run_identity") or {}
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
    path = run_dir / CONFIG_FILE
    try:
        config = read_json_object(path)
    except AlexnetCifarError:  # a missing or damaged config.json is rewritten on resume
        return
    config["recipe"] = recipe.to_dict()
    config.setdefault("changes", []).append(
        {"recipe.epochs": [old_epochs, recipe.epochs], "at": time.ctime()}
    )
    atomic_write_json(path, config, what="the run's settings")


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
    settings = {k: ident.get(k) for k in ("model", "seed", "limit_train", "limit_test")}
    settings["recipe"] = {
        k.removeprefix("recipe."): v for k, v in ident.items() if k.startswith("recipe.")
    }
    settings["num_classes"] = ident.get("num_classes", 10)
    if isinstance(state.get("engine_requested"), dict):
        settings["engine_requested"] = state["engine_requested"]
    return settings
