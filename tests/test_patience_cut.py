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
