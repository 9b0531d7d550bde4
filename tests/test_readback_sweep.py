"""A real sweep whose trial fails once and is retried by Ray: the read-back has one row per event.

Local Ray started by the sweep itself (no `ray stop`): the fault is injected with
TUNE_PRUNE_CHAOS, which makes the trial raise right after its first event; Tune
retries it (max_failures: 1) and it resumes at event 2 in the same child run.
"""

import pytest
from mlflow.tracking import MlflowClient

from tune_prune import tracking as tr
from tune_prune.spec import parse_spec

pytestmark = pytest.mark.integration


def test_a_retried_trial_reads_back_each_event_once(tmp_path, monkeypatch):
    from tune_prune.sweep import run_sweep

    spec = parse_spec({
        "name": "retried",
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [32]},
        "pretrain": {"epochs": 2, "batch_size": 64},
        "finetune": {"batch_size": 128, "lr": 0.01},
        "budget": {"epochs": 4},
        "target_sparsities": [0.8],
        "seeds": [0],
        "strategies": {"geometric": {"rate0": 0.5, "patience": None, "epochs_per_event": 1},
                       "one_shot": {"patience": None, "epochs_per_event": 2}},
        "resources": {"cpu": 1},
        "max_failures": 1,
        "speed": {"enabled": False},
        "cache_dir": str(tmp_path / "cache"),
        "storage_path": str(tmp_path / "ray"),
    })
    victim = next(t for t in spec.trials() if t.schedule == "geometric")
    assert len(victim.sparsities) >= 3
    monkeypatch.setenv("TUNE_PRUNE_CHAOS", f"fail:{victim.name}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(spec, tracking_uri=uri)
    assert outcome.failed == []

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("retried").experiment_id
    runs = {r.data.tags[tr.TAG_TRIAL_KEY]: r for r in tr.child_runs(uri, exp, outcome.parent_run_id)}
    assert len(runs) == len(spec.trials())  # the retry reopened its run: no twin
    run = runs[victim.key]
    assert run.data.tags["tune_prune.restores"] == "1" and run.info.status == "FINISHED"
    n = len(victim.sparsities)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "sparsity")) == list(range(1, n + 1))

    records = tr.load_records(uri, exp, outcome.parent_run_id)
    mine = records[records["trial_key"] == victim.key]
    assert list(mine["event"]) == list(range(1, n + 1)) and set(mine["status"]) == {"FINISHED"}
    history = tr._events_from_history(client, run.info.run_id)
    assert mine["cost_epochs"].tolist() == [history[e]["cost_epochs"] for e in range(1, n + 1)]
    # the whole sweep: one row per (trial, event), as the metric histories say
    assert len(records) == sum(len(tr._events_from_history(client, r.info.run_id)) for r in runs.values())
    assert not records.duplicated(["trial_key", "event"]).any()
