import math

import pandas as pd
import pytest
from scipy import stats

from tune_prune import frontier as fr
from tune_prune.recommend import compare, format_recommendation, recommend


def _run(strategy, config_key, seed, events, target=0.9):
    """events: (sparsity, val, test, cost_epochs, accelerator_seconds)."""
    return [dict(strategy=strategy, trial_key=f"{config_key}-{seed}", trial_name=f"{config_key}-{seed}",
                 config_key=config_key, config=config_key, target_sparsity=target, seed=seed, event=i + 1,
                 sparsity=s, val_accuracy=v, test_accuracy=t, cost_epochs=c, accelerator_seconds=a)
            for i, (s, v, t, c, a) in enumerate(events)]


def _records(seeds=(0, 1, 2)):
    rows = []
    for seed in seeds:
        j = 0.01 * seed
        rows += _run("one_shot", "os", seed, [(0.9, 0.80 + j, 0.79 + j, 10, 100)])
        rows += _run("geometric", "geo", seed, [(0.5, 0.90, 0.9, 5, 50), (0.9, 0.85 + j, 0.83 + j, 30 + seed, 300)])
        rows += _run("hybrid", "hy", seed, [(0.63, 0.88, 0.88, 12, 120), (0.9, 0.83 + j, 0.80 + j + 0.001 * seed, 20, 200)])
    return pd.DataFrame(rows)


def test_winner_is_best_on_validation_and_runner_up_is_the_next_strategy():
    rec = recommend(_records(), 0.9, budget_epochs=40)
    assert rec.status == "ok"
    assert (rec.winner.strategy, rec.runner_up.strategy) == ("geometric", "hybrid")
    assert rec.winner.test_mean == pytest.approx(0.84)
    sd = pd.Series([0.83, 0.84, 0.85]).std()
    assert rec.winner.test_ci95 == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))


def test_budget_removes_configurations_whose_slowest_seed_overspent():
    rec = recommend(_records(), 0.9, budget_epochs=31)  # geometric's seed 2 spent 32
    assert rec.winner.strategy == "hybrid"
    assert "geometric" not in {c.strategy for c in rec.candidates}


def test_accelerator_budget_filters_on_accelerator_seconds():
    rec = recommend(_records(), 0.9, budget_accelerator_seconds=150)
    assert [c.strategy for c in rec.candidates] == ["one_shot"]
    assert rec.status == "single_strategy"


def test_paired_test_uses_shared_seeds():
    rec = recommend(_records(), 0.9, budget_epochs=40)
    cmp = rec.comparison
    assert cmp.method == "paired t-test"
    a = [0.83, 0.84, 0.85]
    b = [0.80, 0.811, 0.822]
    assert cmp.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert cmp.difference == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert cmp.distinguishable == (cmp.p_value < 0.05)


def test_single_seed_is_never_called_distinguishable():
    rec = recommend(_records(seeds=(0,)), 0.9, budget_epochs=40)
    assert rec.comparison.method == "none"
    assert not rec.comparison.distinguishable
    assert "one seed" in rec.comparison.note
    assert "no CI: 1 seed" in format_recommendation(rec)


def test_identical_strategies_are_a_tie_and_not_distinguishable():
    rows = []
    for seed in (0, 1):
        rows += _run("one_shot", "a", seed, [(0.9, 0.8, 0.8 + 0.01 * seed, 10, 1)])
        rows += _run("constant", "b", seed, [(0.9, 0.8, 0.8 + 0.01 * seed, 5, 1)])
    rec = recommend(pd.DataFrame(rows), 0.9)
    assert rec.winner.strategy == "constant"  # same validation accuracy: the cheaper first
    assert "tie on validation" in rec.message
    assert not rec.comparison.distinguishable
    assert rec.comparison.difference == 0


def test_no_data_at_that_sparsity_names_the_nearest_points_instead():
    rec = recommend(_records(), 0.95, budget_epochs=40)
    assert rec.status == "no_data" and rec.winner is None
    assert rec.nearest and all(n["kind"] == "within_budget_nearest_sparsity" for n in rec.nearest)
    assert max(n["sparsity"] for n in rec.nearest) == pytest.approx(0.9)
    assert "no answer" in format_recommendation(rec)


def test_no_data_within_budget_names_the_cheapest_point_over_budget():
    rec = recommend(_records(), 0.9, budget_epochs=8)
    assert rec.status == "no_data"
    over = [n for n in rec.nearest if n["kind"] == "at_sparsity_over_budget"]
    assert {n["strategy"] for n in over} == {"one_shot", "geometric", "hybrid"}
    assert min(n["cost_epochs_max"] for n in over) == 10


def test_seeds_needed_shrinks_as_the_difference_grows():
    from tune_prune.recommend import Candidate

    def cand(name, accs):
        s = pd.Series(accs)
        return Candidate(name, name, name, len(accs), 0.9, float(s.mean()), float(s.std()), 0.0, 0.9, 1, 1, None,
                         dict(enumerate(accs)), [])

    base = [0.80, 0.82, 0.79, 0.81]
    noise = [0.01, -0.01, 0.012, -0.008]
    small = compare(cand("a", [x + 0.004 + e for x, e in zip(base, noise)]), cand("b", base))
    large = compare(cand("a", [x + 0.03 + e for x, e in zip(base, noise)]), cand("b", base))
    assert not small.distinguishable and large.distinguishable
    assert small.seeds_needed > large.seeds_needed >= 2


def test_budget_matched_frontier_and_pareto_front():
    records = _records()
    bm = fr.budget_matched(records, [15, 40], [0.9])
    at15 = bm[bm.budget == 15]
    assert list(at15.strategy) == ["one_shot"]
    at40 = bm[bm.budget == 40]
    assert set(at40.strategy) == {"one_shot", "geometric", "hybrid"}
    # a constant configuration as sparse and as accurate as one_shot, only costlier: dominated
    costly = sum((_run("constant", "co", seed, [(0.9, 0.79, 0.79 + 0.01 * seed, 12, 120)]) for seed in (0, 1, 2)), [])
    points = fr.config_points(pd.concat([records, pd.DataFrame(costly)], ignore_index=True), [0.5, 0.9])
    assert ("co", 0.9) in set(zip(points.config_key, points.sparsity_mean.round(2)))
    front = fr.pareto_front(points)
    # one_shot at 0.9 is cheapest (10 epochs); geometric is the most accurate at 0.9; hybrid is
    # less accurate than geometric at 0.9 but cheaper, so it stays; so do the cheap, less sparse
    # points geometric (0.5) and hybrid (0.63) passed on the way; one_shot at 0.5 is its 0.9
    # point again (it reached 0.5 only at 0.9) and counts once
    assert sorted(zip(front.config_key, front.sparsity_mean.round(2))) == [
        ("geo", 0.5), ("geo", 0.9), ("hy", 0.63), ("hy", 0.9), ("os", 0.9)]
