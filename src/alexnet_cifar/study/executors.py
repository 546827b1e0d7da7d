"""Where a study's runs train: one after another in this process, or as Ray tasks spread over
the GPUs (or CPUs) of this machine or of a cluster.

Either way each run is ``train(options)`` in its own run folder with ``resume`` on, so a run
that stopped anywhere (a killed worker, a lost node, a stopped study) continues from its last
checkpoint and ends with the metrics of an uninterrupted run. Ray is an optional extra,
imported only here, inside the functions that use it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import errors
from ..data import load_cifar10
from ..distributed import resolve_device
from ..errors import AlexnetCifarError, ExecutorError, SettingError, TrainingInterrupted, param
from ..files import METRICS_FILE
from ..training.records import best_words
from ..training.resume import data_folder, has_checkpoint
from ..training.trainer import TrainOptions, train

__all__ = [
    "EXECUTORS",
    "Job",
    "RESULT_KEYS",
    "RAY_PORT",
    "RayExecutor",
    "Sequential",
    "StopOnTerm",
    "error_of",
    "error_record",
    "result_line",
    "result_record",
    "check_ray_address",
    "gpu_share",
    "import_ray",
]

#: The executors by the name the command line gives them.
EXECUTORS = ("sequential", "ray")
INSTALL_RAY = "pip install 'alexnet-cifar[ray]'"


@dataclass
class Job:
    """A run to train: its options, and the tag its lines start with (``[2/4] alexnet``)."""

    tag: str
    options: TrainOptions


def result_line(tag: str, result: dict, where: str = "") -> str:
    return (
        f"{tag}: {'finished on ' + where + ': ' if where else ''}{best_words(result)}, "
        f"{result['train_seconds']:.1f} s"
    )


class Sequential:
    """Each run in turn, in this process, on the data loaded once (the default)."""

    def __init__(self, on_step: Callable | None = None):
        self.on_step = on_step

    def run(self, jobs: list[Job], say: Callable[[str], None]) -> None:
        data = None
        for job in jobs:
            opts = job.options
            say(
                f"{job.tag}: {'resuming' if has_checkpoint(opts.out) else 'training'} in {opts.out}"
            )
            if data is None:
                data = load_cifar10(opts.data_dir, verify=opts.verify, progress=not opts.quiet)
            say(result_line(job.tag, train(opts, data=data, on_step=self.on_step)))


# ---------------------------------------------------------------------- Ray


def import_ray():
    """The ``ray`` module, or an error that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            f"{param('executor')} ray needs Ray, which is not installed: {INSTALL_RAY}"
        ) from None
    return ray


class _Events:
    """A Ray actor the tasks tell when they start; the driver prints what it holds."""

    def __init__(self):
        self.items: list = []

    def put(self, item) -> None:
        self.items.append(item)

    def take(self) -> list:
        items, self.items = self.items, []
        return items


def _epochs_done(options: TrainOptions) -> int:
    try:
        with open(options.out / METRICS_FILE) as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


def _where(ray, device: str) -> str:
    """This worker's machine and device, as a progress line names them."""
    try:
        dev = str(resolve_device(device))
    except AlexnetCifarError:
        dev = device
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    return f"{socket.gethostname()} {dev}" + (f" (GPU {', '.join(gpus)})" if gpus else "")


def _writable(data):
    """The data set as arrays this process may write (Ray hands out read-only views)."""
    fields = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
    copies = {
        f: np.array(getattr(data, f))
        for f in fields
        if getattr(data, f) is not None and not getattr(data, f).flags.writeable
    }
    return replace(data, **copies)


def _train_task(options, data, threads, events, tag, on_step) -> dict:
    """One run on a Ray worker; a retry after the worker died resumes from the checkpoint.
    Errors a user can fix come back as a record (the driver raises them); bugs raise."""
    import ray

    if threads is not None:
        torch.set_num_threads(threads)  # as many threads as CPUs: the same numbers every time
    where = _where(ray, options.device)
    done = _epochs_done(options)
    start = f"resuming after epoch {done}" if done else "training"
    ray.get(events.put.remote(f"{tag}: started on {where}, {start} in {options.out}"))
    try:
        result = train(options, data=_writable(data), on_step=on_step)
    except AlexnetCifarError as e:
        return {"where": where, "error": error_record(e, options.out)}
    return {"where": where, "result": result_record(result)}


