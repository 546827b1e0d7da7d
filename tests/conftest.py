"""Shared fixtures (plain helpers are in helpers.py), and the quick tier's time budget. Tests
that need the real CIFAR-10 read it from $CIFAR10_DIR.

In CI (CI=true) a missing data set fails those tests loudly; on a developer's machine without
the data they are skipped with the reason.

The quick tier (``-m "not slow"``) must stay quick: when it is selected, each test's CPU time
(its fixtures, every thread of this process and the subprocesses it waited for) and the whole
run's are measured, and a run over budget fails, naming the tests that cost most. CPU time, not
wall time: the machines that run the suite are shared, and waiting for a busy core costs no
CPU. ``ALEXNET_CIFAR_CPU_BUDGET_SCALE`` scales both budgets for a slower CPU than the one they
were set on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: CPU seconds the whole quick tier may take, and one quick test with its fixtures. Measured
#: on 2 cores (README, Development): set with a margin over that, far below the slow tier's.
QUICK_TIER_CPU_BUDGET = 130.0
QUICK_TEST_CPU_BUDGET = 8.0
_costs: dict[str, float] = {}
_start: list[float] = []


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _quick_tier(config) -> bool:
    return " ".join((config.getoption("markexpr") or "").split()) == "not slow"


def _scale() -> float:
    return float(os.environ.get("ALEXNET_CIFAR_CPU_BUDGET_SCALE") or 1.0)


def pytest_sessionstart(session):
    _start.append(_cpu_seconds())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = _cpu_seconds()
    yield
    _costs[item.nodeid] = _cpu_seconds() - start


def _over_budget(config) -> tuple[float, list[tuple[str, float]]]:
    """The quick tier's CPU seconds so far, and the tests over their own budget."""
    total = _cpu_seconds() - _start[0] if _start else 0.0
    over = [(n, c) for n, c in _costs.items() if c > QUICK_TEST_CPU_BUDGET * _scale()]
    return total, sorted(over, key=lambda nc: -nc[1])


def pytest_sessionfinish(session, exitstatus):
    if _quick_tier(session.config) and exitstatus == 0:
        total, over = _over_budget(session.config)
        if over or total > QUICK_TIER_CPU_BUDGET * _scale():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _quick_tier(config) or not _costs:
        return
    total, over = _over_budget(config)
    tr, scale = terminalreporter, _scale()
    tr.section("quick tier: CPU time")
    tr.write_line(
        f"{total:.0f} CPU s in all (budget {QUICK_TIER_CPU_BUDGET * scale:.0f}); "
        f"{len(_costs)} tests, each at most {QUICK_TEST_CPU_BUDGET * scale:g} CPU s"
    )
    for nodeid, cost in over:
        tr.write_line(f"OVER BUDGET {cost:6.1f} CPU s  {nodeid}: mark it slow, or make it quick")
    if total > QUICK_TIER_CPU_BUDGET * scale:
        tr.write_line("OVER BUDGET: the quick tier as a whole; the costliest tests:")
        for nodeid, cost in sorted(_costs.items(), key=lambda nc: -nc[1])[:10]:
            tr.write_line(f"  {cost:6.1f} CPU s  {nodeid}")


def _real_dir() -> Path | None:
    env = os.environ.get("CIFAR10_DIR")
    if not env:
        return None
    p = Path(env).expanduser().resolve()
    if (p / "cifar-10-batches-bin" / "data_batch_1.bin").is_file() or (
        p / "cifar-10-batches-py" / "data_batch_1"
    ).is_file():
        return p
    return None


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    p = _real_dir()
    if p is None:
        msg = (
            "the real CIFAR-10 is needed: set CIFAR10_DIR to the folder holding "
            f"cifar-10-batches-bin (CIFAR10_DIR={os.environ.get('CIFAR10_DIR')!r})"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def cifar10(cifar10_dir):
    from alexnet_cifar import load_cifar10

    return load_cifar10(cifar10_dir, verify=True)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    # Keep any cache a test might touch inside its own temp folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def reference_run(cifar10, tmp_path_factory):
    from alexnet_cifar.training.trainer import train

    from .helpers import train_options

    out = tmp_path_factory.mktemp("ref") / "run"
    train(train_options(out), data=cifar10)
    return out


@pytest.fixture
def interrupted_run(cifar10, tmp_path):
    """A run stopped in epoch 2: checkpoint.pt mid-epoch, checkpoint.prev.pt at epoch 1's end."""
    from alexnet_cifar.training.checkpoint import read_state
    from alexnet_cifar.training.trainer import TrainingInterrupted, train

    from .helpers import interrupt_at, train_options

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out), data=cifar10, on_step=interrupt_at(1, 2))
    assert read_state(out / "checkpoint.pt")["step"] == 3
    assert read_state(out / "checkpoint.prev.pt")["epoch"] == 1
    return out


@pytest.fixture(scope="module")
def tiny_model():
    """A confident model of the TINY construction, for tests of the commands that use one."""
    from .helpers import TINY, confident_model

    return confident_model(TINY, seed=11)


@pytest.fixture
def tiny_run(tmp_path, tiny_model):
    """A run folder holding tiny_model, as far as the commands that use a model look."""
    from .helpers import make_run

    return make_run(tmp_path / "run", tiny_model)


def pytest_collection_modifyitems(items):
    """Every test that opens a page in headless Chromium (the ``chromium`` fixture) carries
    the marker ``chromium``: ``make test`` counts them when the browser is missing."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chromium)
