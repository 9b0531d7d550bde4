"""When the budget cuts the patience protocol, the tool says so (issue 11, item 4).

An event is "cut" when its epoch cap ended it while patience was still waiting: what ran
was then a fixed-budget comparison, not the patience protocol the strategy names.
"""

import pandas as pd
import pytest
import torch

from test_loop import make_trial
from tune_prune import frontier as fr
from tune_prune.data import load_dataset
from tune_prune.loop import Hooks, pretrain_dense, run_trial
from tune_prune.report import format_frontier


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data = load_dataset("digits", val_size=0.2, train_subset=600)
    return data, pretrain_dense(make_trial(), data, torch.device("cpu"))[0]


def test_an_event_ended_by_its_cap_is_cut_and_one_ended_by_patience_is_not(setup):
    data, dense = setup
    epochs = []
    # patience 50 can never run out within a 3-epoch budget: the cap ends the event
    (cut,) = run_trial(make_trial("one_shot", 0.9, (), patience=50, budget=3), data, dense, torch.device("cpu"))
    assert cut.patience_cut == 1.0 and cut.event_epochs == 3
    # patience 0 stops at the first epoch that does not improve, long before a 40-epoch cap
    (kept,) = run_trial(make_trial("one_shot", 0.9, (), patience=0, budget=40), data, dense, torch.device("cpu"),
                        Hooks(on_epoch=epochs.append))
    assert kept.patience_cut == 0.0 and kept.event_epochs < 40 == kept.budget_cap
    # fixed epochs have no patience to cut
    (fixed,) = run_trial(make_trial("one_shot", 0.9, (), patience=None, budget=3, epochs_per_event=2), data, dense,
                         torch.device("cpu"))
    assert fixed.patience_cut is None and "patience_cut" not in fixed.metrics()


def _rows(strategy, cuts):
    return [{"strategy": strategy, "patience_cut": c, "trial_key": strategy} for c in cuts]


def test_cut_fractions_per_strategy_and_the_warning_lines():
    records = pd.DataFrame(_rows("geometric", [1, 1, 1, 0, 1, 1]) + _rows("one_shot", [0, 0])
                           + _rows("constant", [float("nan")] * 3) + _rows("dense", [float("nan")]))
    cuts = fr.patience_cuts(records)
    assert cuts.to_dict(orient="records") == [
        {"strategy": "geometric", "patience_events": 6, "cut": 5, "cut_fraction": 5 / 6},
        {"strategy": "one_shot", "patience_events": 2, "cut": 0, "cut_fraction": 0.0},
    ]
    assert fr.patience_cut_lines(records) == [
        "geometric: patience cut in 83% of events (5 of 6): this is a fixed-budget comparison, not the patience "
        "protocol"]
    # the sweep summary leads with it
    assert format_frontier(pd.DataFrame(columns=fr.FRONTIER_COLUMNS), {}, records).startswith("geometric: patience cut")
    assert fr.patience_cut_lines(pd.DataFrame(_rows("one_shot", [0, 0]))) == []


def test_patience_can_watch_the_validation_loss(setup):
    """finetune.monitor: val_loss stops on the loss (lower is better) and still keeps the best-accuracy epoch."""
    from dataclasses import replace

    from tune_prune.pruning.patience import Patience

    p = Patience(patience=1, min_delta=0.05, mode="min")
    assert [p.update(v, e) for e, v in enumerate([1.0, 0.9, 0.88, 0.8])] == [True, True, False, True]
    assert p.best == 0.8 and p.best_epoch == 3

    data, dense = setup
    trial = make_trial("one_shot", 0.5, (), patience=0, budget=40)
    trial = replace(trial, finetune=replace(trial.finetune, monitor="val_loss"))
    epochs = []
    (rec,) = run_trial(trial, data, dense, torch.device("cpu"), Hooks(on_epoch=epochs.append))
    losses = [rec.pruned_val_loss] + [e.val_loss for e in epochs]
    stop = len(epochs)
    assert rec.patience_cut == 0.0 and stop < 40
    # it stopped at the first epoch whose loss did not beat every earlier one of the event
    assert losses[stop] >= min(losses[:stop])
    assert all(losses[e] < min(losses[:e]) for e in range(1, stop))
    # and kept the epoch with the best accuracy, not the best loss
    accs = [rec.pruned_val_accuracy] + [e.val_accuracy for e in epochs]
    assert rec.val_accuracy == max(accs)


def test_the_monitor_is_part_of_a_trial_key_only_when_it_is_not_the_default():
    import copy

    from test_spec import PINNED, PINNED_NAMES
    from tune_prune.spec import parse_spec

    raw = copy.deepcopy(PINNED)
    raw["finetune"] = {"monitor": "val_accuracy"}
    assert [t.name for t in parse_spec(raw).trials()] == PINNED_NAMES
    raw["finetune"] = {"monitor": "val_loss"}
    assert parse_spec(raw).trials()[1].name != PINNED_NAMES[1]


def test_without_a_budget_patience_alone_ends_every_event(setup):
    """budget.epochs: null (the paper's protocol): no event is cut while the safety cap is far away."""
    from dataclasses import replace

    from tune_prune.spec import BudgetSpec

    data, dense = setup
    trial = make_trial("geometric", 0.9, (("rate0", 0.5),), patience=2)
    trial = replace(trial, budget=BudgetSpec(epochs=None, max_event_epochs=60))
    records = run_trial(trial, data, dense, torch.device("cpu"))
    assert len(records) == len(trial.sparsities) == 4
    assert [r.patience_cut for r in records] == [0.0] * 4
    assert all(r.budget_cap == 60 and 2 <= r.event_epochs < 60 for r in records)
    assert records[-1].cost_epochs == sum(r.event_epochs for r in records)
    lo, hi = trial.planned_epochs()
    assert (lo, hi) == (4 * 2, 4 * 60) and lo <= records[-1].cost_epochs <= hi
    # a cap that patience cannot outlast is reported as a cut, as a budget would be
    capped = replace(trial, patience=50, budget=BudgetSpec(epochs=None, max_event_epochs=3))
    assert {r.patience_cut for r in run_trial(capped, data, dense, torch.device("cpu"))} == {1.0}
