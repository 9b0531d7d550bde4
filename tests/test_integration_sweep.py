"""The quickstart smoke sweep on real local Ray and a real SQLite MLflow store."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tune_prune.cli import main
from tune_prune.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, quickstart_path):
    work = tmp_path_factory.mktemp("sweep")
    import os

    old = os.getcwd()
    os.chdir(work)
    try:
        from tune_prune.sweep import run_sweep
        from tune_prune.tracking import resolve_tracking_uri

        spec = load_spec(quickstart_path, smoke_test=True)
        uri = resolve_tracking_uri(None)
        outcome = run_sweep(spec, tracking_uri=uri, smoke_test=True)
    finally:
        os.chdir(old)
    return work, spec, outcome


def test_every_trial_finished_and_the_store_is_where_expected(sweep):
    work, spec, outcome = sweep
    assert outcome.failed == []
    assert outcome.n_trials == len(spec.trials())
    assert (work / "mlflow.db").is_file()
    assert outcome.tracking_uri == f"sqlite:///{work / 'mlflow.db'}"


def test_parent_run_has_spec_and_frontier_artifacts(sweep):
    _, spec, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tune_prune.kind"] == "sweep"
    assert parent.data.tags["tune_prune.frontier_rule"] == spec.frontier_rule == "all_events"
    names = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"spec.yaml", "frontier.csv", "frontier.png", "events.csv", "pretraining.json", "report.html",
            "budget.png", "cost.png", "budget_matched.csv", "pareto.csv", "natural_budget.csv"} <= names
    assert parent.data.metrics["trials_failed"] == 0
    assert parent.data.metrics["pretrain_epochs_total"] == spec.pretrain.epochs * len(spec.seeds)
    assert parent.data.metrics["pretrain_accelerator_seconds_total"] > 0
    # the parent's sums equal the children's totals
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    total = sum(r.data.metrics.get("total_cost_epochs", 0) for r in children)
    assert parent.data.metrics["trials_cost_epochs_total"] == total > 0
    accel = sum(r.data.metrics.get("total_accelerator_seconds", 0) for r in children)
    assert parent.data.metrics["trials_accelerator_seconds_total"] == pytest.approx(accel)


def test_one_child_run_per_trial_with_params_and_per_event_metrics(sweep):
    _, spec, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    trials = {t.key: t for t in spec.trials()}
    assert sorted(r.data.tags["tune_prune.trial_key"] for r in children) == sorted(trials)
    for run in children:
        trial = trials[run.data.tags["tune_prune.trial_key"]]
        assert run.info.run_name == trial.name
        assert run.info.status == "FINISHED"
        p = run.data.params
        assert p["schedule"] == trial.schedule and float(p["target_sparsity"]) == trial.target
        assert int(p["seed"]) == trial.seed and int(p["budget_epochs"]) == spec.budget.epochs
        assert p["patience"] == str(trial.patience)
        assert json.loads(p["sparsities"]) == [round(s, 6) for s in trial.sparsities]
        history = client.get_metric_history(run.info.run_id, "sparsity")
        if trial.is_dense:
            assert [m.step for m in history] == [0]
            continue
        n = len(trial.sparsities)
        assert sorted(m.step for m in history) == list(range(1, n + 1))  # each event once
        by_step = {m.step: m.value for m in history}
        for step, scheduled in enumerate(trial.sparsities, start=1):
            assert abs(by_step[step] - scheduled) < 1e-4
        cost = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "cost_epochs")}
        assert cost[n] <= spec.budget.epochs
        assert run.data.metrics["total_cost_epochs"] == cost[n]
        wall = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "wall_seconds")}
        accel = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "accelerator_seconds")}
        assert p["device"] == "cpu" and float(p["accelerator_share"]) == spec.resources.cpu
        assert accel[n] == pytest.approx(wall[n] * spec.resources.cpu)
        epochs = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert sorted(m.step for m in epochs) == list(range(1, int(cost[n]) + 1))
        # every patience event says whether its cap cut it: cut events ran exactly their cap
        cut = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "patience_cut")}
        assert sorted(cut) == list(range(1, n + 1)) and set(cut.values()) <= {0.0, 1.0}


def test_frontier_has_all_four_strategies_and_the_dense_baseline(sweep):
    _, spec, outcome = sweep
    assert set(outcome.frontier["strategy"]) == {"one_shot", "constant", "geometric", "hybrid"}
    assert set(outcome.frontier["sparsity_level"]) == set(spec.target_sparsities)
    assert outcome.dense["seeds"] == len(spec.seeds)
    assert 0.5 < outcome.dense["test_accuracy_mean"] <= 1.0
    assert "dense baseline" in outcome.summary and "geometric" in outcome.summary


def test_frontier_command_reads_the_same_table_back(sweep, capsys):
    _, spec, outcome = sweep
    code = main(["frontier", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri])
    assert code == 0
    out = capsys.readouterr().out
    assert outcome.summary in out and "frontier rule all_events" in out
    # the authors' rule, asked for: iterative runs count only at their own targets
    from tune_prune import frontier as fr
    from tune_prune.tracking import load_records

    assert main(["frontier", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--frontier-rule", "final_only"]) == 0
    out = capsys.readouterr().out
    assert "frontier rule final_only" in out
    client = MlflowClient(outcome.tracking_uri)
    records = load_records(outcome.tracking_uri, client.get_run(outcome.parent_run_id).info.experiment_id,
                           outcome.parent_run_id)
    authors = fr.frontier(records[records["status"] == "FINISHED"], rule="final_only")
    assert fr.pivot(authors).to_string() in out
    # and the authors' equal-budget comparison, labelled as theirs
    from tune_prune.report import natural_budget_table

    assert main(["frontier", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--equal-budget", "5,20"]) == 0
    out = capsys.readouterr().out
    assert "equal budget, the authors' method" in out
    table = fr.natural_budget(records[records["status"] == "FINISHED"], [5, 20])
    assert not table.empty and natural_budget_table(table).to_string() in out
    assert main(["frontier", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--equal-budget", "0,x"]) == 2
    assert "--equal-budget" in capsys.readouterr().err


def test_frontier_command_on_unknown_experiment_exits_2(sweep, capsys):
    _, _, outcome = sweep
    assert main(["frontier", "--experiment", "nope", "--tracking-uri", outcome.tracking_uri]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def test_second_sweep_reuses_the_cached_dense_models(sweep, quickstart_path, monkeypatch):
    """A second, smaller sweep on the same dense settings trains no dense model: it loads the
    first sweep's file (untouched) and its dense baseline scores exactly what the first did."""
    import io

    import yaml

    from tune_prune.dense import paths
    from tune_prune.spec import parse_spec
    from tune_prune.sweep import run_sweep

    work, spec, outcome = sweep
    (dense_key,) = {t.dense_key for t in spec.trials()}
    weights, meta = paths(work / ".tune_prune_cache", dense_key)
    stamps = (weights.stat().st_mtime_ns, meta.stat().st_mtime_ns)

    raw = yaml.safe_load(quickstart_path.read_text())
    one = {"one_shot": {"patience": 1}}
    # its own experiment, so the tests below still find the first sweep as the newest
    raw.update(name="quickstart_cache_reuse", strategies=one)
    raw["smoke_test"].update(target_sparsities=[0.5], strategies=one)
    again = parse_spec(raw, smoke_test=True)
    assert {t.dense_key for t in again.trials()} == {dense_key} and len(again.trials()) == 2

    monkeypatch.chdir(work)
    said = io.StringIO()
    second = run_sweep(again, tracking_uri=outcome.tracking_uri, smoke_test=True, out=said)
    assert second.failed == []
    assert "(0 trained, 1 from cache)" in said.getvalue(), said.getvalue()
    assert (weights.stat().st_mtime_ns, meta.stat().st_mtime_ns) == stamps
    assert second.dense["test_accuracy_mean"] == outcome.dense["test_accuracy_mean"]


