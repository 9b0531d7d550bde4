"""Adaptive search: spec rules, the no-repeat searcher, and a small real Optuna + ASHA sweep."""

import copy
import json

import pandas as pd
import pytest
from ray.tune.search import Searcher

from tune_prune import frontier as fr
from tune_prune.spec import Range, SpecError, parse_spec

ADAPTIVE = {
    "name": "adaptive_test",
    "dataset": {"name": "digits", "val_size": 0.2, "train_subset": 600},
    "model": {"name": "mlp", "hidden": [32]},
    "pretrain": {"epochs": 4, "lr": 0.05, "batch_size": 64},
    "finetune": {"lr": 0.01, "batch_size": 64},
    "budget": {"epochs": 8},
    "target_sparsities": [0.9],
    "seeds": [0, 1],
    "search": {"mode": "adaptive", "num_samples": 3, "confirm_top": 1},
    "strategies": {"geometric": {"rate0": {"low": 0.3, "high": 0.6}, "patience": [1, 2]}},
}


def test_adaptive_spec_keeps_ranges_and_plans_samples_and_confirmations():
    spec = parse_spec(copy.deepcopy(ADAPTIVE))
    (strat,) = spec.strategies
    assert dict(strat.grid)["rate0"] == (Range(0.3, 0.6),)
    assert [t.schedule for t in spec.trials()] == ["dense", "dense"]
    # 1 bracket x (3 samples + 1 confirmation x 1 other seed) x 8 epochs, + 2 x 4 pretraining
    assert spec.planned_cost().total_epochs == 4 * 8 + 8


def test_ranges_need_adaptive_mode():
    raw = copy.deepcopy(ADAPTIVE)
    del raw["search"]
    with pytest.raises(SpecError, match=r"strategies.geometric.rate0: ranges .* need search.mode: adaptive"):
        parse_spec(raw)


def test_the_low_end_of_a_range_must_fit_the_budget_too():
    raw = copy.deepcopy(ADAPTIVE)
    raw["strategies"]["geometric"]["rate0"] = {"low": 0.1, "high": 0.6}  # 0.1 -> 22 events > 8
    with pytest.raises(SpecError, match=r"budget.epochs: geometric\(target=0.9, rate0=0.1\) has 22 prune events"):
        parse_spec(raw)


@pytest.mark.parametrize("change,field", [
    ({"search": {"mode": "bayes"}}, "search.mode"),
    ({"search": {"mode": "adaptive", "num_samples": 0}}, "search.num_samples"),
    ({"search": {"mode": "adaptive", "grace_period": -1}}, "search.grace_period"),
    ({"strategies": {"geometric": {"rate0": {"low": 0.5, "high": 0.3}, "patience": 1}}}, "strategies.geometric.rate0"),
    ({"strategies": {"geometric": {"rate0": 0.3, "patience": {"low": 1.5, "high": 3}}}}, "strategies.geometric.patience"),
])
def test_bad_search_settings_name_the_field(change, field):
    raw = copy.deepcopy(ADAPTIVE)
    raw.update(change)
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.field == field


class _Scripted(Searcher):
    """Proposes a fixed sequence of points and records what it is told."""

    def __init__(self, points):
        super().__init__(metric="val_accuracy", mode="max")
        self.points = list(points)
        self.told = []

    def suggest(self, trial_id):
        return {"point": {"x": self.points.pop(0)}} if self.points else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result, error))

    def save(self, checkpoint_path):
        with open(checkpoint_path, "w") as f:
            json.dump(self.points, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path) as f:
            self.points = json.load(f)


