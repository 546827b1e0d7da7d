"""Checkpoints and run folders: written atomically, read safely, refused when they do not fit.

A checkpoint is a ``torch.save`` dict of tensors and plain values, read back with
``torch.load(weights_only=True)``: loading one never runs code. It is written to a temporary
file, flushed and fsynced, and only then renamed over ``checkpoint.pt``; the one it replaces is
kept as ``checkpoint.prev.pt`` until the next one is complete, so a crash at any point leaves
at least one whole checkpoint.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from .. import files
from ..engine.options import PRECISIONS
from ..errors import AlexnetCifarError, CheckpointError, RunLockedError, param
from ..files import CHECKPOINT, CONFIG_FILE, LOCK_FILE, MODEL_FILE, PREV_CHECKPOINT, atomic_write
from ..models import AlexNet, AlexNetConfig, meta_model

__all__ = [
    "BackgroundWriter",
    "RunLock",
    "load_checkpoint",
    "load_model",
    "load_model_and_progress",
    "read_state",
    "resolve_weights_file",
    "save_checkpoint",
    "save_model_file",
    "recorded_test_set",
    "trained_engine",
]

CHECKPOINT_FORMAT = "alexnet-cifar-checkpoint"
MODEL_FORMAT = "alexnet-cifar-model"
FORMAT_VERSION = 1


def to_cpu(obj: Any) -> Any:
    """The same nested structure with every tensor copied to the CPU.

    Always a copy, also of CPU tensors: the copy is a snapshot that training may not change
    while it is being written.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes one file at a time in a thread, so training goes on while a checkpoint is hashed
    and written. A new write first waits for the one before; an error surfaces at that wait
    (or at ``wait()``), never silently.

    A signal's exception (a second Ctrl-C) may arrive at any point of ``submit`` or ``wait``:
    the writer only records a thread once it has started, so ``wait()`` never joins a thread
    that did not (which raises "cannot join thread before it is started"). A thread whose
    start was interrupted after it was made still writes its file to the end: it is not a
    daemon, so the interpreter waits for it before it exits.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job) -> None:
        self.wait()
        thread = threading.Thread(target=self._run, args=(job,), daemon=False)
        thread.start()
        self._thread = thread  # only a started thread: wait() may join it

    def _run(self, job) -> None:
        try:
            job()
        except BaseException as e:  # handed to the training thread at the next wait
            self._error = e

    def wait(self, quietly: bool = False, warn=None) -> None:
        """Wait for the write on its way; raise its error, or with ``quietly`` (another
        error is already on its way) report it through ``warn`` beside that one."""
        thread = self._thread
        if thread is not None:
            thread.join()  # interrupted by a signal: the thread stays recorded, to join later
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if not quietly:
                raise error
            if warn is not None:
                warn(f"also: {error}")


