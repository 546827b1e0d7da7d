"""Real filesystems for the fault tests: a small one that fills up, and a read-only one.

As root (where permissions do not stop a write) these are tmpfs mounts; where mounting is not
allowed, a full disk is a file-size limit of the process under test, and a read-only folder
is one without write permission (which only stops a user other than root).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return p.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """A folder nothing can be written into."""
    if os.geteuid() == 0:
        if not _mount(folder, "ro,size=64k"):
            pytest.skip("running as root and no read-only filesystem can be mounted here")
        try:
            yield folder
        finally:
            _umount(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "4m"):
    """(folder, preexec_fn for the process under test): a filesystem that fills up after
    ``size``; where none can be mounted, the process may not write files beyond ``size``."""
    if os.geteuid() == 0 and _mount(folder, f"size={size}"):
        try:
            yield folder, None
        finally:
            _umount(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    limit = int(size.rstrip("m")) * 2**20

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    yield folder, limit_file_size
