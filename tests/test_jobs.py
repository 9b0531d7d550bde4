"""tune-prune submit / status / logs against a real Ray head node with its Jobs API (token auth on)."""

import time

import pytest
from mlflow.tracking import MlflowClient

from tune_prune.cli import main
from workloads import loopback_head

pytestmark = pytest.mark.integration


@pytest.fixture
def head(tmp_path):
    """A one-node Ray cluster on 127.0.0.1 with its Jobs API; yields the dashboard URL."""
    with loopback_head(tmp_path, num_cpus=2) as (_, dashboard):
        yield dashboard


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
