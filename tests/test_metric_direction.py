"""The analysis side asks the records which metric they carry and which way is better.

A causal-LM sweep's records carry val_perplexity/test_perplexity (lower is better) where a
classification sweep's carry val_accuracy/test_accuracy. Each test below would pass with
"higher is better" hard-wired only if it did not look at the direction; the perplexity
fixtures are built so that the highest-perplexity choice differs from the lowest one.
"""

import argparse
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from scipy import stats

from tune_prune import cli, metrics, report
from tune_prune import frontier as fr
from tune_prune.metrics import ACCURACY, PERPLEXITY
from tune_prune.recommend import format_recommendation, recommend


def _lm_rows(strategy, config_key, target, seed, events):
    """events: list of (sparsity, val perplexity, test perplexity, cost)."""
    return [
        dict(strategy=strategy, trial_key=f"{config_key}-{seed}", trial_name=f"{config_key}-{seed}",
             config_key=config_key, config=config_key, target_sparsity=target, seed=seed, event=i + 1, sparsity=s,
             val_perplexity=v, test_perplexity=t, val_loss=math.log(v), test_loss=math.log(t), cost_epochs=c,
             patience_cut=0.0, accelerator_seconds=10.0 * c, status="FINISHED")
        for i, (s, v, t, c) in enumerate(events)
    ]


@pytest.fixture
def lm_records():
    rows = []
    for seed, ppl in [(0, 20.0), (1, 21.0)]:
        rows += _lm_rows("dense", "d", 0.0, seed, [(0.0, ppl, ppl, 0)])
        rows[-1]["event"] = 0
    # one-shot at 0.5: "low" has the lowest validation perplexity but a worse test one than "test-lucky";
    # "high" has the highest validation perplexity (what a hard-wired "higher is better" would pick)
    rows += _lm_rows("one_shot", "low", 0.5, 0, [(0.5, 28.0, 35.0, 5)])
    rows += _lm_rows("one_shot", "low", 0.5, 1, [(0.5, 28.0, 36.0, 5)])
    rows += _lm_rows("one_shot", "test-lucky", 0.5, 0, [(0.5, 31.0, 29.0, 5)])
    rows += _lm_rows("one_shot", "test-lucky", 0.5, 1, [(0.5, 33.0, 30.0, 5)])
    rows += _lm_rows("one_shot", "high", 0.5, 0, [(0.5, 50.0, 51.0, 5)])
    rows += _lm_rows("one_shot", "high", 0.5, 1, [(0.5, 52.0, 53.0, 5)])
    # geometric aimed at 0.9, passing 0.5: two configurations, "g-good" the lower perplexity at both levels
    for seed in (0, 1):
        rows += _lm_rows("geometric", "g-good", 0.9, seed, [(0.5, 25.0 + seed, 26.0 + seed, 4),
                                                            (0.9, 40.0 + seed, 42.0 + seed, 9)])
        rows += _lm_rows("geometric", "g-bad", 0.9, seed, [(0.5, 45.0 + seed, 46.0 + seed, 4),
                                                           (0.9, 90.0 + seed, 95.0 + seed, 9)])
    return pd.DataFrame(rows)


# ---- the metric module ---------------------------------------------------------------------------

def test_the_metric_is_read_from_the_columns():
    assert metrics.of_columns(["val_perplexity", "test_perplexity"]) is PERPLEXITY
    assert metrics.of_columns(["test_perplexity_mean"]) is PERPLEXITY
    assert metrics.of_columns(["val_accuracy", "test_accuracy"]) is ACCURACY
    assert metrics.of_columns([]) is ACCURACY
    assert PERPLEXITY.ascending and not ACCURACY.ascending
    assert PERPLEXITY.score(30.0) > PERPLEXITY.score(40.0) and ACCURACY.score(0.9) > ACCURACY.score(0.8)
    assert PERPLEXITY.column("test", "ci95") == "test_perplexity_ci95"


# ---- frontier -------------------------------------------------------------------------------------

