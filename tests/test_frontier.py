import math

import pandas as pd
import pytest

from tune_prune import frontier as fr


def _rows(strategy, config_key, target, seed, events):
    """events: list of (sparsity, val, test, cost)."""
    return [
        dict(strategy=strategy, trial_key=f"{config_key}-{seed}", config_key=config_key, config=config_key,
             target_sparsity=target, seed=seed, event=i + 1, sparsity=s, val_accuracy=v, test_accuracy=t,
             cost_epochs=c)
        for i, (s, v, t, c) in enumerate(events)
    ]


@pytest.fixture
def records():
    rows = []
    # dense baseline, two seeds
    for seed, acc in [(0, 0.95), (1, 0.97)]:
        rows += _rows("dense", "d", 0.0, seed, [(0.0, acc, acc, 0)])
        rows[-1]["event"] = 0
    # one-shot: two configs at target 0.5 and one at target 0.9
    rows += _rows("one_shot", "os-a", 0.5, 0, [(0.5, 0.90, 0.88, 5)])
    rows += _rows("one_shot", "os-a", 0.5, 1, [(0.5, 0.92, 0.90, 7)])
    rows += _rows("one_shot", "os-b", 0.5, 0, [(0.5, 0.93, 0.80, 9)])  # best val, worse test
    rows += _rows("one_shot", "os-b", 0.5, 1, [(0.5, 0.93, 0.82, 9)])
    rows += _rows("one_shot", "os-c", 0.9, 0, [(0.9, 0.70, 0.69, 10)])
    rows += _rows("one_shot", "os-c", 0.9, 1, [(0.9, 0.72, 0.71, 10)])
    # geometric aimed at 0.9 passes 0.5 on its way (measured a hair below the level counts)
    geo = [(0.3, 0.94, 0.94, 2), (0.49995, 0.91, 0.90, 4), (0.75, 0.85, 0.84, 6), (0.9, 0.80, 0.79, 9)]
    rows += _rows("geometric", "g", 0.9, 0, geo)
    rows += _rows("geometric", "g", 0.9, 1, [(s, v - 0.02, t - 0.02, c + 1) for s, v, t, c in geo])
    return pd.DataFrame(rows)


def test_best_config_is_chosen_on_validation_and_reported_on_test(records):
    front = fr.frontier(records, [0.5, 0.9])
    row = front[(front.strategy == "one_shot") & (front.sparsity_level == 0.5)].iloc[0]
    assert row.config_key == "os-b"  # mean val 0.93 beats os-a's 0.91, although its test is worse
    assert row.test_accuracy_mean == pytest.approx(0.81)
    assert row.test_accuracy_std == pytest.approx(math.sqrt(2 * 0.01**2))  # sample std of 0.80, 0.82
    assert row.seeds == 2
    assert row.cost_epochs_mean == 9


def test_intermediate_events_are_frontier_points_at_the_cost_spent_then(records):
    front = fr.frontier(records, [0.5, 0.9])
    geo = front[front.strategy == "geometric"].set_index("sparsity_level")
    # first event with sparsity >= 0.5 - 1e-4 is event 2 (0.49995)
    assert geo.loc[0.5, "test_accuracy_mean"] == pytest.approx((0.90 + 0.88) / 2)
    assert geo.loc[0.5, "cost_epochs_mean"] == pytest.approx((4 + 5) / 2)
    assert geo.loc[0.9, "cost_epochs_mean"] == pytest.approx((9 + 10) / 2)


def test_a_run_aimed_higher_counts_at_lower_levels_but_not_the_reverse(records):
    points = fr.level_points(records, [0.5, 0.9])
    at_09 = set(points[points.sparsity_level == 0.9].config_key)
    assert at_09 == {"os-c", "g"}  # the 0.5 runs never reached 0.9
    at_05 = set(points[points.sparsity_level == 0.5].config_key)
    assert {"os-a", "os-b", "os-c", "g"} == at_05


