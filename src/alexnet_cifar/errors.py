"""The errors the package raises for what a user can fix, each with the exit code it means.

Every error a user can cause derives from :class:`AlexnetCifarError`. The command line prints
such an error as one line (``error: ...``) and exits with its ``exit_code``; anything else is a
bug and keeps its traceback.

A message names the settings it is about with :func:`param`, as Python parameters
(``limit_train``, ``verify=False``). ``str(error)`` reads that way for a notebook; the command
line renders the same message with its own flag names (``--limit-train``, ``--no-verify``)
through :meth:`AlexnetCifarError.render`, so the library never needs to know the flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "AlexnetCifarError",
    "CheckpointError",
    "DataError",
    "DataNotFoundError",
    "ExecutorError",
    "ExportError",
    "FileWriteError",
    "ImageError",
    "KerasFileError",
    "NonFiniteLossError",
    "ReportError",
    "RunLockedError",
    "RunSetupError",
    "SettingError",
    "TrainingInterrupted",
    "UnknownModelError",
    "param",
]

EXIT_USAGE = 2
EXIT_NONFINITE = 3

# A parameter inside a message: \x1f name [= value] \x1f, never part of user text.
_MARK = "\x1f"
_PARAM = re.compile(_MARK + r"([A-Za-z_][A-Za-z0-9_]*)(?:=([^\x1f]*))?" + _MARK)


def param(name: str, value: object = None) -> str:
    """A setting named in a message: ``param("limit_train")``, ``param("verify", False)``."""
    return f"{_MARK}{name}{'' if value is None else '=' + repr(value)}{_MARK}"


def python_name(name: str, value: str | None) -> str:
    """How a notebook user sets the parameter: ``limit_train`` or ``verify=False``."""
    return name if value is None else f"{name}={value}"


def render_params(text: str, name_of: Callable[[str, str | None], str]) -> str:
    """``text`` with each parameter mark written by ``name_of(name, value_repr)``."""
    return _PARAM.sub(lambda m: name_of(m.group(1), m.group(2)), text)


class AlexnetCifarError(Exception):
    """A problem the user can fix: printed as one message, never as a traceback."""

    exit_code = EXIT_USAGE

    def render(self, name_of: Callable[[str, str | None], str] = python_name) -> str:
        return render_params(super().__str__(), name_of)

    def __str__(self) -> str:
        return self.render()


class SettingError(AlexnetCifarError, ValueError):
    """A setting that cannot be used (out of range, of the wrong kind, not for this device)."""


class UnknownModelError(SettingError):
    """A model name that is not one of the presets."""


class DataError(AlexnetCifarError, ValueError):
    """The data files are missing, damaged or not CIFAR-10; the message names the file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No CIFAR-10 where we looked, and it could not be downloaded."""


class CheckpointError(AlexnetCifarError, RuntimeError):
    """A checkpoint or model file that is missing, damaged or of another model."""


class RunLockedError(AlexnetCifarError, RuntimeError):
    """Another live process trains in this run folder."""


class RunSetupError(AlexnetCifarError, RuntimeError):
    """The run cannot start as asked (folder, device, resume mismatch); nothing was trained."""


class FileWriteError(AlexnetCifarError, OSError):
    """A file could not be written (full disk, no permission); nothing half-written is left."""


class NonFiniteLossError(AlexnetCifarError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = EXIT_NONFINITE


class TrainingInterrupted(AlexnetCifarError, RuntimeError):
    """Stopped by a signal at a safe point, after saving a checkpoint.

    ``run_dir`` and ``model`` say what to resume; the command line turns them into the
    command that does.
    """

    def __init__(self, message: str, signum: int, run_dir=None, model: str | None = None):
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
        self.model = model

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


class ReportError(AlexnetCifarError, ValueError):
    """A folder that cannot be reported on (not a run folder, no finished epoch, damaged)."""


class KerasFileError(AlexnetCifarError, ValueError):
    """A Keras file that cannot be read, or whose weights do not fit the chosen model."""


class ExportError(AlexnetCifarError, RuntimeError):
    """An export that cannot be done here (a missing optional package, an exporter failure)."""


class ExecutorError(AlexnetCifarError, RuntimeError):
    """A study's runs cannot be spread out: Ray missing or unreachable, or a run whose workers
    kept dying (its checkpoint is kept: running the study again resumes it)."""


class ImageError(AlexnetCifarError, ValueError):
    """A file that is not an image this tool can read."""