def test_no_repeat_searcher_answers_repeats_from_memory():
    from tune_prune.sweep import NoRepeatSearcher

    inner = _Scripted([1, 1, 2, 2, 2])
    s = NoRepeatSearcher(inner)
    assert s.suggest("a") == {"point": {"x": 1}}
    # x=1 again while "a" is still running: the inner searcher is told it errored, then x=2 is used
    assert s.suggest("b") == {"point": {"x": 2}}
    assert inner.told == [("b-0", None, True)]
    s.on_trial_complete("b", {"val_accuracy": 0.7})
    # only repeats of x=2 remain: each is answered with b's result, then the space is exhausted
    assert s.suggest("c") == Searcher.FINISHED
    assert inner.told[-2:] == [("c-0", {"val_accuracy": 0.7}, False), ("c-1", {"val_accuracy": 0.7}, False)]


def test_a_config_with_fewer_seeds_cannot_displace_a_confirmed_one():
    rows = []
    for key, seeds, val in [("confirmed", [0, 1, 2], 0.80), ("lucky", [0], 0.95)]:
        for seed in seeds:
            rows.append(dict(strategy="geometric", trial_key=f"{key}-{seed}", config_key=key, config=key,
                             target_sparsity=0.9, seed=seed, event=1, sparsity=0.9, val_accuracy=val,
                             test_accuracy=val, cost_epochs=5))
    front = fr.frontier(pd.DataFrame(rows), [0.9])
    assert list(front.config_key) == ["confirmed"]


@pytest.mark.integration
def test_small_adaptive_sweep_searches_then_confirms(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(copy.deepcopy(ADAPTIVE))
    outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None))
    assert outcome.failed == []
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    keys = [r.data.tags["tune_prune.trial_key"] for r in runs]
    assert len(keys) == len(set(keys))  # no configuration ran twice
    searched = [r for r in runs if r.data.params["schedule"] == "geometric" and r.data.params["seed"] == "0"]
    confirmed = [r for r in runs if r.data.params["schedule"] == "geometric" and r.data.params["seed"] == "1"]
    assert 1 <= len(searched) <= 3 and len(confirmed) == 1
    # the confirmation re-ran a searched configuration on the other seed
    assert confirmed[0].data.tags["tune_prune.config_key"] in {r.data.tags["tune_prune.config_key"] for r in searched}
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    ended = 0
    for r in searched:
        events = max(m.step for m in client.get_metric_history(r.info.run_id, "sparsity"))
        if events == int(r.data.metrics["n_events"]):
            # ran to its end: ASHA's stop at max_t is no early stop, and the final model is there
            ended += 1
            assert r.info.status == "FINISHED" and r.outputs.model_outputs, r.info.run_name
        else:
            assert r.info.status == "KILLED" and not (r.outputs and r.outputs.model_outputs), r.info.run_name
    assert ended >= 1
    # the search fills the machine's trial slots (2 cores, 1 CPU a trial): two runs overlap
    spans = sorted((r.info.start_time, r.info.end_time) for r in searched)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    row = outcome.frontier.iloc[0]
    assert row.strategy == "geometric" and row.seeds == 2


def test_bracket_searcher_keeps_every_bracket_in_flight_and_routes_results():
    from tune_prune.sweep import BracketSearcher

    a, b = _Scripted([1, 2, 3]), _Scripted([10])
    bases = {"a": {"bracket": {"schedule": "geometric", "target": 0.8}},
             "b": {"bracket": {"schedule": "constant", "target": 0.9}}}
    s = BracketSearcher({"a": a, "b": b}, bases, per_bracket=2)
    first, second = s.suggest("t1"), s.suggest("t2")
    # round robin: both brackets have a trial running before either gets a second one
    assert {first["bracket"]["schedule"], second["bracket"]["schedule"]} == {"geometric", "constant"}
    assert first["point"]["x"] in (1, 10) and "bracket" in first
    third = s.suggest("t3")
    assert third == {**bases["a"], "point": {"x": 2}}  # b's searcher is exhausted after one point
    assert s.suggest("t4") == Searcher.FINISHED  # a has had its 2 samples, b said FINISHED
    s.on_trial_complete("t3", {"val_accuracy": 0.5})
    s.on_trial_complete("t2" if second["bracket"]["schedule"] == "constant" else "t1", {"val_accuracy": 0.6})
    assert a.told == [("t3", {"val_accuracy": 0.5}, False)]
    assert b.told == [("t2" if second["bracket"]["schedule"] == "constant" else "t1", {"val_accuracy": 0.6}, False)]


