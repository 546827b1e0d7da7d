"""scripts/gpu_check.py cannot rot: its dry run (every section the CPU can run, graphs
emulated) passes here, and a failing section is reported as FAIL without costing the others."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert report.count("PASS: ") == 6 and "FAIL" not in report
    assert "ALL SECTIONS PASS" in report
    assert (tmp_path / "bench8.json").is_file()


def test_a_failing_section_is_reported_and_the_next_still_runs(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    say = gpu_check.Report(tmp_path)

    def broken():
        raise RuntimeError("broken section")

    say.section("one", broken)
    say.section("two", lambda: (True, "fine"))
    text = (tmp_path / "report.md").read_text()
    assert "FAIL: RuntimeError: broken section" in text and "PASS: fine" in text
    assert say.failed == ["one"]
