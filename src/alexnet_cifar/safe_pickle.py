"""Reading CIFAR-10's python pickles without trusting them.

A pickle can name any callable to run while it is read. CIFAR-10's batches need only numpy
array reconstruction, dtypes and plain containers, so the unpickler here admits exactly those;
a pickle that names anything else is refused before it is built, and nothing in it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["unpickle"]


class _Refused(pickle.UnpicklingError):
    """A global the restricted unpickler would not load."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's pickles need: numpy arrays, dtypes and plain containers."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise _Refused(
            f"refused to load {module}.{name}: a CIFAR-10 pickle holds only numpy arrays, "
            "lists and dicts, so this file is not one and nothing in it was run"
        )


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    if encoding.replace("-", "").lower() != "latin1":
        raise _Refused(f"refused to decode with codec {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray as _ma
        from numpy._core import numeric as _num
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as _ma  # type: ignore[no-redef]
        from numpy.core import numeric as _num  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _ma._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _ma.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _num._frombuffer
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


def unpickle(data: bytes, path: Path) -> dict:
    """The dict pickled in ``data`` (read from ``path``): numpy arrays and plain containers
    only, anything else refused before it is built; DataError naming the file otherwise."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path}: {e}") from e
    except Exception as e:  # truncated or garbled streams raise many kinds of error
        raise DataError(f"{path} is truncated or not a pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
