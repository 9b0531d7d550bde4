"""An adaptive sweep whose driver is killed mid-search, finished by `tune-prune resume`.

Real local Ray, a real SQLite MLflow store and real digits: the driver runs as its own
process and is SIGKILLed (with its whole Ray) once some search trials have settled; the
resume must then draw only the samples not drawn yet, rerun nothing that settled, reopen
the same child runs and end with the usual frontier and recommendation.
"""

import copy
import json
import re
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from test_fault_tolerance import _kill_tree
from tune_prune.spec import parse_spec
from workloads import driver, resume_here, slow_digits

# ~100 s on the 2-core VM (two Ray starts, a pretraining, the report): over the default run's budget
pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUM_SAMPLES = 3
TARGETS = [0.8, 0.9]
# two brackets (geometric at 0.8 and 0.9) x 3 samples of a continuous rate0 (no repeats),
# one seed: no confirmation phase, so the kill lands in the search and the test stays short
ADAPTIVE = slow_digits(
    "kill_adaptive_driver", target_sparsities=TARGETS,
    search={"mode": "adaptive", "num_samples": NUM_SAMPLES, "confirm_top": 1, "grace_period": 1,
            "reduction_factor": 2},
    strategies={"geometric": {"rate0": {"low": 0.4, "high": 0.6}, "patience": None, "epochs_per_event": 2}})


def _children(client, exp_id, parent_id=None):
    flt = f"tags.`mlflow.parentRunId` = '{parent_id}'" if parent_id else "tags.`tune_prune.kind` != 'sweep'"
    return client.search_runs([exp_id], flt)


def test_killed_adaptive_driver_is_finished_by_resume_with_each_bracket_at_its_sample_count(tmp_path, capfd):
    from tune_prune.cli import main
    from tune_prune.tracking import load_records

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(ADAPTIVE))
    spec = parse_spec(copy.deepcopy(ADAPTIVE))
    n_search = NUM_SAMPLES * len(TARGETS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settled_before: dict[str, int] = {}
    deadline = time.time() + 180
    with driver(["sweep", "spec.yaml"], tmp_path) as proc:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if not list((tmp_path / "tune_prune_runs").glob("*/adaptive/experiment_state-*.json")):
                continue  # the Tuner has no snapshot yet (and the store exists by now)
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(spec.name)
            runs = [r for r in _children(client, exp.experiment_id) if r.data.tags.get("tune_prune.kind") == "trial"]
            settled = {r.data.tags["tune_prune.trial_key"]: r.info.end_time for r in runs
                       if r.info.status in ("FINISHED", "KILLED")}
            # some search trials settled, at least one still running: kill in the middle of the search
            if 1 <= len(settled) < len(runs) and len(settled) <= n_search - 2:
                settled_before = settled
                _kill_tree(proc.pid)
                break
    assert settled_before, "the driver finished (or never got going) before it could be killed:\n" + \
        (tmp_path / "driver.log").read_text()[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.name)
    settled = {r.data.tags["tune_prune.trial_key"]: r.info.end_time for r in _children(client, exp.experiment_id)
               if r.info.status in ("FINISHED", "KILLED")}
    assert settled.items() >= settled_before.items()
    started_before = {r.data.tags["tune_prune.trial_key"] for r in _children(client, exp.experiment_id)}

    sweep_dir, code, captured = resume_here(tmp_path, capfd)
    assert code == 0
    assert json.loads((sweep_dir / "tune_prune_sweep.json").read_text())["mode"] == "adaptive"
    output = captured.out + captured.err
    assert "FileNotFoundError" not in output, output[-3000:]
    assert "marked FAILED" not in output, output[-3000:]  # no child run was left behind by the kill
    (line,) = re.findall(r"resuming: (\d+) of up to (\d+) trials finished", captured.out)
    assert (int(line[0]), int(line[1])) == (len(settled), len(spec.dense_trials()) + n_search)

    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags["tune_prune.resumes"] == "1"
    runs = _children(client, exp.experiment_id, parent.info.run_id)
    keys = [r.data.tags["tune_prune.trial_key"] for r in runs]
    assert len(keys) == len(set(keys))  # one child run per trial key: none ran twice
    assert started_before <= set(keys)  # the runs open at the kill were reopened, not twinned
    # exactly num_samples trials per bracket, as without the kill: the restored searcher drew
    # only what it had not drawn before
    per_bracket = {}
    for r in runs:
        if r.data.tags["tune_prune.kind"] == "trial":
            b = (r.data.params["schedule"], float(r.data.params["target_sparsity"]))
            per_bracket[b] = per_bracket.get(b, 0) + 1
    assert per_bracket == {("geometric", t): NUM_SAMPLES for t in TARGETS}
    assert sum(r.data.tags["tune_prune.kind"] == "dense" for r in runs) == len(spec.dense_trials())
    for r in runs:
        key = r.data.tags["tune_prune.trial_key"]
        assert r.info.status in ("FINISHED", "KILLED"), (r.info.run_name, r.info.status)
        if key in settled:
            assert r.info.end_time == settled[key]  # not rerun
        if r.data.tags["tune_prune.kind"] == "trial":
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "sparsity"))
            n = int(r.data.params["n_events"])
            assert steps == list(range(1, len(steps) + 1)) and len(steps) <= n  # each event once
            if r.info.status == "FINISHED":
                assert len(steps) == n
    # the read-back the frontier is built from: one row per logged event
    records = load_records(uri, exp.experiment_id, parent.info.run_id)
    assert not records.duplicated(["trial_key", "event"]).any()
    assert records["trial_key"].nunique() == len(runs)
    # the progress counter went on from the settled trials
    counts = [int(c) for c in re.findall(r"^\[(\d+) trials", captured.out, re.M)]
    assert counts and counts == sorted(counts) and counts[0] >= len(settled) and counts[-1] == len(runs), counts

    # and the sweep answers: a recommendation at a searched sparsity
    capfd.readouterr()
    assert main(["recommend", "--experiment", spec.name, "--sparsity", "0.8", "--tracking-uri", uri]) == 0
    rec = capfd.readouterr().out
    assert "geometric" in rec, rec