#: What a driver needs of a run's result to say how it ended (``best_words``).
RESULT_KEYS = ("test_accuracy", "best_test_accuracy", "best_epoch", "train_seconds", "device")
RESULT_KEYS += ("val_split", "best_val_accuracy", "test_accuracy_at_best_val")
RESULT_KEYS += ("status", "epochs", "epochs_planned", "held_out", "final")  # stopped early
RESULT_KEYS += ("lowest_val_loss", "lowest_val_loss_epoch")


def result_record(result: dict) -> dict:
    """The part of a run's result a worker hands back to the driver."""
    return {k: result[k] for k in RESULT_KEYS if k in result}


class StopOnTerm:
    """While the driver waits, SIGTERM stops the study as Ctrl-C does (and not Ray's own
    handler, which would end the process at once)."""

    def __init__(self):
        self.signum = signal.SIGINT
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        raise KeyboardInterrupt

    def restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)


def error_record(e: AlexnetCifarError, run_dir) -> dict:
    """An error a worker hands back to the driver (plain data), which ``error_of`` raises."""
    record = {"type": type(e).__name__, "message": e.args[0] if e.args else str(e)}
    record.update(signum=getattr(e, "signum", None), run_dir=str(run_dir))
    return record


def error_of(record: dict, model: str) -> AlexnetCifarError:
    """The error a task reported, as its own class where this package has it."""
    cls = getattr(errors, record["type"], None)
    if cls is TrainingInterrupted:
        return TrainingInterrupted(
            record["message"], record["signum"] or signal.SIGINT, record["run_dir"], model
        )
    if not (isinstance(cls, type) and issubclass(cls, AlexnetCifarError)):
        cls = ExecutorError
    return cls(record["message"])


def gpu_share(value) -> float:
    """What a run may ask of the GPUs: a share of one (0 to 1) or a whole number of them."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{param('gpus_per_run')} must be a number, not {value!r}") from None
    if not (0 < f < math.inf) or (f > 1 and f != int(f)):
        raise SettingError(
            f"{param('gpus_per_run')} must be a share of one GPU (0 to 1) or a whole "
            f"number of them, not {value}"
        )
    return f


#: The port of a Ray cluster's head unless 'ray start --head --port' says otherwise.
RAY_PORT = 6379


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray address HOST:PORT (or ray://HOST:PORT) that nothing answers at fails here, in
    seconds, instead of Ray's own retries for a minute or more."""
    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingError(f"{param('address')} {address!r} should be HOST:PORT (or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(
            f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}): check "
            "that 'ray start --head' runs on that machine, that the port is the head's "
            f"({RAY_PORT} by default) and that no firewall is in the way"
        ) from None


