"""Run folders as the report reads them: settings, metrics, result, model size and labels."""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import ReportError, SettingError
from ..files import (
    CONFIG_FILE,
    MODEL_FILE,
    RESULT_FILE,
    check_fields,
    read_json_object,
    study_run_folders,
)
from ..recipe import Recipe
from ..training.resume import identity_of_config
from ..training.runlog import read_metrics
from ..variants import recorded_variant, variant_order

__all__ = ["ClassResults", "RunData", "label_slug", "load_run", "load_runs"]


class ClassResults(NamedTuple):
    """A finished run's test results per class, from its result.json."""

    classes: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    accuracy: list[float]  # per class, in the order of ``classes``


@dataclass
class RunData:
    """One run folder as read from disk."""

    path: Path
    config: dict
    metrics: dict[str, list]  # column -> values, one per finished epoch
    result: dict | None  # None while the run is unfinished
    model_bytes: int | None  # size of model.pt on disk; None while unfinished
    label: str = ""
    color: str = "C0"

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def epochs_done(self) -> int:
        return len(self.metrics["epoch"])

    @property
    def epochs_planned(self) -> int:
        return int(self.config["recipe"]["epochs"])

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return f"unfinished (epoch {self.epochs_done} of {self.epochs_planned})"

    def class_results(self) -> ClassResults | None:
        """The per-class results in result.json, or None if absent or malformed."""
        r = self.result or {}
        classes, cm, per = r.get("classes"), r.get("confusion_matrix"), r.get("per_class_accuracy")
        if isinstance(per, dict) and isinstance(classes, list):  # {class name: accuracy}
            per = [per.get(c) for c in classes]
        if not (isinstance(classes, list) and isinstance(cm, list) and isinstance(per, list)):
            return None
        if any(not isinstance(v, (int, float)) for v in per):
            return None
        k = len(classes)
        if k == 0 or len(cm) != k or any(len(row) != k for row in cm) or len(per) != k:
            return None
        return ClassResults(classes, cm, per)


