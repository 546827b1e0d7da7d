"""What a run leaves in its folder besides checkpoints, and how it is read back.

* ``config.json``: everything needed to rerun (model, recipe, seed, subsets, device, versions);
* ``metrics.csv``: one row per epoch, the columns of :data:`METRIC_COLUMNS`;
* TensorBoard events of the same scalars;
* ``result.json``: the final and best accuracy, time, device and per-class results.

Also the progress bar a long loop shows on a terminal, and durations as people read them.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path

from ..data import CLASSES
from ..errors import AlexnetCifarError
from ..files import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    RESULT_FILE,
    atomic_write_json,
    atomic_write_text,
    read_json_object,
)

__all__ = [
    "HEARTBEAT_SECONDS",
    "METRIC_COLUMNS",
    "Heartbeat",
    "RunLog",
    "class_names",
    "epoch_line",
    "format_duration",
    "progress_bar",
    "read_metrics",
    "write_config_file",
    "write_result_file",
]

#: The columns of metrics.csv, one row per finished epoch (Keras' names).
METRIC_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def format_duration(seconds: float | None) -> str:
    """``42.0 s``, ``3m05s``, ``2h07m``; ``–`` for a time that is missing or not a number."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def epoch_line(row: dict, epochs: int, recent_seconds: list[float]) -> str:
    """The line printed after an epoch, with the time left at the pace of recent epochs."""
    done = row["epoch"]
    eta = (epochs - done) * sum(recent_seconds) / max(len(recent_seconds), 1)
    return (
        f"epoch {done}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
        f"lr {row['lr']:g}  {row['seconds']:.1f}s"
        + (f"  ETA {format_duration(eta)}" if done < epochs else "")
    )


# ---------------------------------------------------------------------- progress


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


#: Seconds between two heartbeat lines.
HEARTBEAT_SECONDS = 30.0
#: How a heartbeat line names the figures a bar shows (the engine's postfix).
_BEAT_FIGURES = {"loss": "loss {}", "acc": "accuracy {}", "img_s": "{} images/s"}


class Heartbeat:
    """Where no bar can show (the output is a log, CI, nohup), a line every ``every`` seconds
    of a long loop through ``say``: where it stands, the figures a bar would show and the time
    the loop has left. A loop shorter than ``every`` says nothing. The methods of a bar."""

    def __init__(self, total, desc, say, *, initial=0, unit="step", every=None, clock=None):
        self.total, self.desc, self.say, self.unit = total, desc, say, unit
        self.every = HEARTBEAT_SECONDS if every is None else every
        self.clock = clock or time.monotonic
        self.n = self.first = initial
        self.start = self.last = self.clock()
        self.figures: dict = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.say(self.line(now))

    def set_postfix(self, refresh: bool = True, **figures) -> None:
        self.figures = figures

    def line(self, now: float) -> str:
        rate = (self.n - self.first) / max(now - self.start, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else None
        shown = [_BEAT_FIGURES.get(k, f"{k} {{}}").format(v) for k, v in self.figures.items()]
        where = f"{self.desc}: {self.unit} {self.n}/{self.total}"
        return "  ".join([where, *shown, f"ETA {format_duration(left)}"])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(
    total: int, desc: str, *, enabled: bool | None, initial: int = 0, unit="step", heartbeat=None
):
    """A tqdm bar on stderr that disappears when done; ``enabled=None``: when stderr is a
    terminal, else a :class:`Heartbeat` through ``heartbeat`` where one is given. A disabled
    bar is an object with the same methods that does nothing."""
    if enabled is None and heartbeat is not None and not sys.stderr.isatty():
        return Heartbeat(total, desc, heartbeat, initial=initial, unit=unit)
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


# ---------------------------------------------------------------------- writing


def print_line_safely(msg: str, stream=None) -> None:
    """Print a line; a closed output (``train ... | head -1``) is no reason to stop a run,
    whose lines also go to its train.log."""
    stream = stream or sys.stdout
    try:
        print(msg, file=stream, flush=True)
    except (BrokenPipeError, ValueError, OSError):
        try:  # later writes (and the interpreter's final flush) go nowhere instead
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):
            pass


