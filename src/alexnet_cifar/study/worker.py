"""One run of a study in a process of its own: what ``python -m alexnet_cifar.study.worker``
does for :class:`~alexnet_cifar.study.pool.LocalPool`.

The driver writes the job (the run's options and its torch threads) to the worker's stdin as
a pickle and keeps stdin open; the worker sets its threads before anything runs, trains, and
answers on stdout with one JSON object a line: ``{"ready": true}`` once it keeps signals
for the run, ``{"say": line}`` for the run's own lines,
``{"progress": {...}}`` every half second or so, and at the end ``{"result": {...}}`` or
``{"error": {...}}``. Anything else the process prints goes to stderr, which the driver shows
with the run's name.

A worker runs in a process group of its own, so a Ctrl-C on the terminal reaches the driver
alone, which hands one SIGINT to each worker once it is ready: the run saves its checkpoint
at its next step and stops. A signal that comes before the run listens for it is kept and
delivered at its first step. If the driver dies, stdin closes and the run stops the same way.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time

import torch

from ..errors import AlexnetCifarError
from ..files import json_safe
from ..training.trainer import train
from .executors import error_record, result_record

__all__ = ["PROGRESS_EVERY_S", "main"]

#: Seconds between two progress messages of a run.
PROGRESS_EVERY_S = 0.5


class _Channel:
    """The JSON lines to the driver, on the stdout this process started with."""

    def __init__(self):
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints: stderr
        self._lock = threading.Lock()

    def send(self, **message) -> None:
        line = json.dumps(json_safe(message), allow_nan=False)
        with self._lock:
            try:
                self._out.write(line + "\n")
            except (BrokenPipeError, OSError, ValueError):
                pass  # the driver is gone; the run's own files hold everything


class _EarlySignals:
    """SIGINT and SIGTERM before the run listens for them (while Python and the data load):
    kept, and handed to the run at its first step."""

    def __init__(self):
        self.signum: int | None = None
        self.delivered = False
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def deliver(self) -> None:
        if self.signum is not None and not self.delivered:
            self.delivered = True
            os.kill(os.getpid(), self.signum)  # the run's own handler takes it now


def _watch_driver(fd: int) -> None:
    """Stdin stays open while the driver lives: its end stops the run with a checkpoint.
    (The file descriptor, not ``sys.stdin``: a buffered reader's lock held by a thread
    would stop the interpreter's shutdown.)"""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


class _Progress:
    """The step hook: a progress message now and then, and the early signal, if any."""

    def __init__(self, channel: _Channel, early: _EarlySignals):
        self.channel, self.early, self.last = channel, early, 0.0

    def __call__(self, trainer, epoch: int, step: int) -> None:
        self.early.deliver()
        now = time.monotonic()
        steps = trainer.run.engine.steps_per_epoch
        if now - self.last >= PROGRESS_EVERY_S or step + 1 == steps:
            self.last = now
            epochs = trainer.run.epochs
            where = {"epoch": epoch + 1, "epochs": epochs, "step": step + 1, "steps": steps}
            self.channel.send(progress=where)


def main() -> int:
    early = _EarlySignals()
    channel = _Channel()
    channel.send(ready=True)  # from now on a signal is kept for the run
    # the job, written by this package's own driver (the parent process), and nothing after
    job = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_watch_driver, args=(sys.stdin.fileno(),), daemon=True).start()
    torch.set_num_threads(job["threads"])
    options = job["options"]
    try:
        result = train(
            options,
            on_step=_Progress(channel, early),
            log=lambda line: channel.send(say=line),
        )
    except AlexnetCifarError as e:
        channel.send(error=error_record(e, options.out))
        return 0
    channel.send(result=result_record(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
