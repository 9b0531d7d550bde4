"""tune-prune submit / status / logs against a real Ray head node with its Jobs API (token auth on)."""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from servers import BIN, free_port
from tune_prune.cli import main

pytestmark = pytest.mark.integration


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def head(tmp_path):
    """A one-node Ray cluster with its Jobs API, all on 127.0.0.1, that only this test stops.

    `--node-ip-address=127.0.0.1` alone is not enough: Ray 2.60 replaces a loopback address
    with the machine's and listens on every interface unless it is told that this machine
    runs no multi-node cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which a head accepts).
    `ray stop` would stop every Ray on the machine, other tests' too: this head runs with
    --block in its own session, and terminating that process stops its node.
    """
    # Ports of our own, also for what Ray fixes by default (the agent's 52365, the client
    # server's 10001): another Ray on this machine may hold those.
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    # the job's `python` must be this environment's, as it is in the cluster image
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(tmp_path / "ray-head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in (tmp_path / "ray-head.log").read_text() or not _accepts(dash):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ray-head.log").read_text()[-3000:]
            time.sleep(0.5)
        started = re.sub(r"\x1b\[[0-9;]*m", "", (tmp_path / "ray-head.log").read_text())  # without colours
        assert "Local node IP: 127.0.0.1" in started, started[-3000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        # `ray start` recorded this head as the machine's current cluster; a bare ray.init()
        # elsewhere would try to join it after it is gone
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink(missing_ok=True)


def test_submitted_smoke_sweep_runs_as_a_ray_job_and_lands_in_mlflow(head, tmp_path, quickstart_path, capsys):
    db = tmp_path / "mlflow.db"
    code = main(["submit", str(quickstart_path), "--smoke-test", "--address", head,
                 "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "runs")])
    assert code == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("tune-prune-quickstart-")

    deadline = time.time() + 300
    state = ""
    while time.time() < deadline:
        main(["status", job_id, "--address", head])
        state = capsys.readouterr().out
        if "SUCCEEDED" in state or "FAILED" in state or "STOPPED" in state:
            break
        time.sleep(2)
    assert main(["logs", job_id, "--address", head]) == 0
    log = capsys.readouterr().out
    assert "SUCCEEDED" in state, log[-3000:]
    assert "9/9 trials finished" in log

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("quickstart")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 9 and all(r.info.status == "FINISHED" for r in children)
    assert any((tmp_path / "runs").iterdir())  # Ray's results went to the storage path, not the job's dir
    assert (tmp_path / "runs" / "cache" / "dense").is_dir()


def test_submit_refuses_what_would_be_lost(quickstart_path, capsys):
    assert main(["submit", str(quickstart_path), "--address", "http://127.0.0.1:9",
                 "--tracking-uri", "sqlite:///mlflow.db", "--storage-path", "/shared/runs"]) == 2
    assert "--tracking-uri: a relative SQLite path" in capsys.readouterr().err
    assert main(["submit", str(quickstart_path), "--address", "http://127.0.0.1:9",
                 "--tracking-uri", "http://127.0.0.1:5000", "--storage-path", "runs"]) == 2
    assert "--storage-path: must be an absolute path" in capsys.readouterr().err
