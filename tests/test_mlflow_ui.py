"""What a user sees of a sweep in MLflow: the records behind the UI (real SQLite store), and
the UI itself (`mlflow ui` on a real quickstart sweep, rendered by headless Chromium).

Set TUNE_PRUNE_SCREENSHOTS=DIR to keep the browser tests' screenshots; otherwise they go to
pytest's temporary directory. The README's (docs/ui/) come from the whole quickstart:
TUNE_PRUNE_UI_FULL_QUICKSTART=1 runs it instead of its smoke test (minutes instead of seconds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tune_prune import report
from tune_prune import tracking as tr
from tune_prune.spec import load_spec


# ----------------------------------------------------------------- records, no Ray

def _run(strategy, key, seed, events, target=0.9, status="FINISHED"):
    """events: (sparsity, val, test, cost_epochs)."""
    return [dict(status=status, strategy=strategy, trial_key=f"{key}-{seed}", trial_name=f"{key}-{seed}",
                 config_key=key, config=key, target_sparsity=target, seed=seed, event=i + (strategy != "dense"),
                 sparsity=s, val_accuracy=v, test_accuracy=t, cost_epochs=c, accelerator_seconds=c * 2.0)
            for i, (s, v, t, c) in enumerate(events)]


def _records() -> pd.DataFrame:
    rows = []
    for seed in (0, 1, 2):
        j = 0.01 * seed
        rows += _run("dense", "dense", seed, [(0.0, 0.97, 0.96 + j / 10, 0)], target=0.0)
        rows += _run("one_shot", "os", seed, [(0.9, 0.80 + j, 0.79 + j, 10)])
        rows += _run("geometric", "geo", seed, [(0.5, 0.90, 0.9, 5), (0.9, 0.86 + j, 0.84 + j, 30)])
    return pd.DataFrame(rows)


def test_note_holds_the_recommendation_frontier_dense_baseline_budget_and_plot():
    note = report.markdown_note(_records(), "RUN123", [0.5, 0.9], params={"budget_epochs": "30"},
                                metrics={"pretrain_epochs_total": 120.0, "sweep_wall_seconds": 61.0,
                                         "trials_failed": 0.0})
    rec_at, front_at, dense_at = (note.index(h) for h in ("Recommendation per target sparsity", "#### Frontier",
                                                          "Dense baseline"))
    assert rec_at < front_at  # the answer first: MLflow folds the end of a long description
    # recommendation row at 0.9: geometric beats one_shot on validation, paired over 3 seeds
    row = next(line for line in note.splitlines() if line.startswith("| 0.9 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "geometric" and cells[3] == "one_shot" and cells[4] == "+5.00" and cells[6] in ("yes", "no")
    assert "| distinguishable |" in note
    # the frontier table has a column per strategy and a row per level
    table = note[front_at:].split("\n\n")[1].splitlines()
    assert table[0].split("|")[1:-1] == [" sparsity ", " geometric ", " one_shot "]
    assert len(table) == 2 + 2
    assert note[dense_at:].startswith("Dense baseline:** 96.10 ± 0.10 % test accuracy over 3 seed(s).")
    assert "budget per trial: 30 fine-tuning epochs" in note
    assert "fine-tuning spent: 120 epochs over 6 pruned trials (most in one trial: 30)" in note
    assert "![frontier](get-artifact?path=frontier.png&run_uuid=RUN123)" in note
    assert len(note) < tr.MAX_NOTE_CHARS


def test_recommended_models_are_those_of_winning_runs_aimed_at_the_level():
    # at 0.5 geometric wins through runs aimed at 0.9: their final models are not the 0.5 models
    assert report.recommended_trials(_records(), [0.5, 0.9], "all_events") == ["geo-0", "geo-1", "geo-2"]


def test_recommendations_computed_once_give_the_note_table_and_models_computing_them_would(tmp_path):
    records = _records()
    finished = records[records["status"] == "FINISHED"]
    by_level = report.recommendations(finished, [0.5, 0.9], "all_events")
    assert by_level[0.9].winner.strategy == "geometric"
    assert report.markdown_note(records, "R", [0.5, 0.9], by_level=by_level) == report.markdown_note(records, "R", [0.5, 0.9])
    assert report.recommended_trials(finished, [0.5, 0.9], "all_events", by_level) == ["geo-0", "geo-1", "geo-2"]
    # a level it lacks is computed on the spot
    partial = {0.9: by_level[0.9]}
    assert report.recommendation_table(finished, [0.5, 0.9], "all_events", by_level=partial).equals(
        report.recommendation_table(finished, [0.5, 0.9], "all_events"))


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, tr.SweepTracker(uri, "ui-test")


def test_a_note_longer_than_mlflow_keeps_is_cut_at_a_line_with_a_pointer(store):
    uri, tracker = store
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml", smoke_test=True)
    run_id = tracker.start_parent(spec, "s", 1, True)
    tracker.set_description("\n".join(f"| row {i} | {'x' * 50} |" for i in range(400)))
    kept = MlflowClient(uri).get_run(run_id).data.tags[tr.NOTE_TAG]
    assert len(kept) <= tr.MAX_NOTE_CHARS and kept.endswith("see `report.html` in the artifacts)*\n")
    assert all(line.endswith("|") for line in kept.split("\n\n")[0].splitlines())


def test_frontier_table_is_an_mlflow_table_replaced_not_appended(store, monkeypatch):
    uri, tracker = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_table searches runs through MLflow's global URI
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml", smoke_test=True)
    run_id = tracker.start_parent(spec, "s", 1, True)
    front = pd.DataFrame({"strategy": ["a", "b"], "sparsity_level": [0.5, 0.9], "test_accuracy_mean": [0.9, 0.8]})
    tracker.log_table(front)
    tracker.log_table(front.assign(test_accuracy_mean=[0.91, 0.81]))
    client = MlflowClient(uri)
    back = client.load_table(experiment_id=tracker.experiment_id, artifact_file=tr.FRONTIER_TABLE,
                             run_ids=[run_id])
    assert back["test_accuracy_mean"].tolist() == [0.91, 0.81]  # two rows, the newer ones
    tables = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert tables == [{"path": tr.FRONTIER_TABLE, "type": "table"}]


def test_trial_logs_its_dataset_once_and_its_model_as_a_logged_model(store):
    from tune_prune.data import load_dataset

    uri, tracker = store
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml", smoke_test=True)
    parent = tracker.start_parent(spec, "s", 1, True)
    trial = next(t for t in spec.trials() if not t.is_dense)
    child = tr.TrialTracker(uri, tracker.experiment_id, parent, trial)
    child.start()
    data = load_dataset(trial.dataset.name, **trial.dataset.load_kwargs())
    child.log_dataset(data)
    child.log_dataset(data)  # a retried trial logs it again
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    model_id = child.log_final_model(model, {"latency_ms": 0.25}, layers={"0": {"sparsity": 0.5}})
    child.finish()

    client = MlflowClient(uri)
    run = client.get_run(child.run_id)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "digits" and len(ds.digest) == 16
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"
    profile = json.loads(ds.profile)
    assert (profile["train_examples"], profile["val_examples"], profile["test_examples"]) == (
        len(data.y_train), len(data.y_val), len(data.y_test))
    assert sum(profile[f"{s}_examples"] for s in ("train", "val", "test")) == 1797  # all of digits, once
    # another split of the same data is another dataset
    other = tr.dataset_entity("digits", {**trial.dataset.load_kwargs(), "split_seed": 1},
                              load_dataset("digits", **{**trial.dataset.load_kwargs(), "split_seed": 1}))
    assert other.digest != ds.digest

    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == child.run_id and str(logged.status) == "READY"
    assert logged.name == tr.logged_model_name(trial.name) and "." not in logged.name
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    linked = {m.key: m for m in logged.metrics}
    assert linked["latency_ms"].value == 0.25 and linked["latency_ms"].dataset_digest == ds.digest
    back = tr.load_final_model(uri, child.run_id)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert run.data.tags["strategy"] == trial.schedule
    assert run.data.tags[tr.TAG_RUN_COLOR] == tr.STRATEGY_COLORS[trial.schedule]


def test_view_and_browse_url_open_the_training_runs(store):
    uri, tracker = store
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml", smoke_test=True)
    first = tracker.start_parent(spec, "s1", 1, True)
    second = tr.SweepTracker(uri, "ui-test").start_parent(spec, "s2", 1, True)
    view = json.loads(MlflowClient(uri).get_experiment(tracker.experiment_id).tags[tr.VIEW_TAG])
    assert view["runsExpanded"] == {second: True} and first != second  # the newest sweep's, the tag stays small
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "strategy"}]
    chart = view["compareRunCharts"][0]
    assert (chart["type"], chart["xaxis"]["key"], chart["yaxis"]["key"]) == ("SCATTER", "sparsity", "test_accuracy")
    exp = tracker.experiment_id
    assert tr.browse_url(uri, exp) == (f"http://127.0.0.1:5000/#/experiments/{exp}/runs"
                                       "?workflowType=machine_learning&viewStateShareKey=tune_prune")
    assert tr.browse_url("http://mlflow.internal:5000/", exp, "abc") == (
        f"http://mlflow.internal:5000/#/experiments/{exp}/runs/abc?workflowType=machine_learning")


def test_run_colours_are_the_frontier_plots_colours():
    from matplotlib.colors import to_hex

    for strategy, color in report.COLORS.items():
        assert tr.STRATEGY_COLORS[strategy] == to_hex(color)


# ------------------------------------------------------- a real sweep, seen in a browser

@pytest.fixture(scope="module")
def sweep(tmp_path_factory, quickstart_path):
    from tune_prune.sweep import run_sweep

    work = tmp_path_factory.mktemp("ui_sweep")
    old = os.getcwd()
    os.chdir(work)
    try:
        smoke = os.environ.get("TUNE_PRUNE_UI_FULL_QUICKSTART") != "1"
        spec = load_spec(quickstart_path, smoke_test=smoke)
        outcome = run_sweep(spec, tracking_uri=tr.resolve_tracking_uri(None), smoke_test=smoke)
    finally:
        os.chdir(old)
    assert outcome.failed == []
    return work, spec, outcome


@pytest.mark.integration
def test_every_trial_run_has_its_dataset_and_every_pruned_one_a_logged_model(sweep):
    _, spec, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_run(outcome.parent_run_id).info.experiment_id
    children = tr.child_runs(outcome.tracking_uri, exp, outcome.parent_run_id)
    assert len(children) == len(spec.trials())
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in children}
    assert len(digests) == 1  # one split of one dataset for the whole sweep
    for run in children:
        assert run.data.tags["strategy"] == run.data.params["schedule"]
        outputs = run.outputs.model_outputs
        if run.data.params["mode"] == "dense":
            assert outputs == []
            continue
        model = client.get_logged_model(outputs[0].model_id)
        linked = {m.key: m.value for m in model.metrics}
        assert linked["test_accuracy"] == run.data.metrics["test_accuracy"]
        assert linked["sparsity"] == run.data.metrics["sparsity"]
        assert "latency_ms" in linked
        # the run's own history is not doubled by linking its final values to the model
        assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == int(run.data.params["n_events"])


@pytest.mark.integration
def test_parent_run_carries_the_answer_and_the_frontier_table(sweep, monkeypatch):
    from tune_prune.cli import main

    work, spec, outcome = sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)  # load_table reads MLflow's global URI
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    note = parent.data.tags[tr.NOTE_TAG]
    assert note.startswith("#### Recommendation per target sparsity")
    for strategy in ("one_shot", "constant", "geometric", "hybrid"):
        assert f" {strategy} |" in note
    assert "sweep wall time:" in note and "Dense baseline:" in note
    table = client.load_table(experiment_id=parent.info.experiment_id, artifact_file=tr.FRONTIER_TABLE,
                              run_ids=[outcome.parent_run_id])
    assert len(table) == len(outcome.frontier)
    assert sorted(table["strategy"].unique()) == sorted(outcome.frontier["strategy"].unique())
    # `tune-prune report` rewrites both; the table is replaced, not appended to
    client.set_tag(outcome.parent_run_id, tr.NOTE_TAG, "stale")
    assert main(["report", "--experiment", spec.name, "--tracking-uri", outcome.tracking_uri,
                 "--out", str(work / "report")]) == 0
    assert client.get_run(outcome.parent_run_id).data.tags[tr.NOTE_TAG] == note
    again = client.load_table(experiment_id=parent.info.experiment_id, artifact_file=tr.FRONTIER_TABLE,
                              run_ids=[outcome.parent_run_id])
    assert len(again) == len(outcome.frontier)


@pytest.mark.integration
def test_the_browse_line_gives_the_addresses_that_open_the_runs_and_the_answer(sweep, capsys):
    from tune_prune.cli import _print_outcome

    _, _, outcome = sweep
    _print_outcome(outcome)
    out = capsys.readouterr().out
    exp = tr.run_experiment_id(outcome.tracking_uri, outcome.parent_run_id)
    line = next(line for line in out.splitlines() if line.startswith("browse: "))
    assert line == (f"browse: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1, then open "
                    f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning"
                    "&viewStateShareKey=tune_prune")
    assert (f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{outcome.parent_run_id}?workflowType=machine_learning"
            in out)


#: wide enough for the runs table to show its Dataset and Models columns beside MLflow's assistant panel
WIDTH = 1900
#: MLflow 3.17.2's runs table reads one page of an experiment's logged models, the 50 newest
#: (mlflow/mlflow#25766): beyond that, older runs show an empty Models cell
MLFLOW_MODELS_PAGE = 50


@pytest.fixture(scope="module")
def ui(sweep):
    from browser import MlflowUi

    work, _, outcome = sweep
    with MlflowUi(outcome.tracking_uri, work / "mlflow_ui.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from browser import Browser, chromium_path

    chromium_path()
    with Browser(WIDTH, 1000) as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("TUNE_PRUNE_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _url(ui, outcome, run_id=None, **extra) -> str:
    """The address the sweep's `browse:` line prints, on this test's port."""
    exp = tr.run_experiment_id(outcome.tracking_uri, outcome.parent_run_id)
    url = tr.browse_url(outcome.tracking_uri, exp, run_id, ui=ui.url)
    return url + "".join(f"&{k}={v}" for k, v in extra.items())


def _trial_names(outcome) -> list[str]:
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_run(outcome.parent_run_id).info.experiment_id
    return sorted(r.info.run_name for r in tr.child_runs(outcome.tracking_uri, exp, outcome.parent_run_id))


@pytest.mark.integration
def test_a_first_time_user_groups_the_runs_by_strategy_with_two_clicks(sweep, ui, browser, shots):
    """Without tune_prune's view: the runs page, the parent row folded, and `strategy` offered by Group by."""
    _, _, outcome = sweep
    exp = tr.run_experiment_id(outcome.tracking_uri, outcome.parent_run_id)
    browser.open(f"{ui.url}/#/experiments/{exp}/runs?{tr.WORKFLOW_QUERY}")
    parent = MlflowClient(outcome.tracking_uri).get_run(outcome.parent_run_id).info.run_name
    browser.wait_for(f"document.body.innerText.includes({json.dumps(parent[:20])})", what="the sweep's run")
    assert "Group: " not in browser.text()
    assert "digits (" in browser.text()  # the parent row names the sweep's data too
    browser.press("Group by")
    browser.wait_for("[...document.querySelectorAll('[role=menuitem], [role=option], [role=menuitemcheckbox]')]"
                     ".some(e => e.innerText.trim() === 'strategy')", what="`strategy` in the Group by menu")
    browser.screenshot(shots / "group_by_menu.png")
    browser.press("strategy", "[role=menuitem], [role=option], [role=menuitemcheckbox]")
    browser.wait_for("document.body.innerText.includes('Group: geometric')", what="runs grouped by strategy")
    for name in _trial_names(outcome):
        assert name in browser.text(), name


