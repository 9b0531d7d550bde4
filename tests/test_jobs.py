"""tune-prune submit / status / logs against a real Ray head node with its Jobs API (token auth on)."""

import os
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from servers import BIN, free_port
from tune_prune.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def head(tmp_path):
    import subprocess

    port, dash = free_port(), free_port()
    # the job's `python` must be this environment's, as it is in the cluster image
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    ray = str(BIN / "ray")
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=180)
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=180)


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
