"""Files: the names in a run folder, atomic writes, and one way to read JSON back.

A file is written to a temporary file beside it, flushed, fsynced and only then renamed into
place, so a crash or a full disk never leaves a half-written file under the real name. A write
that fails raises :class:`FileWriteError` saying which file, what it was, and why.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import AlexnetCifarError, FileWriteError, RunSetupError, SettingError, param

__all__ = [
    "CHECKPOINT",
    "CONFIG_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PREV_CHECKPOINT",
    "RESULT_FILE",
    "RUN_FILES",
    "STUDY_FILE",
    "TEMP_PREFIX",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_fields",
    "json_safe",
    "prepare_run_folder",
    "read_json_object",
    "refuse_run_file",
    "remove_empty_run_folder",
    "remove_stale_temp_files",
    "study_run_folder",
    "study_run_folders",
]

# The files of a run folder.
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"
CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"
MODEL_FILE = "model.pt"
LOCK_FILE = ".lock"
LOG_FILE = "train.log"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, RESULT_FILE, CHECKPOINT, PREV_CHECKPOINT, MODEL_FILE)
# The settings of a study, in its folder.
STUDY_FILE = "study.json"
# Temporary files of atomic writes start with this (then the file's name).
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def study_run_folder(out: Path, model: str, seed: int, several_seeds: bool) -> Path:
    """Where a study keeps a run: ``OUT/runs/NAME``, or ``OUT/NAME/seed-N`` with several seeds."""
    return Path(out) / model / f"seed-{seed}" if several_seeds else Path(out) / "runs" / model


def study_run_folders(out: Path) -> list[Path]:
    """The run folders a study folder holds (as :func:`study_run_folder` places them), those
    with a config.json, in order."""
    out = Path(out)
    found = sorted(p for p in out.glob("runs/*") if (p / CONFIG_FILE).is_file())
    return found + sorted(p for p in out.glob("*/seed-*") if (p / CONFIG_FILE).is_file())


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "the disk is full" if e.errno != errno.EFBIG else "the file is too large here"
        return e.strerror or str(e)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class _RecordingFile:
    """A file object that writes every byte it is given and remembers the OSError that
    stopped it: writers like ``torch.save`` turn that error into a vague RuntimeError."""

    def __init__(self, raw):
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self.raw.write(view[done:])
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as e:
            self.error = self.error or e
            raise
        return done

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self.raw, name)


def atomic_write(
    path: Path,
    write,
    *,
    what: str = "the file",
    keep_previous: Path | None = None,
    advice: str = "",
) -> None:
    """Write ``path`` through ``write(file)`` to a temp file, fsync, rename into place.

    With ``keep_previous``, the old ``path`` is renamed there first (after the new one is
    complete), so the previous good version survives until the next write succeeds. A
    failure raises FileWriteError naming ``what`` was written, why it failed and ``advice``.
    """
    path = Path(path)
    tmp = None
    recorder = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give it a normal file's mode
        with os.fdopen(fd, "wb", buffering=0) as f:
            recorder = _RecordingFile(f)
            write(recorder)
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(tmp)
        cause = recorder.error if recorder is not None and recorder.error else e
        if isinstance(cause, OSError):
            raise FileWriteError(
                f"could not write {what} {path}: {_why(cause)}. Nothing half-written was left "
                f"behind; the files that were there before are intact."
                + (f" {advice}" if advice else "")
            ) from e
        raise
    _fsync_dir(path.parent)


def prepare_run_folder(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}write-test-{os.getpid()}{TEMP_SUFFIX}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise RunSetupError(
            f"cannot write to the run folder {folder}: {_why(e)}. Choose a writable {param('out')}."
        ) from e


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove what interrupted atomic writes left in ``folder`` (a process killed while it
    wrote). Call it only while holding the folder's lock: then no writer is alive."""
    removed = []
    for name in RUN_FILES + (STUDY_FILE,):
        for p in Path(folder).glob(f"{TEMP_PREFIX}{name}.*{TEMP_SUFFIX}"):
            _remove_quietly(p)
            removed.append(p)
    return removed


def refuse_run_file(path: Path, what: str) -> None:
    """Refuse to write ``what`` over a file that belongs to a run folder (its model, its
    checkpoints, its logs): exporting over ``RUN/model.pt`` would destroy the trained model."""
    path = Path(path)
    folder = path.parent
    ours = set(RUN_FILES) | {LOG_FILE, LOCK_FILE, STUDY_FILE}
    is_run = any((folder / n).exists() for n in (CONFIG_FILE, CHECKPOINT, MODEL_FILE, STUDY_FILE))
    if is_run and path.name in ours:
        raise SettingError(
            f"will not write {what} over {path}: it is a file of the run in {folder}; "
            f"choose another {param('out')}"
        )


def remove_empty_run_folder(folder: Path) -> bool:
    """Remove a run folder that holds nothing but a lock and a log (a run that failed before
    its first checkpoint); anything else in it, and the folder stays."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    if not names <= {LOCK_FILE, LOG_FILE}:
        return False
    for name in names:
        _remove_quietly(folder / name)
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def _remove_quietly(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes, *, what: str = "the file", advice: str = ""):
    atomic_write(path, lambda f: f.write(data), what=what, advice=advice)


def atomic_write_text(path: Path, text: str, *, what: str = "the file", advice: str = ""):
    atomic_write_bytes(path, text.encode(), what=what, advice=advice)


def json_safe(obj: Any) -> Any:
    """NaN and infinities become None (null): what the tool writes is always valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any, *, what: str = "the file", advice: str = ""):
    """``obj`` as indented JSON; NaN and infinities are written as null, never as tokens
    that JSON readers refuse."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text, what=what, advice=advice)


def read_json_object(path: Path, what: str | None = None, error=AlexnetCifarError) -> dict:
    """The JSON object in ``path``; ``error(message)`` naming the file when it is missing,
    unreadable, not JSON or not an object."""
    path = Path(path)
    what = what or path.name
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise error(f"{path} does not exist (its {what} is missing)") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not the {what} file") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path} is damaged: its {what} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path} is damaged: its {what} is a JSON {type(data).__name__}, not an object")
    return data


# ---------------------------------------------------------------------- checking what is read


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


#: The kinds of value a field of a file may hold: (how a message says it, the test).
KINDS = {
    "int": ("a whole number", _is_int),
    "number": ("a finite number", _is_number),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "ints": (
        "a list of whole numbers",
        lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)),
    ),
    "strs": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    ),
}


def check_fields(
    data: dict, spec: dict[str, str], where: str, *, required=(), error=SettingError
) -> dict:
    """``data`` when each field named in ``spec`` holds the kind of value it names (a kind
    ending in ``?`` may also be null) and every ``required`` field is there; otherwise
    ``error`` naming ``where`` (a file) and the field."""
    for name in required:
        if name not in data:
            raise error(f"{where}: the field {name!r} is missing")
    for name, kind in spec.items():
        if name not in data:
            continue
        optional = kind.endswith("?")
        what, test = KINDS[kind.rstrip("?")]
        value = data[name]
        if not (test(value) or (optional and value is None)):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise error(f"{where}: the field {name!r} should be {what}, not {shown}")
    return data
