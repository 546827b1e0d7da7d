"""Where a result came from: the versions it depends on and the code that ran."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from ._version import __version__

__all__ = ["code_source", "source_of", "versions"]


def versions(device: torch.device | None = None) -> dict:
    """The versions a result depends on (and the GPU, on CUDA)."""
    v = {
        "alexnet_cifar": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if device is not None and device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


@functools.lru_cache(maxsize=1)
def code_source() -> dict:
    """The code that ran: the package's version, and in a git checkout its commit (and
    whether the package's files differ from it), else a SHA-256 over the package's files."""
    return source_of(Path(__file__).resolve().parent)


def source_of(pkg: Path) -> dict:
    """:func:`code_source` of the package in the folder ``pkg``."""
    source: dict = {"alexnet_cifar": __version__}
    tracked = _git(pkg, "ls-files", "--error-unmatch", "__init__.py") is not None
    commit = _git(pkg, "rev-parse", "HEAD") if tracked else None
    if commit:
        source["git_commit"] = commit
        source["git_modified"] = bool(_git(pkg, "status", "--porcelain", "--", "."))
        return source
    digest = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        digest.update(f"{f.relative_to(pkg).as_posix()}\0".encode() + f.read_bytes())
    source["files_sha256"] = digest.hexdigest()
    return source


def _git(folder: Path, *args: str) -> str | None:
    """git's output in ``folder``, or None (no git, not a checkout, any failure)."""
    try:
        p = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None
