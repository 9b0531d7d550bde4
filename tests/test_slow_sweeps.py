"""Heavier real runs, excluded by default: `make test-slow` (pytest -m slow)."""

import os
from pathlib import Path

import pytest

from tune_prune.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPECS = Path(__file__).resolve().parent.parent / "search_spaces"


needs_fashion = pytest.mark.needs(
    Path("/usr/share/datasets/fashion-mnist").is_dir() or bool(os.environ.get("TUNE_PRUNE_DATA")),
    reason="Fashion-MNIST not available offline (apt-get install dataset-fashion-mnist)")


def _smoke_sweep(spec_file: str, tmp_path, monkeypatch):
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    spec = load_spec(SPECS / spec_file, smoke_test=True)
    outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None), smoke_test=True)
    assert outcome.failed == []
    return outcome


@needs_fashion
@pytest.mark.parametrize("study", ["paper", "budget"])
def test_fashion_mnist_lenet_smoke_sweep(study, tmp_path, monkeypatch):
    outcome = _smoke_sweep(f"fashion_mnist_lenet_{study}.yaml", tmp_path, monkeypatch)
    assert outcome.dense["test_accuracy_mean"] > 0.6  # ten classes; LeNet reaches ~0.75 in 3 epochs on 3k
    assert set(outcome.frontier["strategy"]) == {"one_shot", "constant", "geometric", "hybrid"}


@needs_fashion
def test_fashion_mnist_structured_smoke_sweep(tmp_path, monkeypatch):
    front = _smoke_sweep("fashion_mnist_structured.yaml", tmp_path, monkeypatch).frontier
    assert set(front["strategy"]) == {"one_shot", "constant", "geometric", "hybrid"}
    assert (front["param_sparsity_mean"] > front["sparsity_level"]).all()  # channels cut params ~quadratically
    assert front["latency_speedup_mean"].notna().all()


def test_throughput_benchmark_prints_its_side_by_side_table():
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "trial_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("bare loop (mean of before/after)", "inside a tune_prune trial", "1 trial(s) packed", "2 trial(s) packed"):
        assert row in proc.stdout


@needs_fashion
def test_two_studies_benchmark_prints_both_studies(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "two_studies.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== fashion_mnist_lenet_paper (frontier rule final_only) ===" in proc.stdout
    paper, budget = proc.stdout.split("=== fashion_mnist_lenet_budget (frontier rule all_events) ===")
    assert "equal budget, the authors' method" in paper and "equal budget" not in budget
    assert "epochs spent and patience cut per strategy" in budget