def content_digest(obj: Any) -> str:
    """A CRC-32 over every value of a nested state, tensors byte by byte.

    ``torch.load`` notices a truncated file but not a flipped byte inside a tensor; this does.
    """
    crc = 0

    def walk(o: Any, path: str) -> None:
        nonlocal crc
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            crc = zlib.crc32(f"{path}:{t.dtype}:{tuple(t.shape)};".encode(), crc)
            if t.numel():
                crc = zlib.crc32(memoryview(t.reshape(-1).view(torch.uint8).numpy()), crc)
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                walk(o[k], f"{path}/{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        else:
            crc = zlib.crc32(f"{path}={o!r};".encode(), crc)

    walk(obj, "")
    return f"crc32:{crc:08x}"


def _unsealed(kind: str, state: dict) -> dict:
    """What a checkpoint or model file holds, as a CPU snapshot, before its digest."""
    return to_cpu({"format": kind, "version": FORMAT_VERSION, **state})


def _seal(body: dict) -> dict:
    """``body`` with the digest that :func:`read_state` checks."""
    body["digest"] = content_digest(body)
    return body


def save_checkpoint(run_dir: Path, state: dict, writer: BackgroundWriter | None = None) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically, keeping the previous one as the fallback.

    The state is copied to the CPU here; with a ``writer`` the checksum and the write happen in
    its thread while the caller goes on.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    body = _unsealed(CHECKPOINT_FORMAT, state)

    def write() -> None:
        _seal(body)
        atomic_write(
            path,
            lambda f: torch.save(body, f),
            what="the checkpoint",
            keep_previous=run_dir / PREV_CHECKPOINT,
            advice="Free some space (or move the run folder) and resume.",
        )

    if writer is None:
        write()
    else:
        writer.submit(write)
    return path


def save_model_file(path: Path, model_config: dict, state_dict: dict, meta: dict) -> None:
    """The final weights, with what it takes to rebuild the model."""
    state = {"model_config": model_config, "model": state_dict, "meta": meta}
    obj = _seal(_unsealed(MODEL_FORMAT, state))
    atomic_write(Path(path), lambda f: torch.save(obj, f), what="the model file")


def read_state(path: Path) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint or model file, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint or run folder: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; anything else is not ours
        raise CheckpointError(f"not a checkpoint or run folder: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is damaged: the archive is truncated or broken")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # What weights_only refuses to load: objects no checkpoint of this tool holds. Nothing
        # in the file ran.
        raise CheckpointError(
            f"{path} is not a checkpoint of this tool: it holds objects that alexnet-cifar never "
            "saves, so it was not loaded (nothing in it ran)"
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a damaged archive
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path} is not a checkpoint or model file of alexnet-cifar")
    if not isinstance(obj.get("version", 0), int) or obj.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer alexnet-cifar (format {obj.get('version')}); upgrade"
        )
    if "digest" in obj:
        stored = obj.pop("digest")
        if content_digest(obj) != stored:
            raise CheckpointError(
                f"{path} is damaged: its contents do not match the checksum written with them"
            )
    return obj


_CHECKPOINT_FIELDS = {
    "epoch": int,
    "step": int,
    "model": dict,
    "model_config": dict,
    "optimizer": dict,
    "rng": dict,
    "run_identity": dict,
    "history": list,
}


def _check_training_state(state: dict, path: Path) -> None:
    """A checkpoint that loads but lacks what a resume needs, or whose weights do not fit its
    own model, is as unusable as a damaged one."""
    for key, kind in _CHECKPOINT_FIELDS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path} lacks a usable {key!r}: not a whole checkpoint")
    try:
        expected = meta_model(AlexNetConfig.from_dict(state["model_config"])).state_dict()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an unusable model_config ({e})") from None
    weights = state["model"]
    wrong = [
        k
        for k, v in expected.items()
        if not isinstance(weights.get(k), torch.Tensor) or tuple(weights[k].shape) != tuple(v.shape)
    ]
    if wrong or set(weights) != set(expected):
        names = wrong or sorted(set(weights) ^ set(expected))
        raise CheckpointError(f"{path}: its weights do not fit its model ({', '.join(names[:3])})")


