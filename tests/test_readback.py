"""Reading a sweep back: TrialTracker writes, load_records reads, on a real SQLite MLflow store.

No Ray here: the tracker's write path is driven the way trainable.py drives it (events,
a retry that reopens the run, a failure), so the read-back's invariants are checked
without starting trials: one row per event, equal to the metric histories the MLflow UI
charts, whatever the run went through.
"""

import math

import pytest
from mlflow.tracking import MlflowClient

from tune_prune import tracking as tr
from tune_prune.loop import EpochRecord, Evaluation, EventRecord, PretrainResult
from tune_prune.spec import load_spec


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite file for the module (creating one costs seconds); each test has its own sweep."""
    return tmp_path_factory.mktemp("readback") / "mlflow.db"


@pytest.fixture()
def store(db, quickstart_path):
    spec = load_spec(quickstart_path)
    uri = f"sqlite:///{db}"
    sweep = tr.SweepTracker(uri, "readback")
    parent = sweep.start_parent(spec, "readback-sweep", len(spec.trials()), smoke_test=False)
    return uri, sweep.experiment_id, parent, spec


def _event(e: int, n: int, **extra) -> EventRecord:
    return EventRecord(event=e, n_events=n, scheduled_sparsity=0.1 * e, sparsity=0.1 * e, val_metric=0.9 - 0.01 * e,
                       val_loss=0.3, test_metric=0.88 - 0.01 * e, test_loss=0.35, pruned_val_metric=0.8,
                       pruned_val_loss=0.5, event_epochs=2, best_epoch=1, budget_cap=2, cost_epochs=2 * e,
                       wall_seconds=0.25 * e, **extra)


def _log(tracker: tr.TrialTracker, events: range, n: int) -> None:
    for e in events:
        for k in (1, 2):
            tracker.log_epoch(EpochRecord(e, k, 2 * (e - 1) + k, 0.5, 0.9, 0.3))
        tracker.log_event(_event(e, n, patience_cut=float(e % 2)))


def _history_rows(client: MlflowClient, run_id: str) -> dict[int, dict[str, float]]:
    return tr._events_from_history(client, run_id)


def test_retried_trial_reads_back_one_row_per_event_equal_to_its_histories(store):
    uri, exp, parent, spec = store
    trial = next(t for t in spec.trials() if len(t.sparsities) >= 3)
    n = len(trial.sparsities)
    first = tr.TrialTracker(uri, exp, parent, trial, accelerator_share=2.0)
    assert first.finished_result() is None and first.start() == 0
    _log(first, range(1, 3), n)
    first.finish("FAILED", error="worker lost")  # as when a node dies after event 2

    retry = tr.TrialTracker(uri, exp, parent, trial, accelerator_share=2.0)
    assert retry.start() == 2  # resumes after the events already logged, same run
    assert retry.run_id == first.run_id
    _log(retry, range(3, n + 1), n)
    retry.finish()

    records = tr.load_records(uri, exp, parent)
    assert list(records["event"]) == list(range(1, n + 1))
    assert set(records["status"]) == {"FINISHED"} and set(records["trial_key"]) == {trial.key}
    client = MlflowClient(uri)
    history = _history_rows(client, first.run_id)
    assert sorted(history) == list(range(1, n + 1))
    # a classification sweep's frame carries its own metric's columns, not the LM's
    keys = [k for k in tr.EVENT_METRICS if k in records.columns]
    assert "val_accuracy" in keys and "val_perplexity" not in keys
    for _, row in records.iterrows():
        for key in keys:
            want = history[row["event"]].get(key, math.nan)
            assert row[key] == pytest.approx(want, nan_ok=True), key
    assert records["accelerator_seconds"].tolist() == pytest.approx([0.5 * e for e in range(1, n + 1)])


def test_running_and_failed_trials_read_back_what_they_logged(store):
    uri, exp, parent, spec = store
    pruned = [t for t in spec.trials() if not t.is_dense][:3]
    running, failed, fresh = (tr.TrialTracker(uri, exp, parent, t) for t in pruned)
    for t in (running, failed, fresh):
        t.start()
    _log(running, range(1, 2), 5)
    _log(failed, range(1, 3), 5)
    failed.finish("FAILED", error="boom")
    records = tr.load_records(uri, exp, parent)
    by_status = records.groupby("status")["event"].apply(list).to_dict()
    assert by_status == {"RUNNING": [1], "FAILED": [1, 2]}  # the fresh run has no event yet: no row


def test_dense_baseline_and_speed_metrics_come_back(store):
    uri, exp, parent, spec = store
    dense = next(t for t in spec.trials() if t.is_dense)
    t = tr.TrialTracker(uri, exp, parent, dense)
    t.start()
    t.log_dense(Evaluation(0.95, 0.2), Evaluation(0.94, 0.21),
                PretrainResult(epochs=3, wall_seconds=1.5, val_score=0.95, test_score=0.94, best_epoch=3))
    t.finish()
    (row,) = tr.load_records(uri, exp, parent).to_dict("records")
    assert (row["event"], row["sparsity"], row["val_accuracy"], row["test_accuracy"]) == (0, 0.0, 0.95, 0.94)
    assert math.isnan(row["latency_speedup"])


def _drop_records(client: MlflowClient, parent: str) -> None:
    for key in [k for k in client.get_run(parent).data.tags if k.startswith(tr.TAG_RECORD)]:
        client.delete_tag(parent, key)


def test_sweeps_without_records_are_read_from_the_histories(store):
    """A sweep recorded before the parent held records reads back the same rows."""
    uri, exp, parent, spec = store
    client = MlflowClient(uri)
    trials = [t for t in spec.trials() if not t.is_dense][:2]
    for trial in trials:
        t = tr.TrialTracker(uri, exp, parent, trial)
        t.start()
        _log(t, range(1, 4), 3)
        t.finish()
    new = tr.load_records(uri, exp, parent)
    _drop_records(client, parent)
    client.delete_tag(parent, tr.TAG_RECORDS_FORMAT)
    old = tr.load_records(uri, exp, parent)
    assert len(new) == 6 and old.equals(new)


def test_a_retry_rebuilds_a_missing_record_and_drops_events_its_run_lacks(store):
    uri, exp, parent, spec = store
    client = MlflowClient(uri)
    trial = next(t for t in spec.trials() if len(t.sparsities) >= 3)
    t = tr.TrialTracker(uri, exp, parent, trial)
    t.start()
    _log(t, range(1, 3), 4)
    _drop_records(client, parent)  # as if the parent had lost them
    again = tr.TrialTracker(uri, exp, parent, trial)
    assert again.start() == 2
    assert list(tr.load_records(uri, exp, parent)["event"]) == [1, 2]  # rebuilt from the histories
    # a record ahead of its run (the worker died between the two writes) is cut back to the run
    again._events[3] = dict(again._events[2])
    again._write_record("RUNNING")
    third = tr.TrialTracker(uri, exp, parent, trial)
    assert third.start() == 2
    assert list(tr.load_records(uri, exp, parent)["event"]) == [1, 2]
    _log(third, range(3, 5), 4)
    third.finish("KILLED", note="stopped early by the scheduler")
    rows = tr.load_records(uri, exp, parent)
    assert list(rows["event"]) == [1, 2, 3, 4] and set(rows["status"]) == {"KILLED"}
    assert sorted(tr._events_from_history(client, t.run_id)) == [1, 2, 3, 4]


def test_records_longer_than_one_tag_are_split_and_joined():
    events = {e: {k: 1 / (e + 7) for k in tr.EVENT_METRICS} for e in range(1, 200)}
    events[5]["patience_cut"] = float("nan")  # written as null, read back as missing
    record = {"run_id": "r", "status": "RUNNING", "trial_name": "n", "strategy": "s", "config_key": "c",
              "config": "", "target_sparsity": 0.9, "seed": 0, "events": events, "speed": {"latency_ms": 1.5}}
    tags = tr.encode_record("abc", record)
    assert int(tags[tr.TAG_RECORD + "abc"][3:]) > 1
    assert all(len(v) <= 8000 for v in tags.values())  # MLflow truncates longer tag values
    back = tr.decode_records(tags)["abc"]
    assert sorted(back["events"]) == sorted(events) and back["speed"] == {"latency_ms": 1.5}
    assert back["events"][7] == events[7] and "patience_cut" not in back["events"][5]
    tags.pop(tr.TAG_RECORD + "abc.1")
    assert tr.decode_records(tags) == {}  # not whole: left out


def test_sqlite_stores_are_opened_in_write_ahead_log_mode(store, db):
    """Readers and the writer no longer exclude each other, and commits skip the fsync."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_without_logged_models_a_trial_keeps_its_speed_and_layers_but_saves_no_model(store):
    import torch

    uri, exp, parent, spec = store
    trial = next(t for t in spec.trials() if not t.is_dense and t.seed == spec.seeds[-1])
    t = tr.TrialTracker(uri, exp, parent, trial)
    t.start()
    _log(t, range(1, len(trial.sparsities) + 1), len(trial.sparsities))
    model_id = t.log_final_model(torch.nn.Linear(2, 2), {"latency_speedup": 1.5}, {"fc": {"params": 6, "sparsity": 0.5}},
                                 log_model=False)
    t.finish()
    client = MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert model_id is None and not (run.outputs and run.outputs.model_outputs)
    assert run.data.metrics["latency_speedup"] == 1.5
    assert {a.path for a in client.list_artifacts(t.run_id)} >= {tr.LAYER_SPARSITY}
    row = tr.load_records(uri, exp, parent).query("trial_key == @trial.key").iloc[-1]
    assert row["latency_speedup"] == 1.5