# two seeds: the kill lands while a bracket's confirmation runs on seed 1
CONFIRMING = slow_digits(
    "kill_adaptive_confirm", target_sparsities=[0.8], seeds=[0, 1],
    search={"mode": "adaptive", "num_samples": 2, "confirm_top": 1, "grace_period": 1, "reduction_factor": 2},
    strategies={"geometric": {"rate0": {"low": 0.4, "high": 0.6}, "patience": None, "epochs_per_event": 2}})


def test_driver_killed_during_a_confirmation_is_resumed_with_that_confirmation_only(tmp_path, capfd):
    """The confirmations a bracket queued when its search ended are in Tune's snapshot: the
    resumed sweep reopens the confirmation's run and queues no second one."""
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(CONFIRMING))
    spec = parse_spec(copy.deepcopy(CONFIRMING))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed_at = None
    deadline = time.time() + 240
    with driver(["sweep", "spec.yaml"], tmp_path) as proc:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if not list((tmp_path / "tune_prune_runs").glob("*/adaptive/experiment_state-*.json")):
                continue  # no Tuner snapshot yet; the store exists by then (a client opening it while
                # the driver creates it would race the driver's schema migration)
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(spec.name)
            if exp is None:
                continue
            confirming = [r for r in _children(client, exp.experiment_id)
                          if r.data.tags.get("tune_prune.kind") == "trial" and r.data.params.get("seed") == "1"
                          and r.info.status == "RUNNING"]
            if confirming:
                killed_at = confirming[0].data.tags["tune_prune.trial_key"]
                _kill_tree(proc.pid)
                break
    assert killed_at, "no confirmation was seen running:\n" + (tmp_path / "driver.log").read_text()[-3000:]

    _, code, out = resume_here(tmp_path, capfd)
    assert code == 0
    assert "marked FAILED" not in out.out + out.err, (out.out + out.err)[-3000:]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.name)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tune_prune.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    runs = [r for r in _children(client, exp.experiment_id, parent.info.run_id)
            if r.data.tags["tune_prune.kind"] == "trial"]
    searched = [r for r in runs if r.data.params["seed"] == "0"]
    confirmed = [r for r in runs if r.data.params["seed"] == "1"]
    assert len(searched) == 2
    # one confirmation, the run open at the kill, finished by the resume
    assert [r.data.tags["tune_prune.trial_key"] for r in confirmed] == [killed_at]
    assert confirmed[0].info.status == "FINISHED"
    assert confirmed[0].data.tags["tune_prune.config_key"] in {r.data.tags["tune_prune.config_key"] for r in searched}