class RayExecutor:
    """Each run a Ray task. On a cluster with GPUs a run asks for ``gpus_per_run`` of one
    (fractions let small variants share a card); on a cluster without, for that many CPUs,
    and trains with as many torch threads (at least one). A task whose worker dies is retried
    up to ``max_retries`` times, each retry resuming from the run's checkpoint.

    With no ``address``, Ray's own rule picks the cluster: ``RAY_ADDRESS``, else one started
    on this machine with ``ray start``, else a new Ray here with every CPU and GPU of it,
    shut down at the end. A Ray already initialised in this process is used as it is.
    """

    #: Seconds a stopped study gives its runs to save their checkpoints.
    STOP_WAIT_S = 120

    def __init__(
        self,
        address: str | None = None,
        gpus_per_run: float = 1.0,
        max_retries: int = 3,
        on_step: Callable | None = None,
    ):
        self.address, self.gpus_per_run = address, gpu_share(gpus_per_run)
        self.max_retries, self.on_step = max_retries, on_step
        import_ray()  # a missing Ray, or a cluster that does not answer, is said before anything
        check_ray_address(address or os.environ.get("RAY_ADDRESS"))  # starts

    def run(self, jobs: list[Job], say: Callable[[str], None]) -> None:
        if not jobs:
            return
        ray = import_ray()
        started = self._connect(ray)
        try:
            self._run(ray, jobs, say)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join or start Ray; True when this call started it (and the run shuts it down)."""
        if ray.is_initialized():
            return False
        options = {"address": self.address, "log_to_driver": False}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            options["include_dashboard"] = False  # a Ray of our own, if none runs here
        try:
            ray.init(**options, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f" at {self.address}" if self.address else ""
            raise ExecutorError(
                f"cannot start or reach Ray{where}: {str(e).splitlines()[0]}. On a cluster, "
                f"give the head's address ({param('address')} HOST:{RAY_PORT}) after 'ray start'."
            ) from None
        return True

    def _resources(self, ray, device: str) -> tuple[dict, int | None]:
        """What each task asks for, and its torch threads (None: Ray's setting)."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        f = self.gpus_per_run
        most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        if most_gpus and device != "cpu":
            if f > most_gpus:
                raise SettingError(
                    f"{param('gpus_per_run')} {f:g}: no machine of the cluster has that many "
                    f"GPUs (at most {most_gpus:g})"
                )
            return {"num_gpus": f}, None
        most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        if f > most_cpus:
            raise SettingError(
                f"{param('gpus_per_run')} {f:g}: the cluster has no GPU, so each run asks for "
                f"as many CPUs, and no machine of it has that many (at most {most_cpus:g})"
            )
        return {"num_cpus": f}, max(1, int(f))

    def _run(self, ray, jobs: list[Job], say) -> None:
        opts = jobs[0].options
        resources, threads = self._resources(ray, opts.device)
        data = load_cifar10(opts.data_dir, verify=opts.verify, progress=not opts.quiet)
        data_ref = ray.put(data)  # once into the object store; every machine gets it from there
        events = ray.remote(num_cpus=0)(_Events).remote()
        task = ray.remote(_train_task).options(
            max_retries=self.max_retries, retry_exceptions=False, **resources
        )
        refs = {}
        for job in jobs:  # the driver's data folder and command, not the worker's
            o = job.options
            opts = replace(
                o,
                data_dir=data_folder(o.data_dir),
                command=list(sys.argv) if o.command is None else o.command,
            )
            args = (opts, data_ref, threads, events, job.tag, self.on_step)
            refs[task.remote(*args)] = job
        ask = ", ".join(f"{v:g} {k.removeprefix('num_').upper()[:3]}" for k, v in resources.items())
        total = ", ".join(
            f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")
        )
        runs = f"{len(jobs)} run{'s' if len(jobs) != 1 else ''}"
        say(f"{runs} on Ray ({total}), each asking for {ask}")
        failures = self._wait(ray, refs, events, say)
        if failures:
            raise failures[0]

    def _wait(self, ray, refs: dict, events, say) -> list[AlexnetCifarError]:
        """Print each run's start and end as they come; returns the runs' errors. Ctrl-C or
        SIGTERM stops the study: every run saves a checkpoint at its next step."""
        pending, failures, done = list(refs), [], 0
        stop = StopOnTerm()
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for line in ray.get(events.take.remote()):
                    say(line)
                for ref in ready:
                    done += 1
                    error = self._finished(ray, ref, refs[ref], f"{done} of {len(refs)} done", say)
                    if error is not None:
                        failures.append(error)
        except KeyboardInterrupt:
            self._stop(ray, pending)
            raise TrainingInterrupted(
                f"{signal.Signals(stop.signum).name}: the study stopped; every unfinished run "
                "kept its last checkpoint",
                stop.signum,
                run_dir=refs[next(iter(refs))].options.out,
            ) from None
        finally:
            stop.restore()
        return failures

    def _finished(self, ray, ref, job: Job, count: str, say) -> AlexnetCifarError | None:
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError:
            raise  # a bug, with its traceback
        except ray.exceptions.RayError as e:  # its worker died every time, its node was lost
            say(f"{job.tag}: failed ({type(e).__name__}); {count}")
            return ExecutorError(
                f"the run in {job.options.out} failed on Ray, its worker lost "
                f"{self.max_retries + 1} times ({str(e).splitlines()[0]}); its last checkpoint "
                "is kept: run the study again to resume it"
            )
        if "error" in out:
            error = error_of(out["error"], job.options.model)
            say(f"{job.tag}: stopped on {out['where']} ({type(error).__name__}); {count}")
            return error
        say(f"{result_line(job.tag, out['result'], out['where'])}; {count}")
        return None

    def _stop(self, ray, pending: list) -> None:
        """Ctrl-C: each running task's trainer takes the cancellation as its own Ctrl-C and
        saves a checkpoint at its next step; queued tasks never start."""
        for ref in pending:
            ray.cancel(ref)
        try:
            ray.wait(pending, num_returns=len(pending), timeout=self.STOP_WAIT_S)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop at once