@pytest.mark.integration
def test_runs_page_shows_the_trials_by_strategy_with_dataset_and_model(sweep, ui, browser, shots):
    _, spec, outcome = sweep
    names = _trial_names(outcome)
    browser.open(_url(ui, outcome))
    browser.wait_for(f"document.body.innerText.includes({json.dumps(names[0])})", what="the trials")
    browser.wait_for("document.body.innerText.includes('Group: geometric')", what="the strategy groups")
    text = browser.text()
    assert "Overview" not in text.split("Runs")[0][-200:]  # the training runs, not the GenAI overview
    for name in names:  # every nested trial is on the page, not folded under its parent
        assert name in text, name
    for strategy in ("one_shot", "constant", "geometric", "hybrid", "dense"):
        assert f"Group: {strategy}" in text
    assert text.count("digits (") >= len(names)  # the Dataset column, one per trial
    browser.screenshot(shots / "runs_by_strategy.png")
    browser.js("document.querySelector('.ag-body-horizontal-scroll-viewport, .ag-center-cols-viewport')"
               "?.scrollBy(400, 0)")
    pruned = {tr.logged_model_name(n) for n in names if not n.startswith("dense")}
    shown = browser.wait_for(
        f"(() => {{ const want = new Set({json.dumps(sorted(pruned))});"
        " const got = [...new Set([...document.querySelectorAll('a')].map(a => a.innerText.trim())"
        ".filter(t => want.has(t)))];"
        f" return got.length >= {min(len(pruned), MLFLOW_MODELS_PAGE)} ? got : null; }})()",
        what="the Models column")
    assert len(shown) == min(len(pruned), MLFLOW_MODELS_PAGE)