def test_classification_frontier_columns_are_pinned():
    # existing CSVs, MLflow tables and scripts read these names: a change must show here
    assert fr.FRONTIER_COLUMNS == [
        "strategy", "sparsity_level", "config", "config_key", "seeds", "val_accuracy_mean", "test_accuracy_mean",
        "test_accuracy_std", "test_accuracy_ci95", "sparsity_mean", "cost_epochs_mean", "cost_epochs_max"]
    assert fr.NATURAL_BUDGET_COLUMNS == [
        "budget", "strategy", "sparsity_level", "config", "config_key", "seeds", "natural_cost_epochs_mean",
        "distance_epochs", "val_accuracy_mean", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci95"]
    assert fr.frontier_columns(PERPLEXITY)[5:9] == [
        "val_perplexity_mean", "test_perplexity_mean", "test_perplexity_std", "test_perplexity_ci95"]


def test_frontier_picks_the_lowest_validation_perplexity_and_reports_its_test(lm_records):
    front = fr.frontier(lm_records, [0.5, 0.9])
    assert list(front.columns[:12]) == fr.frontier_columns(PERPLEXITY)
    assert not any("accuracy" in c for c in front.columns)
    picked = {(r.strategy, r.sparsity_level): r for r in front.itertuples()}
    one_shot = picked["one_shot", 0.5]
    # not "high" (highest val), and not "test-lucky" (better test, worse val)
    assert one_shot.config_key == "low"
    assert one_shot.val_perplexity_mean == 28.0
    assert one_shot.test_perplexity_mean == pytest.approx(35.5)
    assert one_shot.test_perplexity_std == pytest.approx(math.sqrt(0.5))
    assert one_shot.test_perplexity_ci95 == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2))
    assert picked["geometric", 0.5].config_key == "g-good"
    assert picked["geometric", 0.9].config_key == "g-good"
    assert picked["geometric", 0.9].test_perplexity_mean == pytest.approx(42.5)


def test_an_explicit_metric_overrides_the_columns(lm_records):
    # the same numbers read as "higher is better" pick the other end: the direction is what decides
    renamed = lm_records.rename(columns={"val_perplexity": "val_accuracy", "test_perplexity": "test_accuracy"})
    front = fr.frontier(renamed, [0.5])
    assert front.set_index("strategy").loc["one_shot", "config_key"] == "high"
    front = fr.frontier(renamed.rename(columns={"val_accuracy": "val_perplexity", "test_accuracy": "test_perplexity"}),
                        [0.5], metric=PERPLEXITY)
    assert front.set_index("strategy").loc["one_shot", "config_key"] == "low"


def test_budget_matched_keeps_the_direction(lm_records):
    matched = fr.budget_matched(lm_records, [4, 9], [0.5, 0.9])
    at = {(r.budget, r.strategy, r.sparsity_level): r.config_key for r in matched.itertuples()}
    assert at[4, "geometric", 0.5] == "g-good"
    assert (4, "one_shot", 0.5) not in at  # one-shot spent 5
    assert at[9, "one_shot", 0.5] == "low"
    assert "test_perplexity_mean" in matched.columns


def test_natural_budget_breaks_ties_on_the_lower_validation_perplexity(lm_records):
    out = fr.natural_budget(lm_records, [5.0], levels=[0.5])
    assert list(out.columns) == fr.natural_budget_columns(PERPLEXITY)
    # the three one-shot configurations cost the same: the distance ties, validation perplexity decides
    assert out.set_index("strategy").loc["one_shot", "config_key"] == "low"


