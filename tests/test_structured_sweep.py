"""A structured sweep on real local Ray and a real SQLite MLflow store.

The models it leaves in MLflow are physically smaller, by exactly the ratios its runs logged,
and every final model carries measured timings that the report shows next to accuracy.
"""

import os

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tune_prune.models import build_model
from tune_prune.pruning.structured import prunable_count
from tune_prune.spec import parse_spec
from tune_prune.tracking import load_final_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def structured_sweep(tmp_path_factory, quickstart_path):
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    raw = yaml.safe_load(quickstart_path.read_text())
    raw.update(
        name="structured_smoke", structure="structured", criterion="hessian_diag",
        model={"name": "small_cnn", "width": 8}, target_sparsities=[0.5, 0.75], seeds=[0],
        pretrain={"epochs": 4, "lr": 0.05, "batch_size": 64}, budget={"epochs": 4},
        strategies={"one_shot": {"patience": 1}, "geometric": {"rate0": 0.5, "patience": 1}},
        speed={"batch_size": 32, "repeats": 3, "warmup": 1},
    )
    raw.pop("smoke_test")
    spec = parse_spec(raw)
    work = tmp_path_factory.mktemp("structured")
    old = os.getcwd()
    os.chdir(work)
    try:
        outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None))
    finally:
        os.chdir(old)
    return work, spec, outcome


def test_final_models_are_physically_smaller_by_the_logged_ratios(structured_sweep, tmp_path):
    _, spec, outcome = structured_sweep
    assert outcome.failed == []
    client = MlflowClient(outcome.tracking_uri)
    children = client.search_runs([client.get_run(outcome.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    dense = prunable_count(build_model("small_cnn", (1, 8, 8), 10, width=8))
    pruned = [r for r in children if r.data.params["schedule"] != "dense"]
    assert len(pruned) == 4
    for run in pruned:
        assert run.data.params["structure"] == "structured" and run.data.params["criterion"] == "hessian_diag"
        m = run.data.metrics
        assert m["sparsity"] == pytest.approx(float(run.data.params["target_sparsity"]))
        model = load_final_model(outcome.tracking_uri, run.info.run_id)  # the run's MLflow logged model
        assert prunable_count(model) == pytest.approx((1 - m["param_sparsity"]) * dense, abs=0.5)
        assert prunable_count(model) < dense / 2
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        for key in ("latency_ms", "dense_latency_ms", "latency_speedup", "throughput_speedup"):
            assert m[key] > 0, key


def test_report_shows_measured_speed_next_to_accuracy(structured_sweep):
    _, _, outcome = structured_sweep
    assert "measured on the models (speed-up = dense time" in outcome.summary
    assert {"param_sparsity_mean", "mac_sparsity_mean", "latency_speedup_mean"} <= set(outcome.frontier.columns)
    aimed = outcome.frontier.dropna(subset=["latency_speedup_mean"])
    assert len(aimed) >= 2 and (aimed["param_sparsity_mean"] > aimed["sparsity_level"]).all()
