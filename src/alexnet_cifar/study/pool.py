"""Several runs of a study at once on this machine, each in a process of its own.

``LocalPool(jobs)`` trains up to ``jobs`` runs side by side, each in a worker process
(:mod:`.worker`) with ``cores // jobs`` torch threads (at least one), set before anything
runs. Where one run gains little from a second thread, runs side by side finish a study
sooner. On the CPUs measured so far (docs/performance.md) one run already gains 1.8-1.9x
from a second thread, and two runs side by side on 2 cores took longer than one after
another, alike or not.
``jobs="auto"`` therefore gives each run at least :data:`AUTO_THREADS_PER_RUN` threads:
one process on 2 to 7 cores (the same as ``jobs=1``), more on larger machines, never more
than the runs still to train, and one process on CUDA (where the runs would share one card).

Every run is ``train(options)`` in its own folder with ``resume`` on, exactly as one after
another (:class:`~.executors.Sequential`), so a run ends with the same metrics at the same
thread count. Ctrl-C (or SIGTERM) reaches this process alone (the workers have process groups
of their own); it hands each running worker one SIGINT, each run saves its checkpoint at its
next step, and the study stops; the same command continues every run. A second Ctrl-C stops
them at once.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..distributed import resolve_device
from ..errors import AlexnetCifarError, ExecutorError, SettingError, TrainingInterrupted, param
from ..training.resume import data_folder, has_checkpoint
from .executors import Job, Sequential, error_of, result_line

__all__ = ["AUTO_THREADS_PER_RUN", "LocalPool", "available_cores", "check_jobs", "plan_processes"]

#: The fewest torch threads ``jobs="auto"`` gives a run: a run gains from every thread up to
#: two on the CPUs measured (1.8-1.9x), so ``auto`` splits the cores between runs only where
#: each still gets several.
AUTO_THREADS_PER_RUN = 4

#: Where this package's code lies, for the workers to import the same.
_CODE_ROOT = Path(__file__).resolve().parents[2]


def available_cores() -> int:
    """The CPUs this process may run on (its affinity where the system says, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_jobs(jobs) -> int | str:
    """``auto`` or a whole number of processes, at least 1."""
    if jobs == "auto":
        return jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SettingError(
            f"{param('jobs')} must be auto or a whole number, at least 1, not {jobs!r}"
        )
    return jobs


def plan_processes(jobs, runs: int, cores: int, device_type: str = "cpu") -> tuple[int, int]:
    """(processes, torch threads each) for ``runs`` runs to train with ``jobs`` (a number or
    ``auto``) on ``cores`` cores: never more processes than runs, each process
    ``cores // processes`` threads, at least one. ``auto``: one process for every
    ``AUTO_THREADS_PER_RUN`` cores (at least one); one on CUDA."""
    jobs = check_jobs(jobs)
    if jobs == "auto":
        jobs = 1 if device_type == "cuda" else max(1, cores // AUTO_THREADS_PER_RUN)
    processes = max(1, min(jobs, runs))
    return processes, max(1, cores // processes)


@dataclass
class _Worker:
    """A running worker: its job, process, slot (its bar's line) and what it said."""

    job: Job
    proc: subprocess.Popen
    slot: int
    ready: bool = False
    signalled: bool = False
    result: dict | None = None
    error: dict | None = None
    readers: list = field(default_factory=list)


class LocalPool:
    """Up to ``jobs`` runs at once on this machine, each in its own process (see the module's
    text); with one process to start, the runs train one after another in this process."""

    #: Seconds a stopped study gives its runs to save their checkpoints.
    STOP_WAIT_S = 300

    def __init__(self, jobs=1, cores: int | None = None):
        self.jobs = check_jobs(jobs)
        self.cores = cores or available_cores()

    def plan(self, jobs: list[Job]) -> tuple[int, int]:
        """(processes, threads each) for these runs."""
        device = resolve_device(jobs[0].options.device).type if jobs else "cpu"
        return plan_processes(self.jobs, len(jobs), self.cores, device)

    def run(self, jobs: list[Job], say: Callable[[str], None]) -> None:
        if not jobs:
            return
        processes, threads = self.plan(jobs)
        if processes == 1:
            if self.jobs == "auto":
                say(
                    f"{len(jobs)} run{'s' if len(jobs) != 1 else ''}, one at a time in this "
                    f"process on all {self.cores} cores (auto gives each run at least "
                    f"{AUTO_THREADS_PER_RUN} threads)"
                )
            Sequential().run(jobs, say)
            return
        say(
            f"{len(jobs)} runs, {processes} at a time, each in a process of its own with "
            f"{threads} torch thread{'s' if threads != 1 else ''} ({self.cores} cores)"
        )
        _Driver(jobs, processes, threads, say).run()


class _Driver:
    """The loop that starts workers, shows what they say and stops them on a signal."""

    def __init__(self, jobs: list[Job], processes: int, threads: int, say):
        self.waiting, self.processes, self.threads = list(jobs), processes, threads
        self.total, self.say = len(jobs), say
        # SimpleQueue: its put may interrupt a get in the same thread, as a signal does
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.running: dict[int, _Worker] = {}
        self.failures: list[AlexnetCifarError] = []
        self.done = 0
        self.stop_signal: int | None = None
        self.deadline: float | None = None  # set by a stop: when the study stops waiting
        self.first_dir = jobs[0].options.out  # what the command that continues names
        quiet = all(j.options.quiet for j in jobs)
        show = not quiet and all(j.options.progress is not False for j in jobs)
        self.bars = _Bars(processes, enabled=show and sys.stderr.isatty())

    def run(self) -> None:
        signals = _SignalEvents(self.events)
        try:
            self._loop()
        finally:
            signals.restore()
            self.bars.close()
            self._kill_leftovers()
        if self.stop_signal is not None:
            raise TrainingInterrupted(
                f"{signal.Signals(self.stop_signal).name}: the study stopped; every unfinished "
                "run kept its last checkpoint",
                self.stop_signal,
                run_dir=self.first_dir,
            )
        if self.failures:
            raise self.failures[0]

    def _loop(self) -> None:
        """Start workers while there are runs to start, then handle what comes next; a
        signal is one more event, so it never lands in the middle of starting a worker."""
        while self.waiting or self.running:
            while self.waiting and len(self.running) < self.processes:
                self._start(self.waiting.pop(0))
            wait = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                return  # stopped, and the runs still going had their time to save
            if event[1] == "signal":
                if self._stop(event[2]):
                    return
            else:
                self._handle(event)

    def _stop(self, signum: int) -> bool:
        """The first signal: each running worker gets one (a worker not yet ready gets it
        when it is), no run starts, and the study waits up to ``STOP_WAIT_S`` for their
        checkpoints. The second: each gets another and the study leaves at once (True)."""
        if self.stop_signal is None:
            self.stop_signal = signum
            self.waiting.clear()
            self.deadline = time.monotonic() + LocalPool.STOP_WAIT_S
            for w in self.running.values():
                self._signal(w)
            return False
        for w in self.running.values():
            w.signalled = False
            self._signal(w)  # the second signal: stopped at once
        return True

    def _signal(self, w: _Worker) -> None:
        if w.ready and not w.signalled and w.proc.poll() is None:
            w.signalled = True
            try:
                w.proc.send_signal(self.stop_signal or signal.SIGINT)
            except OSError:
                pass

    # ------------------------------------------------------------------ workers
    def _start(self, job: Job) -> None:
        o = job.options
        # the driver's data folder and command, as config.json records them
        options = replace(
            o,
            data_dir=data_folder(o.data_dir),
            command=list(sys.argv) if o.command is None else o.command,
            progress=False,
        )
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_CODE_ROOT), os.environ.get("PYTHONPATH")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "alexnet_cifar.study.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C on the terminal reaches the driver alone
        )
        slot = min(set(range(self.processes)) - {w.slot for w in self.running.values()})
        w = _Worker(job, proc, slot)
        self.running[proc.pid] = w
        proc.stdin.write(pickle.dumps({"options": options, "threads": self.threads}))
        proc.stdin.flush()  # stdin stays open: its end tells the worker the driver is gone
        start = "resuming" if has_checkpoint(o.out) else "training"
        self._say(f"{job.tag}: {start} in {o.out} (process {proc.pid})")
        err = threading.Thread(target=self._read_err, args=(w,), daemon=True)
        out = threading.Thread(target=self._read_out, args=(w, err), daemon=True)
        err.start()
        out.start()

    def _read_err(self, w: _Worker) -> None:
        for raw in w.proc.stderr:
            self.events.put((w, "err", raw.decode("utf-8", "replace").rstrip("\n")))

    def _read_out(self, w: _Worker, err: threading.Thread) -> None:
        for raw in w.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                message = {"say": raw.decode("utf-8", "replace").rstrip("\n")}
            self.events.put((w, "out", message))
        err.join()
        w.proc.wait()
        self.events.put((w, "exit", w.proc.returncode))

    def _handle(self, event) -> None:
        w, kind, what = event
        if kind == "err":
            self._say(f"{w.job.tag}: {what}", err=True)
        elif kind == "exit":
            self._ended(w, what)
        elif "progress" in what:
            self.bars.show(w.slot, w.job.tag, what["progress"])
        elif "say" in what:
            self._say(f"{w.job.tag}: {what['say']}")
        elif "ready" in what:
            w.ready = True
            if self.stop_signal is not None:
                self._signal(w)
        elif "result" in what:
            w.result = what["result"]
        elif "error" in what:
            w.error = what["error"]

    def _ended(self, w: _Worker, code: int) -> None:
        del self.running[w.proc.pid]
        self.bars.clear(w.slot)
        try:
            w.proc.stdin.close()
        except OSError:
            pass
        self.done += 1
        count = f"{self.done} of {self.total} done"
        if w.result is not None:
            self._say(f"{result_line(w.job.tag, w.result)}; {count}")
            return
        if w.error is not None:
            error = error_of(w.error, w.job.options.model)
            why = str(error).splitlines()[0] if isinstance(error, TrainingInterrupted) else ""
            self._say(f"{w.job.tag}: stopped ({why or type(error).__name__}); {count}")
        else:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self._say(f"{w.job.tag}: failed ({how}); {count}")
            error = ExecutorError(
                f"the run in {w.job.options.out} ended without a result ({how}; its lines "
                "above say why); its last checkpoint is kept: run the study again to resume it"
            )
        if not isinstance(error, TrainingInterrupted) or self.stop_signal is None:
            self.failures.append(error)

    def _say(self, line: str, err: bool = False) -> None:
        if err:
            self.bars.write(lambda: print(line, file=sys.stderr, flush=True))
        else:
            self.bars.write(lambda: self.say(line))

    def _kill_leftovers(self) -> None:
        """Workers still running when the driver leaves (a second Ctrl-C, a bug): each has
        had its signal; the end of its stdin stops it with a checkpoint."""
        for w in self.running.values():
            try:
                w.proc.stdin.close()
            except OSError:
                pass


class _SignalEvents:
    """While the driver runs, SIGINT and SIGTERM are events on its queue, handled in turn
    (not an exception that could come between starting a worker and listening to it)."""

    def __init__(self, events: queue.SimpleQueue):
        self._events = events
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self._events.put((None, "signal", signum))

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class _Bars:
    """One progress bar per running worker on a terminal (tqdm, one line each); lines said
    meanwhile are printed above them. Disabled: nothing is drawn."""

    def __init__(self, slots: int, enabled: bool):
        self.enabled = enabled
        self.bars: dict[int, object] = {}
        self.slots = slots

    def show(self, slot: int, tag: str, p: dict) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(slot)
        desc = f"{tag} epoch {p['epoch']}/{p['epochs']}"
        if bar is None:
            bar = self.bars[slot] = tqdm(
                total=p["steps"],
                position=slot,
                desc=desc,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                "[{elapsed}]",  # no rate: the bar hears of the steps only now and then
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        if bar.desc != desc or bar.total != p["steps"]:
            bar.reset(total=p["steps"])
            bar.set_description(desc, refresh=False)
        bar.n = p["step"]
        bar.refresh()

    def clear(self, slot: int) -> None:
        bar = self.bars.pop(slot, None)
        if bar is not None:
            bar.close()

    def write(self, emit: Callable[[], None]) -> None:
        if not self.bars:
            emit()
            return
        from tqdm.auto import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            emit()

    def close(self) -> None:
        for slot in list(self.bars):
            self.clear(slot)