def test_dense_baseline_mean_and_std(records):
    dense = fr.dense_baseline(records)
    assert dense["test_accuracy_mean"] == pytest.approx(0.96)
    assert dense["seeds"] == 2
    assert dense["test_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.01**2))


def test_single_seed_has_zero_spread_not_nan(records):
    one = records[records.seed == 0]
    front = fr.frontier(one, [0.5])
    assert sorted(front.strategy) == ["geometric", "one_shot"]  # .all() of an empty frame is True
    assert (front.test_accuracy_std == 0).all() and (front.test_accuracy_ci95 == 0).all()
    assert (front.seeds == 1).all()


def test_default_levels_are_the_requested_targets(records):
    assert fr.default_levels(records) == [0.5, 0.9]


def test_empty_records_give_an_empty_frontier():
    empty = pd.DataFrame(columns=["strategy", "trial_key", "config_key", "config", "target_sparsity", "seed",
                                  "event", "sparsity", "val_accuracy", "test_accuracy", "cost_epochs"])
    assert fr.frontier(empty, [0.5]).empty
    assert fr.pivot(fr.frontier(empty, [0.5])).empty


def test_pivot_has_a_row_per_level_and_a_column_per_strategy(records):
    table = fr.pivot(fr.frontier(records, [0.5, 0.9]))
    assert list(table.columns) == ["geometric", "one_shot"]
    assert list(table.index) == ["0.5", "0.9"]
    assert table.loc["0.5", "one_shot"] == "81.00 ± 1.41"


def test_pareto_front_keeps_exactly_the_undominated_points():
    # (sparsity, test accuracy, cost): "base" is beaten by "sparser", "accurate" and "cheap"
    # each through one criterion alone, "weak" by "sparser" through two; "cheap" and "twin"
    # are identical, so neither is strictly better than the other and both stay. A no-op,
    # a rule that drops any one criterion or turns one around, or a non-strict rule
    # (every point dominates itself) each gives a different set.
    pts = [("base", 0.5, 0.80, 10), ("sparser", 0.7, 0.80, 10), ("accurate", 0.5, 0.85, 10),
           ("cheap", 0.5, 0.80, 6), ("twin", 0.5, 0.80, 6), ("weak", 0.7, 0.75, 12),
           ("sparser", 0.7, 0.80, 10)]  # the same configuration's point reached at a lower level too
    per_config = pd.DataFrame(
        [dict(strategy="s", sparsity_level=0.5 if i < 6 else 0.3, config_key=k, sparsity_mean=sp,
              test_accuracy_mean=a, cost_epochs_mean=c) for i, (k, sp, a, c) in enumerate(pts)])
    front = fr.pareto_front(per_config)
    assert sorted(front.config_key) == ["accurate", "cheap", "sparser", "twin"]
    assert list(front.sparsity_mean) == sorted(front.sparsity_mean)
    assert fr.pareto_front(per_config.iloc[0:0]).empty


def test_pareto_front_cost_can_be_another_column():
    per_config = pd.DataFrame([
        dict(config_key="epochs_cheap", sparsity_mean=0.9, test_accuracy_mean=0.8, cost_epochs_mean=5,
             accelerator_seconds_mean=500),
        dict(config_key="seconds_cheap", sparsity_mean=0.9, test_accuracy_mean=0.8, cost_epochs_mean=9,
             accelerator_seconds_mean=100),
    ])
    assert list(fr.pareto_front(per_config).config_key) == ["epochs_cheap"]
    assert list(fr.pareto_front(per_config, "accelerator_seconds_mean").config_key) == ["seconds_cheap"]


def _points(records, levels, rule):
    pts = fr.level_points(records, levels, rule)
    return sorted((r.trial_key, r.sparsity_level, r.event) for r in pts.itertuples())


def test_the_authors_frontier_rule_keeps_final_iterative_events_and_exact_hits_only():
    rows = _rows("geometric", "g", 0.9, 0, [(0.5, .9, .9, 1), (0.75, .8, .8, 2), (0.9, .7, .7, 3)])
    rows += _rows("constant", "c", 0.9, 0, [(0.3, .9, .9, 1), (0.6, .85, .85, 2), (0.89995, .8, .8, 3)])
    rows += _rows("one_shot", "o", 0.5, 0, [(0.5, .9, .9, 1)])
    records = pd.DataFrame(rows)
    levels = [0.5, 0.6, 0.9]
    # every event counts at every level it reaches (today's rule)
    assert _points(records, levels, "all_events") == [
        ("c-0", 0.5, 2), ("c-0", 0.6, 2), ("c-0", 0.9, 3),
        ("g-0", 0.5, 1), ("g-0", 0.6, 2), ("g-0", 0.9, 3),
        ("o-0", 0.5, 1)]
    # the authors': geometric only with its final event at its own target; one-shot and constant
    # events only where they hit a level (constant at 0.6 is an exact hit, at 0.5 nothing is)
    assert _points(records, levels, "final_only") == [("c-0", 0.6, 2), ("c-0", 0.9, 3), ("g-0", 0.9, 3),
                                                      ("o-0", 0.5, 1)]
    front = fr.frontier(records, levels, "final_only")
    assert set(zip(front.strategy, front.sparsity_level)) == {("constant", 0.6), ("constant", 0.9),
                                                             ("geometric", 0.9), ("one_shot", 0.5)}
    with pytest.raises(ValueError, match="frontier rule must be one of all_events, final_only"):
        fr.level_points(records, levels, "best")


def test_the_cli_offers_exactly_the_frontier_rules():
    from tune_prune.cli import FRONTIER_RULE_CHOICES

    assert FRONTIER_RULE_CHOICES == fr.FRONTIER_RULES


def test_the_authors_equal_budget_view_picks_the_untruncated_run_closest_to_each_budget():
    rows = []
    for seed in (0, 1):
        # geometric at 0.9: three configurations of different natural cost
        rows += _rows("geometric", "cheap", 0.9, seed, [(0.5, 0.9, 0.88, 40), (0.9, 0.80, 0.78 + seed / 100, 100)])
        rows += _rows("geometric", "long", 0.9, seed, [(0.5, 0.9, 0.89, 90), (0.9, 0.86, 0.85, 300)])
        # close to 250 but its cap cut patience on one seed: the authors drop truncated runs
        rows += _rows("geometric", "cut", 0.9, seed, [(0.9, 0.99, 0.99, 240)])
        # aimed at 0.5, so never a point at 0.9 however close its cost
        rows += _rows("geometric", "other", 0.5, seed, [(0.5, 0.95, 0.95, 120)])
        rows += _rows("one_shot", "os", 0.9, seed, [(0.9, 0.75, 0.74, 20 + 10 * seed)])
    records = pd.DataFrame(rows).assign(patience_cut=0.0)
    records.loc[(records["config_key"] == "cut") & (records["seed"] == 1), "patience_cut"] = 1.0
    out = fr.natural_budget(records, [120, 250, 1000], levels=[0.9])
    geo = out[out["strategy"] == "geometric"].set_index("budget")
    assert geo["config_key"].to_dict() == {120.0: "cheap", 250.0: "long", 1000.0: "long"}
    assert geo.loc[120.0, "natural_cost_epochs_mean"] == 100 and geo.loc[120.0, "distance_epochs"] == 20
    assert geo.loc[120.0, "test_accuracy_mean"] == pytest.approx(0.785)
    assert geo.loc[1000.0, "distance_epochs"] == 700  # nothing is cut to fit: the distance says how far
    os_ = out[out["strategy"] == "one_shot"]
    assert os_["natural_cost_epochs_mean"].tolist() == [25.0] * 3 and os_["seeds"].tolist() == [2] * 3
    assert list(out.columns) == fr.NATURAL_BUDGET_COLUMNS
    # with every geometric run truncated, geometric has no point at all
    assert "geometric" not in set(fr.natural_budget(records.assign(patience_cut=1.0), [120])["strategy"])
