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

from .errors import AlexnetCifarError, FileWriteError, RunSetupError, param

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
    "json_safe",
    "prepare_run_folder",
    "read_json_object",
    "remove_stale_temp_files",
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