def test_pareto_keeps_the_low_perplexity_point_and_drops_the_dominated_ones():
    # (sparsity, test perplexity, cost): "base" is beaten by "lower" (perplexity alone), by "sparser"
    # (sparsity alone) and "cheap" (cost alone); "worse" is as sparse as "sparser" but has a higher
    # perplexity and costs more. Read as "higher is better", "base" and "worse" would survive and
    # "lower" would fall.
    pts = [("base", 0.5, 40.0, 10), ("lower", 0.5, 30.0, 10), ("sparser", 0.7, 40.0, 10),
           ("cheap", 0.5, 40.0, 5), ("worse", 0.7, 45.0, 12)]
    per_config = pd.DataFrame([dict(strategy="s", sparsity_level=0.5, config_key=k, sparsity_mean=sp,
                                    test_perplexity_mean=p, cost_epochs_mean=c) for k, sp, p, c in pts])
    assert sorted(fr.pareto_front(per_config).config_key) == ["cheap", "lower", "sparser"]
    as_accuracy = per_config.rename(columns={"test_perplexity_mean": "test_accuracy_mean"})
    assert "lower" not in set(fr.pareto_front(as_accuracy).config_key)


def test_dense_baseline_and_pivot_speak_perplexity(lm_records):
    dense = fr.dense_baseline(lm_records)
    assert dense == {"test_perplexity_mean": 20.5, "test_perplexity_std": pytest.approx(math.sqrt(0.5)),
                     "val_perplexity_mean": 20.5, "seeds": 2}
    table = fr.pivot(fr.frontier(lm_records, [0.5, 0.9]))
    assert table.loc["0.5", "one_shot"] == "35.50 ± 0.71"  # as it is, not x100
    assert table.loc["0.9", "geometric"] == "42.50 ± 0.71"
    empty = fr.dense_baseline(lm_records[lm_records.strategy != "dense"])
    assert empty["seeds"] == 0 and set(empty) == {"test_perplexity_mean", "test_perplexity_std",
                                                  "val_perplexity_mean", "seeds"}


# ---- recommend ------------------------------------------------------------------------------------

def _lm_recommend_records(seeds=(0, 1, 2)):
    rows = []
    for seed in seeds:
        j = 0.5 * seed
        rows += _lm_rows("one_shot", "os", 0.9, seed, [(0.9, 60.0 + j, 62.0 + j, 10)])
        rows += _lm_rows("geometric", "geo", 0.9, seed, [(0.5, 25.0, 26.0, 5), (0.9, 30.0 + j, 31.0 + j, 30)])
        rows += _lm_rows("hybrid", "hy", 0.9, seed, [(0.6, 27.0, 27.0, 8), (0.9, 33.0 + j, 34.0 + j + 0.1 * seed, 20)])
    return pd.DataFrame(rows)


def test_recommend_winner_is_the_lowest_validation_perplexity():
    rec = recommend(_lm_recommend_records(), 0.9, budget_epochs=40)
    assert rec.status == "ok"
    assert [c.strategy for c in rec.candidates] == ["geometric", "hybrid", "one_shot"]
    assert (rec.winner.strategy, rec.runner_up.strategy) == ("geometric", "hybrid")
    assert rec.metric == "perplexity" and rec.higher_is_better is False
    assert rec.winner.test_mean == pytest.approx(31.5)
    assert rec.winner.per_seed_test == {0: 31.0, 1: 31.5, 2: 32.0}
    # winner minus runner-up: negative, because the winner's perplexity is lower
    assert rec.comparison.difference == pytest.approx(31.5 - (34.0 + 34.6 + 35.2) / 3)
    assert rec.comparison.difference < 0
    assert rec.comparison.method == "paired t-test"


def test_recommend_json_names_the_perplexity_fields():
    d = recommend(_lm_recommend_records(), 0.9, budget_epochs=40).to_dict()
    assert d["metric"] == "perplexity" and d["higher_is_better"] is False
    winner = d["winner"]
    assert winner["val_perplexity_mean"] == pytest.approx(30.5)
    assert winner["test_perplexity_mean"] == pytest.approx(31.5)
    for key in ("test_perplexity_std", "test_perplexity_ci95", "per_seed_test_perplexity"):
        assert key in winner
    for c in [winner, d["runner_up"], *d["candidates"]]:
        assert not any("accuracy" in k for k in c) and "val_mean" not in c and "per_seed_test" not in c
    json.dumps(d)  # what `tune-prune recommend --json` prints