@pytest.mark.integration
def test_chart_view_plots_sparsity_against_accuracy_one_point_per_trial(sweep, ui, browser, shots):
    _, spec, outcome = sweep
    browser.open(_url(ui, outcome, compareRunsMode="CHART"))
    points = browser.wait_for("document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length",
                              what="the scatter chart's points")
    time.sleep(1)  # plotly draws the rest of the points in the next frames
    points = browser.js("document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length")
    assert points == len(spec.trials())
    text = browser.text()
    assert "sparsity vs test accuracy" in text
    browser.screenshot(shots / "chart_sparsity_accuracy.png")


@pytest.mark.integration
def test_parent_run_page_shows_the_recommendation_frontier_table_and_plot(sweep, ui, browser, shots):
    _, spec, outcome = sweep
    browser.open(_url(ui, outcome, outcome.parent_run_id))
    browser.wait_for("document.body.innerText.includes('Recommendation per target sparsity')",
                     what="the run's description")
    assert browser.click_text("Show more", "button")  # MLflow folds long descriptions
    browser.wait_for("document.body.innerText.includes('Show less')", what="the unfolded description")
    text = browser.text()
    assert "Frontier: test accuracy (%) of each strategy's best configuration" in text
    assert "distinguishable" in text and "Dense baseline:" in text and "Budget spent" in text
    client = MlflowClient(outcome.tracking_uri)
    recommended = [client.get_logged_model(o.model_id).name
                   for o in client.get_run(outcome.parent_run_id).outputs.model_outputs]
    assert recommended
    browser.wait_for(f"document.body.innerText.includes('Logged models ({len(recommended)})')",
                     what="the sweep run's logged models")
    # the recommended models, listed on the sweep's page (the rows render after the count)
    browser.wait_for(f"{json.dumps(recommended)}.every(n => document.body.innerText.includes(n))",
                     what=f"every recommended model's name {recommended}")
    tables = browser.js("[...document.querySelectorAll('.note-editor-preview-content table')]"
                        ".map(t => t.querySelectorAll('tr').length)")
    assert tables == [len(spec.target_sparsities) + 1] * 2  # recommendation and frontier: header + a row per level
    loaded = browser.wait_for(
        "(() => { const i = [...document.images].find(i => i.src.includes('path=frontier.png'));"
        " return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null; })()",
        what="the frontier plot, loaded")
    assert loaded == [840, 540]  # report.plot_frontier: 7 x 4.5 in at 120 dpi
    browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=1500, deviceScaleFactor=1, mobile=False)
    try:
        time.sleep(1)
        browser.screenshot(shots / "parent_run_description.png")
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=1000, deviceScaleFactor=1,
                     mobile=False)