def load_checkpoint(run_dir: Path, warn=print) -> tuple[dict, Path]:
    """The newest usable checkpoint of a run: ``checkpoint.pt``, else ``checkpoint.prev.pt``.

    A damaged or incomplete newest checkpoint is reported through ``warn`` and the previous one
    is used.
    """
    run_dir = Path(run_dir)
    errors = []
    for name in (CHECKPOINT, PREV_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = read_state(path)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path} is a model file, not a training checkpoint")
            _check_training_state(state, path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            warn(f"warning: {errors[-1]}; falling back to the previous checkpoint {path}")
        return state, path
    if errors:
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    raise CheckpointError(f"no checkpoint in {run_dir}: nothing to resume")


class RunLock:
    """An exclusive lock on a run folder, held for the life of a training process.

    It is an ``flock`` on ``RUN/.lock``: the kernel drops it when the process dies, however it
    dies, so a killed trainer never leaves a lock that blocks the next one.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            what = "a folder" if self.path.is_dir() else f"not usable ({e.strerror or e})"
            raise RunLockedError(
                f"{self.path} is {what}, not the run's lock file: remove it (no trainer uses it "
                "as a lock) and run again"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"another trainer (pid {holder}) is using {self.path.parent}; wait for it to "
                f"finish or choose another {param('out')}"
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------- trained models


def resolve_weights_file(path: str | Path) -> Path:
    """The file to load for a run folder (final model, else newest checkpoint) or a file."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL_FILE, CHECKPOINT, PREV_CHECKPOINT):
            if (path / name).is_file():
                return path / name
        if (path / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{path} is a run with no finished epoch yet (still training, or stopped "
                "before its first checkpoint): nothing to evaluate until its first checkpoint"
            )
        raise CheckpointError(
            f"{path} holds no {MODEL_FILE} or {CHECKPOINT}: not a run folder of alexnet-cifar"
        )
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run folder, a checkpoint or model.pt")
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> AlexNet:
    """The trained model (eval mode) from a run folder, a checkpoint or a final model file."""
    return load_model_and_progress(path, device)[0]


def _recorded_config(path: str | Path) -> dict | None:
    """config.json of a run folder or of the folder of a file inside one; None where there is
    none or it is damaged (no record to follow: the caller's default holds)."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        return files.read_json_object(config)
    except AlexnetCifarError:
        return None


def recorded_test_set(path: str | Path) -> dict | None:
    """The test set a run was evaluated on, for a run folder or a file inside one:
    ``{"limit_test": N or None (all), "seed": S}`` from its config.json; None where the folder
    records none (a model file on its own, an imported model: no training run, no test)."""
    record = _recorded_config(path)
    if record is None or "recipe" not in record:
        return None
    limit, seed = record.get("limit_test"), record.get("seed", 0)
    if not (limit is None or _whole(limit)) or not _whole(seed):
        return None
    return {"limit_test": limit, "seed": seed}


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def trained_engine(path: str | Path) -> dict | None:
    """The engine configuration a run trained with (config.json's ``engine_used``, or its
    ``engine`` in older runs) for a run folder or a file inside one; None where the folder
    records none (a model file on its own, an imported model, a damaged config.json)."""
    record = _recorded_config(path)
    if record is None:
        return None
    engine = record.get("engine_used") or record.get("engine")
    if not isinstance(engine, dict) or engine.get("precision") not in PRECISIONS:
        return None
    return engine


def load_model_and_progress(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AlexNet, dict | None]:
    """:func:`load_model`, and where an unfinished run stands when the weights are those of
    a training checkpoint: ``{"epoch": k, "epochs": n, "step": s}`` (k epochs of n finished,
    s steps into the next); None for a final model or a finished run's checkpoint."""
    file = resolve_weights_file(path)
    state = read_state(file)
    return _model_of(file, state, device), _progress_of(state)


def _progress_of(state: dict) -> dict | None:
    if state.get("format") != CHECKPOINT_FORMAT:
        return None
    epochs = (state.get("run_identity") or {}).get("recipe.epochs")
    epoch, step = state.get("epoch"), state.get("step", 0)
    if not isinstance(epochs, int) or not isinstance(epoch, int) or epoch >= epochs:
        return None
    return {"epoch": epoch, "epochs": epochs, "step": step if isinstance(step, int) else 0}


def _model_of(file: Path, state: dict, device) -> AlexNet:
    try:
        config = AlexNetConfig.from_dict(state["model_config"])
        model = AlexNet(config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = "; ".join(lines[1:3] if len(lines) > 1 else lines) or type(e).__name__
        raise CheckpointError(f"{file} does not hold a usable alexnet-cifar model: {why}") from e
    return model.to(device).eval()