def test_classification_json_keys_are_todays():
    rows = []
    for seed in (0, 1):
        rows += [dict(strategy=s, trial_key=f"{s}-{seed}", trial_name=f"{s}-{seed}", config_key=s, config=s,
                      target_sparsity=0.9, seed=seed, event=1, sparsity=0.9, val_accuracy=v + seed / 100,
                      test_accuracy=v, cost_epochs=5) for s, v in (("one_shot", 0.8), ("geometric", 0.85))]
    d = recommend(pd.DataFrame(rows), 0.9).to_dict()
    assert list(d) == ["sparsity", "budget_epochs", "budget_accelerator_seconds", "status", "winner", "runner_up",
                       "comparison", "candidates", "nearest", "message", "alpha", "power", "metric",
                       "higher_is_better"]
    assert (d["metric"], d["higher_is_better"]) == ("accuracy", True)
    assert list(d["winner"]) == ["strategy", "config", "config_key", "seeds", "val_accuracy_mean",
                                 "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci95", "sparsity_mean",
                                 "cost_epochs_mean", "cost_epochs_max", "accelerator_seconds_max",
                                 "per_seed_test_accuracy", "trials"]
    assert d["winner"]["strategy"] == "geometric"
    assert list(d["comparison"]) == ["method", "difference", "p_value", "distinguishable", "seeds_needed", "note"]


def test_recommendation_text_speaks_perplexity_not_accuracy():
    text = format_recommendation(recommend(_lm_recommend_records(), 0.9, budget_epochs=40))
    sd = pd.Series([31.0, 31.5, 32.0]).std()
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert f"test perplexity 31.50 (95% CI {31.5 - half:.2f}-{31.5 + half:.2f}, 3 seed(s))" in text
    assert "test perplexity (lower is better)" in text
    assert "difference -3.10 test perplexity (lower is better)" in text
    assert "by validation perplexity, lower is better" in text
    assert "accuracy" not in text and " pt " not in text
    assert "%" not in text.replace("95% CI", "")
    assert "val 30.50;" in text  # shown as it is, not x100


def test_a_perplexity_interval_is_clipped_at_one_not_at_a_hundred_percent():
    rows = []
    for seed, t in enumerate((1.05, 1.6, 3.0)):
        rows += _lm_rows("one_shot", "os", 0.9, seed, [(0.9, 2.0, t, 1)])
    text = format_recommendation(recommend(pd.DataFrame(rows), 0.9))
    assert "95% CI 1.00-" in text


def test_recommend_tie_and_nearest_follow_the_direction():
    rows = []
    for seed in (0, 1):
        rows += _lm_rows("one_shot", "a", 0.9, seed, [(0.9, 30.0, 31.0 + seed, 10)])
        rows += _lm_rows("constant", "b", 0.9, seed, [(0.9, 30.0, 31.0 + seed, 5)])
    tie = recommend(pd.DataFrame(rows), 0.9)
    assert tie.winner.strategy == "constant" and tie.message.startswith("tie on validation perplexity")
    rec = recommend(_lm_recommend_records(), 0.95, budget_epochs=40)
    assert rec.status == "no_data"
    # all three reached 0.9, equally far from 0.95: listed lowest validation perplexity first
    assert [n["strategy"] for n in rec.nearest] == ["geometric", "hybrid", "one_shot"]
    assert rec.nearest[0]["test_perplexity_mean"] == pytest.approx(31.5)
    text = format_recommendation(rec)
    assert "geometric at sparsity 0.9, test perplexity 31.50, cost up to 30 epochs" in text
    assert "accuracy" not in text and "%" not in text


# ---- report ---------------------------------------------------------------------------------------

