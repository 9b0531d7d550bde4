"""benchmarks/scale.py runs and prints its two tables next to the goals (slow: a real sweep)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_scale_benchmark_smoke_prints_both_tables():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sqlite file | 50 |" in proc.stdout and "previous read-back" in proc.stdout
    assert "overhead / trial" in proc.stdout and "<= 0.15 s:" in proc.stdout