def test_bracket_searcher_saves_and_restores_every_bracket(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from tune_prune.sweep import BracketSearcher, NoRepeatSearcher, tune_space

    def fresh():
        space = tune_space((("rate0", (Range(0.1, 0.5),)),))
        inner = {k: NoRepeatSearcher(OptunaSearch(space={"point": space}, metric="val_accuracy", mode="max", seed=0))
                 for k in ("a", "b")}
        return BracketSearcher(inner, {"a": {"bracket": "A"}, "b": {"bracket": "B"}}, per_bracket=3)

    s = fresh()
    given = [s.suggest(f"t{i}") for i in range(3)]
    s.on_trial_complete("t0", {"val_accuracy": 0.9})
    s.save(str(tmp_path / "searcher.pkl"))
    back = fresh()
    back.restore(str(tmp_path / "searcher.pkl"))
    assert back.given == s.given == {"a": 2, "b": 1} and back.owner == s.owner
    assert [g["bracket"] for g in given] == ["A", "B", "A"]
    assert back.suggest("t3")["bracket"] == "B"  # the round goes on where it was


def test_bracket_searcher_keeps_a_brackets_constant_knobs():
    """Optuna returns only what it samples; the bracket's fixed knobs must reach the trial."""
    from tune_prune.sweep import BracketSearcher

    s = BracketSearcher({"h": _Scripted([0.3])}, {"h": {"bracket": "H", "point": {"rate0": 0.1, "patience": 2}}}, 1)
    assert s.suggest("t1") == {"bracket": "H", "point": {"rate0": 0.1, "patience": 2, "x": 0.3}}


def test_a_restarted_trial_keeps_its_rungs_and_its_searcher_under_its_new_id(tmp_path):
    """Tune restarts an unfinished trial under a new id on resume: the ASHA rungs it reached
    and the searcher's routing follow it by content key, and both survive the snapshot."""
    import math
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tune_prune.spec import TrialSpec
    from tune_prune.sweep import BracketScheduler, BracketSearcher, NoRepeatSearcher, _bracket_key, tune_space

    spec = parse_spec(copy.deepcopy(ADAPTIVE))
    key = _bracket_key("geometric", 0.9)
    space = {k: v for k, v in tune_space(spec.strategies[0].grid).items()}
    base = {"base": TrialSpec(**spec.base(), schedule="geometric", target=0.9, seed=0).to_dict(),
            "bracket": {"schedule": "geometric", "target": 0.9, "seed": 0}, "point": {}}

    def fresh():
        searcher = BracketSearcher({key: NoRepeatSearcher(OptunaSearch(space={"point": space}, metric="val_accuracy",
                                                                       mode="max", seed=0))}, {key: base}, 3)
        sched = BracketScheduler({key: ASHAScheduler(time_attr="milestone", max_t=-math.log2(0.1), grace_period=1,
                                                     reduction_factor=2)}, searcher)
        sched.set_search_properties("val_accuracy", "max")
        return searcher, sched

    searcher, sched = fresh()
    config = searcher.suggest("old")
    trial = SimpleNamespace(trial_id="old", config=config)
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, {"milestone": 1.0, "val_accuracy": 0.5})
    snapshot = sched.get_state()
    searcher.save(str(tmp_path / "searcher.pkl"))

    searcher, sched = fresh()  # what Tuner.restore rebuilds, then fills from the snapshot
    searcher.restore(str(tmp_path / "searcher.pkl"))
    sched.set_state(snapshot)
    sched.on_trial_add(None, SimpleNamespace(trial_id="new", config=config))
    asha = sched.get_state()  # the rung the trial reached is recorded under its new id
    import pickle

    rungs = pickle.loads(asha["inner"][key])["_brackets"][0]._rungs
    recorded = {tid for _, rec in rungs for tid in rec}
    assert recorded == {"new"}
    assert searcher.owner == {"new": key}
    assert "new" in searcher.id_of_key.values()


