"""The quick tier's budget (tests/conftest.py) fails a quick run that costs too much CPU time and
names the tests that did; other selections are not held to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BURN = '''
import time


def test_burns_a_little_cpu():
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass


def test_costs_nothing():
    pass
'''


def test_a_quick_run_over_its_cpu_budget_fails_naming_the_test(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_burn.py").write_text(BURN)

    def run(*args, scale="0.01"):  # budgets of 1.3 and 0.08 CPU s
        env = {"ALEXNET_CIFAR_CPU_BUDGET_SCALE": scale, "PATH": "/usr/bin:/bin"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    quick = run("-m", "not slow")
    assert quick.returncode == 1, quick.stdout
    over = [line for line in quick.stdout.splitlines() if line.startswith("OVER BUDGET ")]
    assert len(over) == 1 and "test_burn.py::test_burns_a_little_cpu" in over[0], quick.stdout
    assert "2 passed" in quick.stdout
    assert run().returncode == 0  # the whole suite: no budget
    assert run("-m", "not slow", scale="100").returncode == 0  # a slower machine's scale
