"""Sixteen trials writing to the default SQLite store at once, on fractional CPU shares."""

import os

import pytest
from mlflow.tracking import MlflowClient

from tune_prune import tracking as tr
from tune_prune.spec import parse_spec

pytestmark = pytest.mark.integration

TARGETS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]
EPOCHS = 3


def _peak_overlap(runs) -> int:
    """Most runs open at one moment, from their start and end times."""
    edges = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.slow  # 16 Ray workers starting on a 2-core VM: about 4 minutes there
def test_sixteen_concurrent_trials_lose_nothing_on_sqlite(tmp_path, capfd):
    from tune_prune.sweep import run_sweep

    share = (os.cpu_count() or 1) / 16  # 16 trial slots on this machine, whatever its size
    spec = parse_spec({
        "name": "sqlite16",
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [64]},
        "pretrain": {"epochs": 1, "batch_size": 64},
        "finetune": {"batch_size": 8, "lr": 0.01},  # small batches: trials last long enough to overlap
        "budget": {"epochs": EPOCHS},
        "target_sparsities": TARGETS,
        "seeds": [0],
        "strategies": {"one_shot": {"patience": None, "epochs_per_event": EPOCHS},
                       "constant": {"step": 0.25, "patience": None, "epochs_per_event": 1}},
        "resources": {"cpu": share},
        "speed": {"enabled": False},
        "cache_dir": str(tmp_path / "cache"),
        "storage_path": str(tmp_path / "ray"),
    })
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(spec, tracking_uri=uri)
    out = capfd.readouterr()
    assert "database is locked" not in out.out + out.err
    assert "warning:" not in out.out  # 16 at once: no reason to suggest a server
    assert outcome.failed == []

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sqlite16").experiment_id
    runs = [r for r in tr.child_runs(uri, exp, outcome.parent_run_id) if r.data.tags[tr.TAG_KIND] == "trial"]
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    assert _peak_overlap(runs) >= 12  # they did write at the same time
    trials = {t.key: t for t in spec.trials()}
    records = tr.load_records(uri, exp, outcome.parent_run_id)
    for run in runs:
        trial = trials[run.data.tags[tr.TAG_TRIAL_KEY]]
        n = len(trial.sparsities)
        for key in tr.EVENT_METRICS[:6]:  # every event's metrics, each step exactly once
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, n + 1))
        epochs = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert sorted(m.step for m in epochs) == list(range(1, int(run.data.metrics["total_cost_epochs"]) + 1))
        assert int(run.data.params["prunable_params"]) > 0
        mine = records[records["run_id"] == run.info.run_id]
        assert list(mine["event"]) == list(range(1, n + 1))


def test_more_trials_at_once_than_sqlite_was_tested_for_are_told_to_use_a_server():
    import ray

    from tune_prune.sweep import SQLITE_MAX_CONCURRENT, sqlite_preflight, start_local_ray

    start_local_ray(num_cpus=2 * SQLITE_MAX_CONCURRENT)  # logical CPUs: nothing runs
    try:
        said = sqlite_preflight("sqlite:////tmp/x.db", None, 1, 0)
        assert said and "PostgreSQL" in said and f"{2 * SQLITE_MAX_CONCURRENT} trials" in said
        assert sqlite_preflight("sqlite:////tmp/x.db", None, 4, 0) is None  # 32 at once
        assert sqlite_preflight("http://127.0.0.1:5999", None, 1, 0) is None
    finally:
        ray.shutdown()
