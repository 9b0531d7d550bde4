"""Fault tolerance, tested by killing: SIGKILL a trial's Ray worker mid fine-tune."""

import copy
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tune_prune.spec import parse_spec
from workloads import driver, slow_digits

pytestmark = pytest.mark.integration

SLOW = slow_digits("kill_worker", budget={"epochs": 40, "policy": "even"}, target_sparsities=[0.9],
                   max_failures=2, strategies={"geometric": {"rate0": 0.4, "patience": None, "epochs_per_event": 8}})


def _trial_workers() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if cmd.startswith("ray::ImplicitFunc"):
            pids.append(int(proc.name))
    return pids


def _kill_after_checkpoint(storage: Path, checkpoint: str, killed: list, stop: threading.Event) -> None:
    deadline = time.time() + 240
    while not stop.is_set() and time.time() < deadline:
        hits = list(storage.glob(f"*/geometric-*/{checkpoint}"))
        if hits:
            for pid in _trial_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.05)


def test_killed_worker_resumes_from_its_last_prune_event_in_the_same_run(tmp_path, monkeypatch):
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(copy.deepcopy(SLOW))
    killed: list[int] = []
    stop = threading.Event()
    # checkpoint_000001 = the state after event 2: the kill lands during event 3
    killer = threading.Thread(target=_kill_after_checkpoint,
                              args=(tmp_path / "tune_prune_runs", "checkpoint_000001", killed, stop), daemon=True)
    killer.start()
    try:
        outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None))
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "the worker was never killed: the test did not test anything"
    assert outcome.failed == []

    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    assert sorted(r.data.params["schedule"] for r in runs) == ["dense", "geometric"]  # no twin run
    (geo,) = [r for r in runs if r.data.params["schedule"] == "geometric"]
    assert geo.info.status == "FINISHED"
    assert int(geo.data.tags["tune_prune.restores"]) >= 1
    assert int(geo.data.tags["tune_prune.resumed_after_event"]) >= 2
    n = int(geo.data.params["n_events"])
    for key in ("sparsity", "val_accuracy", "test_accuracy", "cost_epochs"):
        steps = [m.step for m in client.get_metric_history(geo.info.run_id, key)]
        assert sorted(steps) == list(range(1, n + 1)), key  # every event exactly once
    epochs = [m.step for m in client.get_metric_history(geo.info.run_id, "epoch_val_accuracy")]
    assert sorted(epochs) == list(range(1, n * 8 + 1))  # every epoch exactly once
    cost = {m.step: m.value for m in client.get_metric_history(geo.info.run_id, "cost_epochs")}
    assert cost[n] == n * 8


DRIVER = slow_digits("kill_driver", strategies={
    "geometric": {"rate0": [0.4, 0.5], "patience": None, "epochs_per_event": 2},
    "one_shot": {"patience": None, "epochs_per_event": 6}})


def test_killed_driver_is_finished_by_resume_without_rerunning_finished_trials(tmp_path):
    import subprocess
    import sys

    import yaml

    from tune_prune.cli import main

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(DRIVER))
    n_trials = len(parse_spec(copy.deepcopy(DRIVER)).trials())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished_before: dict[str, int] = {}
    deadline = time.time() + 180
    with driver(["sweep", "spec.yaml"], tmp_path) as proc:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            # Open the SQLite store only once the driver has created it: concurrent schema
            # creation races (environment.md). The context file is written after that.
            if not list((tmp_path / "tune_prune_runs").glob("*/tune_prune_sweep.json")):
                continue
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("kill_driver")
            if exp is None:
                continue
            runs = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` != 'sweep'")
            done = {r.data.tags["tune_prune.trial_key"]: r.info.end_time for r in runs if r.info.status == "FINISHED"}
            if len(done) >= 2 and len(done) < n_trials:
                finished_before = done
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
                break
    assert finished_before, "the driver finished (or never got going) before it could be killed:\n" + \
        (tmp_path / "driver.log").read_text()[-3000:]
    # the local Ray cluster the driver started is orphaned: take it down as a dead machine would be
    ray_cli = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)

    (sweep_dir,) = [p.parent for p in (tmp_path / "tune_prune_runs").glob("*/tune_prune_sweep.json")]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["resume", str(sweep_dir)]) == 0
    finally:
        os.chdir(old)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kill_driver")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags["tune_prune.resumes"] == "1"
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    keys = [r.data.tags["tune_prune.trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == n_trials  # one child run per trial
    for r in runs:
        assert r.info.status == "FINISHED"
        key = r.data.tags["tune_prune.trial_key"]
        if key in finished_before:
            assert r.info.end_time == finished_before[key]  # not rerun
        if r.data.params["schedule"] != "dense":
            n = int(r.data.params["n_events"])
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "sparsity")]
            assert sorted(steps) == list(range(1, n + 1))


def test_resume_of_a_directory_that_is_no_sweep_exits_2(tmp_path, capsys):
    from tune_prune.cli import main

    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a tune_prune sweep directory" in capsys.readouterr().err


FAILING = {
    "name": "one_fails",
    "dataset": {"name": "digits", "val_size": 0.2},
    "model": {"name": "mlp", "hidden": [64]},
    "pretrain": {"epochs": 3, "lr": 0.05, "batch_size": 64},
    "finetune": {"lr": 0.01, "batch_size": 64},
    "budget": {"epochs": 6},
    "target_sparsities": [0.8, 0.9],
    "seeds": [0],
    "strategies": {"geometric": {"rate0": 0.5, "patience": 1}, "one_shot": {"patience": 1}},
}


def test_a_trial_that_raises_is_recorded_and_the_rest_of_the_sweep_completes(tmp_path, monkeypatch, capsys):
    import yaml

    from tune_prune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(FAILING))
    spec = parse_spec(copy.deepcopy(FAILING))
    (victim,) = [t for t in spec.trials() if t.schedule == "geometric" and t.target == 0.9]
    monkeypatch.setenv("TUNE_PRUNE_CHAOS", f"fail:{victim.key}")  # workers inherit the driver's env
    code = main(["sweep", "spec.yaml"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"failed trials: {victim.name}" in captured.err
    assert f"{len(spec.trials()) - 1}/{len(spec.trials())} trials finished" in captured.out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("one_fails")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    assert parent.data.tags["tune_prune.failed_trials"] == victim.name
    assert parent.data.metrics["trials_failed"] == 1
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = {r.data.tags["tune_prune.trial_key"]: r for r in runs}
    assert len(status) == len(spec.trials())
    failed = status[victim.key]
    assert failed.info.status == "FAILED"
    assert "InjectedFault" in failed.data.tags["tune_prune.error"]
    assert [m.step for m in client.get_metric_history(failed.info.run_id, "sparsity")] == [1]  # kept what it did
    assert all(r.info.status == "FINISHED" for k, r in status.items() if k != victim.key)