class RunLog:
    """The run folder's config, metrics, TensorBoard events and result. With
    ``enabled=False`` (the ranks other than 0 of a data-parallel run) nothing is written."""

    def __init__(
        self,
        folder: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        quiet: bool = False,
        print_line=None,
    ):
        self.folder = Path(folder)
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self.quiet = quiet
        self._print = print_line or print_line_safely
        self._tb = None

    def say(self, msg: str) -> None:
        """A line for the user (stdout unless quiet), kept in the run folder's train.log."""
        if not self.enabled:
            return
        self._append_log(msg)
        if not self.quiet:
            self._print(msg)

    def warn(self, msg: str) -> None:
        """A warning on stderr, kept in train.log."""
        if self.enabled:
            self._append_log(msg)
            print_line_safely(msg, sys.stderr)

    def _append_log(self, msg: str) -> None:
        try:
            with open(self.folder / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(msg + "\n")
        except OSError:
            pass  # the log is a convenience; the run's files say what matters

    def write_config(self, config: dict) -> None:
        if self.enabled:
            write_config_file(self.folder, config)

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.csv with every finished epoch (rewritten whole, atomically)."""
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: row[k] for k in METRIC_COLUMNS})
        atomic_write_text(self.folder / METRICS_FILE, buf.getvalue(), what="the metrics")

    def open_tensorboard(self, first_epoch: int) -> None:
        """Start the event file; events a crashed run logged past ``first_epoch`` are dropped."""
        if self.tensorboard and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.folder), purge_step=first_epoch + 1)

    def log_epoch(self, history: list[dict]) -> None:
        """The newest epoch of ``history`` into metrics.csv and TensorBoard."""
        self.write_metrics(history)
        if self._tb is not None:
            row = history[-1]
            for k in METRIC_COLUMNS[1:]:
                self._tb.add_scalar(k, row[k], row["epoch"])
            self._tb.flush()

    def write_result(self, result: dict) -> None:
        if self.enabled:
            write_result_file(self.folder, result)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def write_config_file(folder: Path, config: dict) -> None:
    """A run folder's config.json (a trained run's, an imported model's)."""
    atomic_write_json(Path(folder) / CONFIG_FILE, config, what="the run's settings")


def write_result_file(folder: Path, result: dict) -> None:
    """A run folder's result.json (a trained run's, an imported model's)."""
    atomic_write_json(Path(folder) / RESULT_FILE, result, what="the run's result")


# ---------------------------------------------------------------------- reading


def read_metrics(folder: Path, error=AlexnetCifarError) -> dict[str, list]:
    """metrics.csv of a run folder as columns (``epoch`` as int); ``error`` names the file,
    line and column of anything that is not a metrics file of this package."""
    f = Path(folder) / METRICS_FILE
    if not f.is_file():
        raise error(
            f"{folder} has no {METRICS_FILE}: no epoch of this run has finished, so there is "
            "nothing to report yet"
        )
    try:
        text = f.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {f}: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in METRIC_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise error(
            f"{f} is not a metrics file of this package: it lacks the column(s) "
            + ", ".join(missing)
        )
    cols: dict[str, list] = {c: [] for c in METRIC_COLUMNS}
    for line, row in enumerate(reader, start=2):
        for c in METRIC_COLUMNS:
            text_value = row.get(c)
            try:
                v = float(text_value)
            except (TypeError, ValueError):
                raise error(f"{f}, line {line}: {c} is {text_value!r}, not a number") from None
            if c == "epoch" and not (math.isfinite(v) and v == int(v)):
                raise error(f"{f}, line {line}: epoch is {text_value!r}, not a whole number")
            _check_range(f, line, c, v, text_value, error)
            cols[c].append(int(v) if c == "epoch" else v)
    if not cols["epoch"]:
        raise error(f"{f} holds no finished epoch: nothing to report")
    if cols["epoch"] != list(range(1, len(cols["epoch"]) + 1)):
        raise error(f"{f} is damaged: its epochs are not 1, 2, 3, ...")
    return cols


#: The range each column's values lie in (None: no bound); NaN and infinities are a diverged
#: run's, not damage.
METRIC_RANGES = {
    "loss": (0.0, None),
    "accuracy": (0.0, 1.0),
    "val_loss": (0.0, None),
    "val_accuracy": (0.0, 1.0),
    "lr": (0.0, None),
    "seconds": (0.0, None),
}


def _check_range(f: Path, line: int, column: str, v: float, text: str, error) -> None:
    low, high = METRIC_RANGES.get(column, (None, None))
    if not math.isfinite(v) or (low is None or v >= low) and (high is None or v <= high):
        return
    where = f"outside {low:g} to {high:g}" if high is not None else f"below {low:g}"
    raise error(
        f"{f}, line {line}: {column} is {text}, {where}: the file is damaged (no run writes "
        "that)"
    )


def class_names(path: str | os.PathLike, num_classes: int, meta: dict | None = None) -> list[str]:
    """A run's class names (result.json, config.json, a model file's ``meta``), else
    CIFAR-10's when the count fits, else '0', '1', ..."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidates = []
    for name in (RESULT_FILE, CONFIG_FILE):
        try:
            candidates.append(read_json_object(folder / name).get("classes"))
        except AlexnetCifarError:
            continue
    candidates.append((meta or {}).get("classes"))
    for names in candidates:
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    if num_classes == len(CLASSES):
        return list(CLASSES)
    return [str(i) for i in range(num_classes)]