def test_frontier_table_and_note_speak_perplexity(lm_records):
    front = fr.frontier(lm_records, [0.5, 0.9])
    text = report.format_frontier(front, fr.dense_baseline(lm_records), lm_records)
    assert "dense baseline (sparsity 0): test perplexity 20.50 ± 0.71 over 2 seed(s)" in text
    assert "test perplexity (lower is better) of each strategy's best configuration" in text
    assert "35.50 ± 0.71" in text
    assert "accuracy" not in text and "%" not in text
    note = report.markdown_note(lm_records, "RID", [0.5, 0.9])
    assert "#### Frontier: test perplexity (lower is better)" in note
    assert "Winner chosen on validation perplexity (lower is better)" in note
    assert "**Dense baseline:** 20.50 ± 0.71 test perplexity over 2 seed(s)." in note
    assert "accuracy" not in note
    recs = report.recommendation_table(lm_records, [0.5, 0.9], "all_events")
    assert list(recs.columns[:5]) == ["sparsity", "winner", "test perplexity", "runner-up", "difference"]
    assert recs.set_index("sparsity").loc["0.9", "winner"] == "geometric"
    assert "lower is better" in report.natural_budget_title(PERPLEXITY)
    assert report.natural_budget_title() == report.NATURAL_BUDGET_TITLE
    assert "test accuracy %" in report.NATURAL_BUDGET_TITLE


def test_frontier_plot_labels_and_values_are_perplexity(lm_records, tmp_path, monkeypatch):
    plt = report._pyplot()
    made = []
    real = plt.subplots

    def spy(*args, **kwargs):
        fig, ax = real(*args, **kwargs)
        made.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy)
    front = fr.frontier(lm_records, [0.5, 0.9])
    report.plot_frontier(front, fr.dense_baseline(lm_records), tmp_path / "frontier.png")
    ax = made[-1]
    assert ax.get_ylabel() == "test perplexity"
    assert ax.get_title().startswith("perplexity-sparsity frontier (lower is better")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "dense (20.5)" in labels
    geo = next(line for line in ax.get_lines() if line.get_label() == "geometric")
    assert list(geo.get_ydata()) == pytest.approx([26.5, 42.5])  # not x100
    report.plot_budget(fr.budget_matched(lm_records, [9], [0.5, 0.9]), [0.5, 0.9], tmp_path / "budget.png")
    assert made[-1][0][0].get_ylabel() == "test perplexity of best-on-val config"


def test_html_report_speaks_perplexity(lm_records, tmp_path):
    files = report.build_report(lm_records, tmp_path, "lm sweep", [0.5, 0.9])
    assert {f.name for f in files} >= {"frontier.csv", "pareto.csv", "report.html", "frontier.png"}
    page = (tmp_path / "report.html").read_text()
    assert "Pareto front (sparsity ↑, test perplexity ↓, fine-tuning epochs ↓)" in page
    assert "<th>test_perplexity_mean</th>" in page
    assert "Perplexity within a budget" in page
    assert "accuracy" not in page.lower()
    csv = pd.read_csv(tmp_path / "frontier.csv")
    assert list(csv.columns[:12]) == fr.frontier_columns(PERPLEXITY)


# ---- cli (MLflow replaced by the records it would return) -----------------------------------------

def _fake_sweep(monkeypatch, records):
    run = SimpleNamespace(info=SimpleNamespace(run_name="sweep-x", run_id="r1"), data=SimpleNamespace(tags={}))
    monkeypatch.setattr(cli, "_load_sweep", lambda args: ("uri", run, records))
    monkeypatch.setattr(cli, "_frontier_rule", lambda args, run: "all_events")


def test_cli_frontier_and_recommend_print_perplexity(lm_records, monkeypatch, capsys):
    _fake_sweep(monkeypatch, lm_records)
    args = argparse.Namespace(equal_budget="5", csv=None, frontier_rule=None)
    assert cli.cmd_frontier(args) == 0
    out = capsys.readouterr().out
    assert "perplexity: lower is better" in out and "test perplexity (lower is better) (natural epochs)" in out
    assert "accuracy" not in out
    args = argparse.Namespace(sparsity=0.9, budget_epochs=None, budget_gpu_hours=None, json=True,
                              experiment="e", frontier_rule=None)
    assert cli.cmd_recommend(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["metric"] == "perplexity" and payload["winner"]["strategy"] == "geometric"
    assert "test_perplexity_mean" in payload["winner"]
