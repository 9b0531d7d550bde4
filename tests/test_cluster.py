"""A sweep across two real Ray nodes, logging to a real MLflow server on PostgreSQL,
with the tracking server stopped and restarted mid-sweep. Everything on 127.0.0.1."""

import copy
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from servers import MlflowServer, postgres, ray_two_nodes
from tune_prune.spec import parse_spec
from workloads import driver, slow_digits

pytestmark = pytest.mark.integration

SPEC = slow_digits("two_nodes", budget={"epochs": 10, "policy": "even"}, max_failures=2)


def _outage(server: MlflowServer, seconds: float, happened: list, stop: threading.Event) -> None:
    """Once trials are logging, take the tracking server down for a while, then bring it back."""
    client = MlflowClient(server.uri)
    deadline = time.time() + 180
    while not stop.is_set() and time.time() < deadline:
        exp = client.get_experiment_by_name(SPEC["name"])
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'trial'")
            if any(r.data.metrics.get("sparsity") for r in runs):
                server.stop()
                happened.append(time.time())
                time.sleep(seconds)
                server.start()
                happened.append(time.time())
                return
        time.sleep(0.3)


def test_two_nodes_postgres_server_and_an_outage_lose_nothing(tmp_path, monkeypatch, capsys):
    from tune_prune.sweep import run_sweep

    with postgres() as (backend, password), ray_two_nodes(tmp_path) as address:
        server = MlflowServer(backend, tmp_path / "artifacts", tmp_path / "mlflow-server.log")
        server.start()
        try:
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("RAY_AUTH_MODE", "token")
            spec = parse_spec(copy.deepcopy(SPEC))
            happened: list[float] = []
            stop = threading.Event()
            chaos = threading.Thread(target=_outage, args=(server, 8.0, happened, stop), daemon=True)
            chaos.start()
            try:
                outcome = run_sweep(spec, tracking_uri=server.uri, address=address)
            finally:
                stop.set()
                chaos.join(timeout=120)
            assert len(happened) == 2, "the tracking server was never taken down: nothing was tested"
            assert outcome.failed == []

            client = MlflowClient(server.uri)
            exp = client.get_experiment_by_name(spec.name)
            runs = client.search_runs([exp.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
            trials = {t.key: t for t in spec.trials()}
            keys = [r.data.tags["tune_prune.trial_key"] for r in runs]
            assert sorted(keys) == sorted(trials)  # every trial once, no duplicate runs
            assert len({r.data.tags["tune_prune.node_id"] for r in runs}) == 2  # both nodes worked
            for r in runs:
                assert r.info.status == "FINISHED"
                if r.data.params["schedule"] == "dense":
                    continue
                n = int(r.data.params["n_events"])
                for key in ("sparsity", "val_accuracy", "test_accuracy", "cost_epochs", "accelerator_seconds"):
                    steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                    assert sorted(steps) == list(range(1, n + 1)), (r.info.run_name, key)
                epochs = [m.step for m in client.get_metric_history(r.info.run_id, "epoch_val_accuracy")]
                assert sorted(epochs) == list(range(1, 2 * n + 1))
            # artifacts went through the server into its store
            names = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
            assert {"frontier.csv", "report.html", "spec.yaml"} <= names
            assert any((tmp_path / "artifacts").rglob("report.html"))

            # no secret reaches params, tags, logs, Ray's state, caches or artifacts
            for r in runs + [client.get_run(outcome.parent_run_id)]:
                for value in list(r.data.params.values()) + list(r.data.tags.values()):
                    assert password not in value
            assert password not in capsys.readouterr().out
            for root in ("tune_prune_runs", ".tune_prune_cache", "artifacts"):
                for f in (tmp_path / root).rglob("*"):
                    if f.is_file() and f.stat().st_size < 5_000_000:
                        assert password.encode() not in f.read_bytes(), f
        finally:
            server.stop()


RESUME = {**SPEC, "name": "two_nodes_resume", "target_sparsities": [0.7, 0.8, 0.9],
          "strategies": {"geometric": {"rate0": [0.4, 0.5], "patience": None, "epochs_per_event": 2}}}


# ~3 minutes on 2 cores (two nodes, a PostgreSQL-backed server, two kills and a resume): the
# default run keeps the two-node sweep with a server outage above, and the single-node kills
# of a worker and of the driver (test_fault_tolerance.py); this one runs with -m slow
@pytest.mark.slow
def test_worker_and_driver_killed_on_two_nodes_then_resumed(tmp_path, monkeypatch):
    import os
    import signal
    import yaml

    from test_fault_tolerance import _trial_workers
    from tune_prune.cli import main

    with postgres() as (backend, _), ray_two_nodes(tmp_path) as address:
        server = MlflowServer(backend, tmp_path / "artifacts", tmp_path / "mlflow-server.log")
        server.start()
        try:
            (tmp_path / "spec.yaml").write_text(yaml.safe_dump(RESUME))
            env = {**os.environ, "RAY_AUTH_MODE": "token"}
            client = MlflowClient(server.uri)
            worker_killed, finished_before = False, {}
            deadline = time.time() + 240
            args = ["sweep", "spec.yaml", "--address", address, "--tracking-uri", server.uri]
            with driver(args, tmp_path, env) as proc:
                while time.time() < deadline and proc.poll() is None:
                    time.sleep(0.3)
                    exp = client.get_experiment_by_name(RESUME["name"])
                    if exp is None:
                        continue
                    runs = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'trial'")
                    if not worker_killed and any(r.data.metrics.get("sparsity") for r in runs):
                        for pid in _trial_workers(address):  # a trial worker dies mid fine-tune
                            os.kill(pid, signal.SIGKILL)
                        worker_killed = True
                        continue
                    done = {r.data.tags["tune_prune.trial_key"]: r.info.end_time
                            for r in runs if r.info.status == "FINISHED"}
                    if worker_killed and len(done) >= 2:
                        finished_before = done
                        os.killpg(proc.pid, signal.SIGKILL)  # then the driver
                        break
            assert worker_killed and finished_before, (tmp_path / "driver.log").read_text()[-3000:]

            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("RAY_AUTH_MODE", "token")
            (sweep_dir,) = [p.parent for p in (tmp_path / "tune_prune_runs").glob("*/tune_prune_sweep.json")]
            assert main(["resume", str(sweep_dir), "--address", address]) == 0

            exp = client.get_experiment_by_name(RESUME["name"])
            (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
            assert parent.info.status == "FINISHED"
            runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            spec = parse_spec(copy.deepcopy(RESUME))
            assert sorted(r.data.tags["tune_prune.trial_key"] for r in runs) == sorted(t.key for t in spec.trials())
            for r in runs:
                assert r.info.status == "FINISHED"
                key = r.data.tags["tune_prune.trial_key"]
                if key in finished_before:
                    assert r.info.end_time == finished_before[key]  # finished trials were not rerun
                if r.data.params["schedule"] == "dense":
                    continue
                n = int(r.data.params["n_events"])
                steps = [m.step for m in client.get_metric_history(r.info.run_id, "sparsity")]
                assert sorted(steps) == list(range(1, n + 1)), r.info.run_name
                epochs = [m.step for m in client.get_metric_history(r.info.run_id, "epoch_val_accuracy")]
                assert sorted(epochs) == list(range(1, 2 * n + 1)), r.info.run_name
        finally:
            server.stop()