def load_run(path: str | os.PathLike) -> RunData:
    """Read one run folder; a folder that is not one raises ReportError saying why."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder: give run folders (made by train or study)")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ReportError(
            f"{path} is not a run folder: it has no {CONFIG_FILE} (a run folder is what "
            "'alexnet-cifar train' or 'study' writes)"
        )
    config = read_json_object(config_file, CONFIG_FILE, error=ReportError)
    if config.get("imported_from") and "recipe" not in config:
        raise ReportError(
            f"{path} holds imported weights and no training history: nothing to plot "
            f"(evaluate it with `alexnet-cifar evaluate {path}`)"
        )
    _check_config(config, config_file)
    metrics = read_metrics(path, error=ReportError)
    result = None
    if (path / RESULT_FILE).is_file():
        result = read_json_object(path / RESULT_FILE, RESULT_FILE, error=ReportError)
        check_fields(result, RESULT_FIELDS, str(path / RESULT_FILE), error=ReportError)
        _check_accuracies(result, path / RESULT_FILE)
    model_file = path / MODEL_FILE
    model_bytes = model_file.stat().st_size if result is not None and model_file.is_file() else None
    return RunData(path, config, metrics, result, model_bytes)


#: What the report reads of a run's config.json and result.json, and the kinds it needs.
CONFIG_FIELDS = {
    "model": "str",
    "model_config": "dict",
    "recipe": "dict",
    "seed": "int?",
    "limit_train": "int?",
    "limit_test": "int?",
    "n_train": "int?",
    "n_test": "int?",
    "device": "str?",
    "versions": "dict?",
}
RESULT_FIELDS = {
    "params": "int?",
    "classes": "strs?",
    "confusion_matrix": "list?",
}


#: The accuracies of result.json the report reads: shares, 0 to 1 (null where none).
RESULT_ACCURACIES = (
    "test_accuracy",
    "best_test_accuracy",
    "test_accuracy_final",
    "test_accuracy_at_best_val",
    "best_val_accuracy",
)


def _check_accuracies(result: dict, result_file: Path) -> None:
    for name in RESULT_ACCURACIES:
        v = result.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 <= v <= 1:
            raise ReportError(
                f"{result_file}: the field {name!r} is {v!r}, outside 0 to 1: the file is "
                "damaged (no run writes that)"
            )


def _check_config(config: dict, config_file: Path) -> None:
    """One schema for the config.json of a run: an error names the file and the field."""
    where = str(config_file)
    required = ("model", "model_config", "recipe")
    check_fields(config, CONFIG_FIELDS, where, required=required, error=ReportError)
    try:  # a preset's name with that preset's shape, or a variant of its own
        shape, named = f"{where}: the field 'model_config'", "the field 'model'"
        recorded_variant(config["model"], config["model_config"], shape, named)
        Recipe.from_dict(config["recipe"], f"{where}: the field 'recipe'")
    except SettingError as e:
        raise ReportError(str(e)) from None
    versions = config.get("versions") or {}
    check_fields(
        versions, {"torch": "str?", "gpu": "str?"}, f"{where}: 'versions'", error=ReportError
    )


def _run_folders_in(path: Path) -> list[Path] | None:
    """The run folders of a study folder (``DIR/runs/NAME``, or ``DIR/NAME/seed-N`` for
    several seeds), or None if ``path`` is not one."""
    if (path / CONFIG_FILE).exists() or not path.is_dir():
        return None
    return study_run_folders(path) or None


def load_runs(paths, warn=None) -> list[RunData]:
    """Read run folders (a study folder stands for its runs), label and order them.

    A folder that cannot be read is left out, said through ``warn`` (a report of the other
    runs is still worth writing); when no run can be read, ReportError names each problem.
    """
    seen: set[Path] = set()
    runs: list[RunData] = []
    problems: list[str] = []
    for p in paths:
        p = Path(p)
        for folder in _run_folders_in(p) or [p]:
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                run = load_run(folder)
            except ReportError as e:
                problems.append(str(e))
                continue
            same = next((r for r in runs if _same_run(r, run)), None)
            if same is not None:  # one sample, not two: the statistics would shrink to zero
                problems.append(
                    f"{folder} is a copy of {same.path} (the same settings, seed and metrics): "
                    "counted once"
                )
                continue
            runs.append(run)
    if not runs:
        raise ReportError("; ".join(problems) if problems else "no run folders given")
    for problem in problems:
        if warn is not None:
            warn(f"warning: left out of the report: {problem}")
    runs.sort(key=lambda r: (variant_order(r.model), str(r.path)))
    _assign_labels(runs)
    for i, r in enumerate(runs):
        r.color = f"C{i % 10}"
    return runs


def _same_run(a: RunData, b: RunData) -> bool:
    """Whether two folders hold one run: the same settings and seed (its identity) and the
    same metrics in every column but the time (a copy, or the same computation again)."""
    if identity_of_config(a.config) != identity_of_config(b.config):
        return False
    return all(a.metrics[c] == b.metrics[c] for c in a.metrics if c != "seconds")


def _assign_labels(runs: list[RunData]) -> None:
    """The variant name where it is unique, else the run folder's name (which tells them apart)."""
    per_model = Counter(r.model for r in runs)
    for r in runs:
        if per_model[r.model] == 1:
            r.label = r.model
        elif r.model in r.path.name:
            r.label = r.path.name
        else:
            r.label = f"{r.model} ({r.path.name})"
    per_label = Counter(r.label for r in runs)
    clashing = [r for r in runs if per_label[r.label] > 1]
    for depth in range(2, 6):  # as many of the folders' last parts as tell them apart
        if not clashing:
            break
        tails = {id(r): "/".join(r.path.resolve().parts[-depth:]) for r in clashing}
        counts = Counter(f"{r.model} {tails[id(r)]}" for r in clashing)
        for r in clashing:
            r.label = f"{r.model} ({tails[id(r)]})"
        clashing = [r for r in clashing if counts[f"{r.model} {tails[id(r)]}"] > 1]
    seen: Counter = Counter()
    for r in runs:
        seen[r.label] += 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"


def tensorboard_command(runs: list[tuple[str, str]]) -> str:
    """``tensorboard --logdir_spec NAME:DIR,...`` for (label, run folder) pairs, quoted for a
    shell, each run under a name of its own (``_2``, ``_3`` after a name already taken)."""
    names: list[str] = []
    for label, _ in runs:
        base = label_slug(label)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    spec = ",".join(f"{name}:{folder}" for name, (_, folder) in zip(names, runs))
    return shlex.join(["tensorboard", "--logdir_spec", spec])


def label_slug(label: str) -> str:
    """A run's label as a file-name part (and a TensorBoard run name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"
