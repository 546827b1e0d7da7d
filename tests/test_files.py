"""files: atomic writes that never leave a half-written file, stale temporary files, JSON read
back with a message naming the file."""

import errno
import json
import math
import os

import pytest

from alexnet_cifar import files
from alexnet_cifar.errors import AlexnetCifarError, FileWriteError, ReportError
from alexnet_cifar.files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json_object,
    remove_stale_temp_files,
)

# ---------------------------------------------------------------------- atomic writes


def _temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_the_file_whole_and_can_keep_the_previous(tmp_path):
    path, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    atomic_write(path, lambda f: f.write(b"first"), keep_previous=prev)
    assert path.read_bytes() == b"first" and not prev.exists()  # nothing to keep yet
    atomic_write(path, lambda f: f.write(b"second"), keep_previous=prev)
    assert (path.read_bytes(), prev.read_bytes()) == (b"second", b"first")
    assert _temp_files(tmp_path) == []
    # mkstemp makes 0600; the written file has the mode any new file gets here
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    atomic_write(path, lambda f: f.write(b"good"))

    def half_then_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match="could not write the checkpoint .*the disk is full"):
        atomic_write(path, half_then_full, what="the checkpoint", keep_previous=prev)
    assert path.read_bytes() == b"good" and not prev.exists()
    assert _temp_files(tmp_path) == []


def test_interrupted_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "metrics.csv"
    atomic_write_text(path, "epoch\n1\n")

    def killed(f):
        f.write(b"epoch\n1\n2")
        raise KeyboardInterrupt  # not an OSError: passed on unchanged

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, killed)
    assert path.read_text() == "epoch\n1\n" and _temp_files(tmp_path) == []


def test_unwritable_metrics_file_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(FileWriteError, match="could not write the metrics .*Read-only file system"):
        files.atomic_write_text(tmp_path / "metrics.csv", "x", what="the metrics")
    assert not (tmp_path / "metrics.csv").exists()


def test_json_is_always_valid_json(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"loss": math.nan, "best": [1.0, math.inf, -math.inf], "n": 3})
    assert json.loads(path.read_text()) == {"loss": None, "best": [1.0, None, None], "n": 3}


# ---------------------------------------------------------------------- stale temporary files


def test_stale_temp_files_of_run_files_are_removed_and_nothing_else(tmp_path):
    stale = [".checkpoint.pt.k2j1x.tmp", ".config.json.a8b.tmp", ".study.json.q.tmp"]
    kept = [
        "checkpoint.pt",  # the real files
        "config.json",
        ".notes.txt.abc.tmp",  # not a temp file of a run-folder file
        "checkpoint.pt.abc.tmp",  # not one of ours: ours start with a dot
        ".lock",
    ]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temp_files(tmp_path) == []


# ---------------------------------------------------------------------- reading JSON back


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"config\.json does not exist \(its run settings is missing\)"),
        ("folder", r"config\.json is a folder, not the run settings file"),
        (b"{not json", r"config\.json is damaged: its run settings is not valid JSON"),
        (b"\xff\xfe\x00", r"config\.json is damaged: its run settings is not valid JSON"),
        (b"[1, 2]", r"config\.json is damaged: its run settings is a JSON list, not an object"),
    ],
    ids=["missing", "folder", "not json", "not text", "a list"],
)
def test_read_json_object_names_the_file_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ReportError, match=message):
        read_json_object(path, "run settings", error=ReportError)


def test_read_json_object_returns_the_object(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"model": "alexnet", "classes": ["cat"]})
    assert read_json_object(path) == {"model": "alexnet", "classes": ["cat"]}
    path.write_text('"text"')
    # without a description, the file's name says what it holds
    with pytest.raises(AlexnetCifarError, match=r"damaged: its result\.json is a JSON str"):
        read_json_object(path)