def test_a_brackets_confirmations_come_as_soon_as_its_last_sample_ends_and_fillers_take_idle_slots(tmp_path):
    """One Tuner for the whole adaptive sweep: while bracket b still runs, a's follow-up
    trials are suggested before anything else; fillers take slots nothing else can use;
    the search is over only when every bracket has ended and been followed up."""
    from tune_prune.sweep import BracketSearcher

    calls = []

    def follow_up(bracket, done):
        calls.append((bracket, done))
        return [{"trial": f"confirm-{bracket}-{p['x']}"} for p, r in done if r is not None]

    bases = {"a": {"bracket": "A"}, "b": {"bracket": "B"}}
    s = BracketSearcher({"a": _Scripted([1]), "b": _Scripted([10, 20])}, bases, per_bracket=2,
                        fillers=[{"trial": "dense-0"}], follow_up=follow_up)
    assert [s.suggest(t)["point"]["x"] for t in ("t1", "t2", "t3")] == [1, 10, 20]
    assert s.suggest("t4") == {"trial": "dense-0"}  # a is exhausted, b has had its 2: a filler
    assert s.suggest("t5") is None  # nothing to run until a trial ends, but not FINISHED
    s.on_trial_complete("t1", {"val_accuracy": 0.9})
    assert calls == [("A", [({"x": 1}, {"val_accuracy": 0.9})])]
    s.save(str(tmp_path / "s.pkl"))  # the queued confirmation survives a snapshot
    back = BracketSearcher({"a": _Scripted([]), "b": _Scripted([])}, bases, per_bracket=2,
                           fillers=[{"trial": "dense-0"}], follow_up=follow_up)
    back.restore(str(tmp_path / "s.pkl"))
    for searcher in (s, back):
        assert searcher.suggest("t6") == {"trial": "confirm-A-1"}
        assert searcher.suggest("t7") is None  # b still runs
        searcher.on_trial_complete("t2", {"val_accuracy": 0.5})
        assert searcher.suggest("t8") is None
        searcher.on_trial_complete("t3", None, error=True)  # an errored sample is not confirmed
        assert searcher.suggest("t9") == {"trial": "confirm-B-10"}
        assert searcher.suggest("t10") == Searcher.FINISHED
    assert [c[0] for c in calls] == ["A", "B", "B"]


def test_confirmations_rank_the_samples_that_ran_to_their_end():
    from tune_prune.spec import TrialSpec
    from tune_prune.sweep import Confirmations

    spec = parse_spec(copy.deepcopy(ADAPTIVE))
    confirm = Confirmations(spec.base(), (1, 2), 1, "val_accuracy", True)
    done = [({"rate0": 0.1, "patience": 1}, {"event": 3, "n_events": 3, "val_accuracy": 0.80, "cost_epochs": 9}),
            ({"rate0": 0.2, "patience": 1}, {"event": 2, "n_events": 4, "val_accuracy": 0.95, "cost_epochs": 4}),
            ({"rate0": 0.3, "patience": 1}, {"event": 2, "n_events": 2, "val_accuracy": 0.85, "cost_epochs": 9}),
            ({"rate0": 0.4, "patience": 1}, None)]
    trials = [TrialSpec.from_dict(json.loads(c["trial"])) for c in
              confirm({"schedule": "geometric", "target": 0.9}, done)]
    # the ASHA-stopped sample (0.95 at event 2 of 4) is not confirmed; the best that ended is
    assert [(dict(t.knobs)["rate0"], t.seed, t.target) for t in trials] == [(0.3, 1, 0.9), (0.3, 2, 0.9)]
    assert Confirmations(spec.base(), (), 1, "val_accuracy", True)({"schedule": "geometric", "target": 0.9},
                                                                   done) == []