def _counting_searches(tracker: tr.TrialTracker) -> list:
    """Counts the tracker's run searches (the real ones still run)."""
    calls = []
    real = tracker.client.search_runs

    def search_runs(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    tracker.client.search_runs = search_runs
    return calls


def test_a_claim_spares_the_first_attempt_its_search_and_every_retry_finds_the_run(store, tmp_path):
    uri, exp, parent, spec = store
    trial = next(t for t in spec.trials() if len(t.sparsities) >= 3)
    claim = tmp_path / "state" / f"{trial.key}.claim"
    first = tr.TrialTracker(uri, exp, parent, trial, claim=claim)
    searches = _counting_searches(first)
    assert first.finished_result() is None and first.start() == 0
    assert searches == [] and claim.is_file()  # written before the run was created
    _log(first, range(1, 3), len(trial.sparsities))
    first.finish("FAILED", error="worker lost")
    again = tr.TrialTracker(uri, exp, parent, trial, claim=claim)
    searches = _counting_searches(again)
    assert again.start() == 2 and again.run_id == first.run_id and len(searches) == 1
    # claimed but no run (the worker died between the two): the retry searches, finds none, creates one
    other = next(t for t in spec.trials() if not t.is_dense and t.key != trial.key)
    lone = tmp_path / "state" / f"{other.key}.claim"
    lone.touch()
    late = tr.TrialTracker(uri, exp, parent, other, claim=lone)
    searches = _counting_searches(late)
    assert late.start() == 0 and len(searches) == 1 and late.run_id is not None


def test_the_last_events_record_is_written_by_finish_and_a_retry_in_between_catches_up(store):
    uri, exp, parent, spec = store
    trial = next(t for t in spec.trials() if len(t.sparsities) >= 3)
    n = len(trial.sparsities)
    t = tr.TrialTracker(uri, exp, parent, trial)
    t.start()
    _log(t, range(1, n), n)
    t.log_event(_event(n, n), totals=True)
    assert list(tr.load_records(uri, exp, parent)["event"]) == list(range(1, n))  # the record waits
    # the worker dies here, its run holding the last event and the record not yet
    again = tr.TrialTracker(uri, exp, parent, trial)
    assert again.start() == n
    assert list(tr.load_records(uri, exp, parent)["event"]) == list(range(1, n + 1))
    again.finish()
    rows = tr.load_records(uri, exp, parent)
    assert list(rows["event"]) == list(range(1, n + 1)) and set(rows["status"]) == {"FINISHED"}
    assert rows.iloc[-1]["test_accuracy"] == _event(n, n).test_metric


def test_a_trial_that_fails_before_its_run_opens_still_gets_a_failed_run(store, tmp_path):
    """The trial's data and dense model are prepared before its run opens; a failure there
    (here: the dense model is not in the cache) is still recorded, with its error."""
    from dataclasses import asdict

    from tune_prune.trainable import TrialContext, train_trial

    uri, exp, parent, spec = store
    trial = next(t for t in spec.trials() if not t.is_dense)
    ctx = TrialContext(tracking_uri=uri, experiment_id=exp, parent_run_id=parent, cache_dir=str(tmp_path / "empty"),
                       cpu_per_trial=1, gpu_per_trial=0)
    with pytest.raises(RuntimeError, match="missing from"):
        train_trial({"trial": trial.to_dict(), "ctx": asdict(ctx)})
    (run,) = MlflowClient(uri).search_runs(
        [exp], f"tags.`{tr.PARENT_TAG}` = '{parent}' and tags.`{tr.TAG_TRIAL_KEY}` = '{trial.key}'")
    assert run.info.status == "FAILED" and "missing from" in run.data.tags["tune_prune.error"]
    assert run.data.params["target_sparsity"] == str(trial.target)


def test_a_run_left_running_by_a_stop_is_closed_as_killed_with_its_events(store, tmp_path):
    """ASHA stops a trial at an event and Tune ends the Tuner (and the trial's worker) before
    the worker closes its run: the sweep closes it as the worker would have, KILLED, with
    its events counted. A run whose trial Tune did not end is left alone."""
    from tune_prune.sweep import _close_cut_short
    from tune_prune.trainable import TrialContext

    uri, exp, parent, spec = store
    stopped, other = [t for t in spec.trials() if len(t.sparsities) >= 3][:2]
    for trial in (stopped, other):
        tracker = tr.TrialTracker(uri, exp, parent, trial, accelerator_share=2.0)
        tracker.start()
        _log(tracker, range(1, 3), len(trial.sparsities))  # two events, then cut short
    ctx = TrialContext(tracking_uri=uri, experiment_id=exp, parent_run_id=parent, cache_dir=str(tmp_path),
                       cpu_per_trial=2.0, gpu_per_trial=0.0)
    ctx.state_path(stopped).parent.mkdir(parents=True)
    ctx.state_path(stopped).write_bytes(b"state")

    assert _close_cut_short(ctx, [stopped]) == [stopped.name]
    runs = {r.data.tags[tr.TAG_TRIAL_KEY]: r for r in tr.child_runs(uri, exp, parent)}
    assert runs[stopped.key].info.status == "KILLED"
    assert runs[stopped.key].data.tags["tune_prune.note"] == "stopped early by the scheduler"
    assert runs[other.key].info.status == "RUNNING"
    assert not ctx.state_path(stopped).exists()
    records = tr.load_records(uri, exp, parent)
    mine = records[records["trial_key"] == stopped.key]
    assert list(mine["event"]) == [1, 2] and set(mine["status"]) == {"KILLED"}
    assert _close_cut_short(ctx, [stopped]) == []  # once
