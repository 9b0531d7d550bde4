"""Fault tolerance, tested by killing: SIGKILL a trial's Ray worker mid fine-tune."""

import copy
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tune_prune.spec import parse_spec
from workloads import driver, resume_here, slow_digits

pytestmark = pytest.mark.integration

SLOW = slow_digits("kill_worker", budget={"epochs": 40, "policy": "even"}, target_sparsities=[0.9],
                   max_failures=2, strategies={"geometric": {"rate0": 0.4, "patience": None, "epochs_per_event": 8}})


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process readable now."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().decode(errors="ignore").split("\0")
        except OSError:
            continue
        found[int(proc.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), args)
    return found


def _trial_workers(gcs_address: str | None = None) -> list[int]:
    """PIDs of the Ray Tune trial workers of this test's own Ray, never another test's.

    A worker is a child of its node's raylet. The raylets taken are those serving the GCS
    at gcs_address (a cluster from `ray start`), or else those this process started (a
    local Ray of a sweep run in-process).
    """
    procs = _processes()

    def mine(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = procs.get(pid, (0, []))[0]
        return False

    port = gcs_address.rsplit(":", 1)[1] if gcs_address else None
    raylets = {pid for pid, (_, args) in procs.items() if args[0].endswith("/raylet")
               and (any(a.startswith("--gcs-address=") and a.endswith(f":{port}") for a in args)
                    if port else mine(pid))}
    return [pid for pid, (parent, args) in procs.items()
            if parent in raylets and args[0].startswith("ray::ImplicitFunc")]


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


def _kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants at one moment, as when their machine dies.

    They are frozen first (SIGSTOP), so that none of them goes on writing (a trial worker
    saving one more event's state) or starts a process while the rest is being found.
    Other processes on the machine, other tests' Ray included, are left alone.
    """
    frozen: set[int] = set()
    while True:
        procs = _processes()
        tree, grew = {root}, True
        while grew:
            children = {pid for pid, (parent, _) in procs.items() if parent in tree} - tree
            tree |= children
            grew = bool(children)
        new = tree - frozen
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        frozen |= new
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


RESUME_LINE = re.compile(r"resuming: (\d+) of (\d+) trials finished, (\d+) resume(?: \(([^)]*)\))?, (\d+) start fresh")


def test_killed_driver_is_finished_by_resume_without_rerunning_finished_trials(tmp_path, capfd):
    import yaml

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
                _kill_tree(proc.pid)  # the driver and everything it started, its local Ray included
                break
    assert finished_before, "the driver finished (or never got going) before it could be killed:\n" + \
        (tmp_path / "driver.log").read_text()[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kill_driver")
    # what had finished when everything died (a trial may finish just before the kill lands)
    settled = {r.data.tags["tune_prune.trial_key"]: r.info.end_time for r in client.search_runs(
        [exp.experiment_id], "tags.`tune_prune.kind` != 'sweep'") if r.info.status == "FINISHED"}
    assert settled.items() >= finished_before.items()

    _, code, captured = resume_here(tmp_path, capfd)
    assert code == 0
    output = captured.out + captured.err
    # Ray's restore warns about every trial that had reported nothing yet: not shown to users
    assert "FileNotFoundError" not in output, output[-3000:]

    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags["tune_prune.resumes"] == "1"
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    keys = [r.data.tags["tune_prune.trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == n_trials  # one child run per trial
    # The summary line before the restart names what each trial then really did: the finished
    # ones were not rerun, each resumed one resumed after the event announced (its run's
    # resumed_after_event tag), and the rest started from the dense model (no such tag).
    (line,) = [m for m in RESUME_LINE.finditer(captured.out)]
    n_finished, total, n_resumed, detail, n_fresh = line.groups()
    assert (int(n_finished), int(total)) == (len(settled), n_trials)
    resumed_after = sorted(int(r.data.tags["tune_prune.resumed_after_event"]) for r in runs
                           if r.data.tags["tune_prune.trial_key"] not in settled
                           and "tune_prune.resumed_after_event" in r.data.tags)
    announced = sorted(int(e) for n, e in re.findall(r"(\d+) after event (\d+)", detail or "")
                       for _ in range(int(n)))
    assert announced == resumed_after and int(n_resumed) == len(resumed_after)
    assert int(n_fresh) == n_trials - len(settled) - len(resumed_after)
    # and the progress counter goes on from the finished trials instead of starting at 0
    counts = [int(c) for c in re.findall(rf"^\[(\d+)/{n_trials} trials", captured.out, re.M)]
    assert counts and counts[0] in (len(settled), len(settled) + 1) and counts[-1] == n_trials, counts
    assert counts == sorted(counts)
    for r in runs:
        assert r.info.status == "FINISHED"
        key = r.data.tags["tune_prune.trial_key"]
        if key in settled:
            assert r.info.end_time == settled[key]  # not rerun
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


@pytest.mark.slow  # 58 s on 2 cores
def test_a_trial_that_fails_after_its_last_event_is_finished_by_its_retry_without_redoing_it(tmp_path, monkeypatch):
    """The retry resumes past the last event: it logs the final model, finishes the same run,
    and reports to Tune the last event as the run recorded it."""
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import load_records

    monkeypatch.chdir(tmp_path)
    raw = dict(copy.deepcopy(FAILING), name="fails_at_its_end", max_failures=1, target_sparsities=[0.9],
               strategies={"one_shot": {"patience": 1}})
    spec = parse_spec(raw)
    (victim,) = [t for t in spec.trials() if not t.is_dense]
    monkeypatch.setenv("TUNE_PRUNE_CHAOS", f"fail:{victim.key}")  # after event 1 of 1, first attempt only
    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert outcome.failed == []
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`tune_prune.trial_key` = '{victim.key}'")
    assert run.info.status == "FINISHED" and run.data.tags["tune_prune.restores"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "sparsity")] == [1]  # not redone
    assert run.outputs and run.outputs.model_outputs
    rows = load_records(outcome.tracking_uri, exp.experiment_id, outcome.parent_run_id).query("trial_key == @victim.key")
    assert list(rows["event"]) == [1] and list(rows["status"]) == ["FINISHED"]