def test_recommend_json_answers_from_the_recorded_sweep(sweep, capsys):
    _, spec, outcome = sweep
    code = main(["recommend", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--sparsity", "0.9", "--budget-epochs", str(spec.budget.epochs), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["sweep_run_id"] == outcome.parent_run_id
    # every trial is capped by the budget, so all four strategies qualify at 0.9
    assert payload["status"] == "ok"
    # the winner is the frontier's best validation accuracy at 0.9 (ties: cheaper first)
    at = outcome.frontier[outcome.frontier.sparsity_level == 0.9]
    best = at.sort_values(["val_accuracy_mean", "cost_epochs_mean"], ascending=[False, True]).iloc[0]
    assert payload["winner"]["strategy"] == best.strategy
    assert payload["winner"]["test_accuracy_mean"] == pytest.approx(best.test_accuracy_mean)
    assert payload["winner"]["sparsity_mean"] >= 0.9 - 1e-4
    assert payload["comparison"]["method"] == "none"  # one seed in the smoke test: no test possible
    # the patience cuts come with the answer, per strategy, as the records say
    from tune_prune import frontier as fr
    from tune_prune.tracking import load_records

    records = load_records(outcome.tracking_uri, MlflowClient(outcome.tracking_uri).get_run(
        outcome.parent_run_id).info.experiment_id, outcome.parent_run_id)
    assert payload["patience_cut"] == fr.patience_cuts(records).to_dict(orient="records")
    assert payload["frontier_rule"] == "all_events"  # the sweep's own, read from its parent run
    assert {row["strategy"] for row in payload["patience_cut"]} == {"one_shot", "constant", "geometric", "hybrid"}


def test_recommend_beyond_the_data_names_nearest_points(sweep, capsys):
    _, spec, outcome = sweep
    code = main(["recommend", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--sparsity", "0.99", "--budget-epochs", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "no answer" in out and "nearest points" in out


def test_recommend_refuses_a_bad_sparsity(sweep, capsys):
    _, spec, outcome = sweep
    assert main(["recommend", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--sparsity", "1.5"]) == 2
    assert "--sparsity: must be in (0, 1)" in capsys.readouterr().err


def test_report_command_writes_files_and_logs_them(sweep, tmp_path, capsys):
    _, spec, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    out = tmp_path / "rep"
    assert main(["report", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri, "--out", str(out)]) == 0
    assert f"logged to sweep run {outcome.parent_run_id}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Frontier" in html
    # the command's own title (the sweep's report is titled after model and dataset)
    assert f"{spec.name}: sweep {parent.info.run_name}" in html
    assert (out / "budget.png").stat().st_size > 1000
    # what the sweep's parent run now holds is what the command wrote, byte for byte
    written = sorted(p.name for p in out.iterdir())
    assert {"report.html", "frontier.csv", "budget_matched.csv", "pareto.csv", "frontier.png", "cost.png",
            "budget.png"} <= set(written)
    logged = Path(client.download_artifacts(outcome.parent_run_id, "", str(tmp_path / "logged")))
    for name in written:
        assert (logged / name).read_bytes() == (out / name).read_bytes(), name
    # the CSVs hold the recorded sweep's frontier, not an empty table
    front = pd.read_csv(out / "frontier.csv")
    assert set(front["strategy"]) == set(outcome.frontier["strategy"])
    assert sorted(front["test_accuracy_mean"].round(6)) == sorted(outcome.frontier["test_accuracy_mean"].round(6))
