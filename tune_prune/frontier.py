"""Per-strategy metric-sparsity frontiers from per-event records. Pure pandas.

Input: one row per (trial, prune event) with at least the columns strategy,
trial_key, config_key, config, seed, event, sparsity, val_<metric>,
test_<metric>, cost_epochs (``tracking.load_records`` returns exactly that).
The metric is the task's (``tune_prune.metrics``): ``val_accuracy`` and
``test_accuracy`` for classification, ``val_perplexity`` and ``test_perplexity``
for a causal language model. Every function reads it from the frame's columns
(``metrics.of_columns``) unless given ``metric=``, and names its output columns
after it: ``val_<metric>_mean``, ``test_<metric>_mean``, ``test_<metric>_std``,
``test_<metric>_ci95``. Dense baseline rows have strategy ``dense``.

Rules (stated once, tested):
- A run contributes to sparsity level p through its FIRST event whose measured
  sparsity is >= p - 1e-4 (the spec's 0.01-point match between measured and
  scheduled sparsity; counts of weights rarely land exactly): the least-pruned model it produced
  that satisfies "at least p". So an iterative run aimed at 0.96 also yields a
  point at 0.8, at the cost it had spent when it got there.
- A configuration is a strategy's settings without the seed (config_key). Its
  point at p averages over its seeds.
- A strategy's frontier point at p is its configuration with the best mean
  VALIDATION metric (accuracy: highest; perplexity: lowest; ties: lower mean
  cost, then config_key); the test metric is reported for that choice, never
  used to make it. Only configurations with the
  most seeds at that point compete: one measured on fewer seeds (an adaptive
  search sample that was not confirmed, a grid point whose seed failed) cannot
  displace one measured on more.
- Spread over seeds: sample standard deviation and the half-width of a 95%
  Student-t confidence interval of the mean (0 with a single seed: unknown, and
  ``seeds`` says so).
- Budget-matched view: at budget B a configuration qualifies at level p only if
  EVERY one of its seeds reached p having spent at most B (cost_epochs, or any
  other cumulative cost column such as accelerator_seconds). Dropping the slow
  seeds instead would flatter patience runs.
- Measured ratios and speed: a point also carries the mean fraction of
  parameters (and, structured, MACs) actually removed, and the mean measured
  speed-ups of the final models; those speed figures belong to a point only where
  the run was AIMED at that level (its final model is the model at that level),
  and are NaN at levels an iterative run merely passed through.
- The authors' equal-budget view (``natural_budget``), a second budget view beside the
  cap-based one: at budget B, a strategy's point at level p is its configuration, among
  runs AIMED at p that no cap truncated (no event with patience_cut = 1, on any seed),
  whose natural cost (mean total epochs of the whole run) is closest to B. Nothing is
  cut to fit B, so the chosen run may have spent more than B, or less; the distance is
  reported beside it. Ties: better validation metric, then config_key.
- Pareto front: configuration points (mean sparsity, mean test metric, mean
  cost) not dominated by another point that is at least as sparse, at least as
  good on the test metric (in the metric's direction) and at most as costly,
  and strictly better in one of the three.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import pandas as pd
from scipy import stats

from tune_prune.metrics import ACCURACY, Metric, of_columns

DENSE = "dense"
TOLERANCE = 1e-4

#: final-model timings (see tracking.SPEED_METRICS) that frontier points carry where they apply
SPEED_COLUMNS = ("latency_ms", "dense_latency_ms", "latency_speedup", "throughput_speedup",
                 "csr_latency_speedup", "csr_throughput_speedup")



def frontier_columns(metric: Metric = ACCURACY) -> list[str]:
    """The columns every frontier frame starts with, named after ``metric``."""
    return [
        "strategy", "sparsity_level", "config", "config_key", "seeds", metric.column("val", "mean"),
        metric.column("test", "mean"), metric.column("test", "std"), metric.column("test", "ci95"),
        "sparsity_mean", "cost_epochs_mean", "cost_epochs_max",
    ]


#: the classification frontier's columns (CSV files and MLflow tables written before tasks existed)
FRONTIER_COLUMNS = frontier_columns(ACCURACY)


def _metric(frame: pd.DataFrame, metric: Metric | None) -> Metric:
    """The metric given, else the one the frame's columns carry."""
    return metric if metric is not None else of_columns(frame.columns)


@functools.lru_cache(maxsize=None)
def _t975(df: int) -> float:
    # scipy's ppf costs ~0.2 ms a call; a report computes one per configuration and level
    # (250,000 of them after a 500-trial sweep at 250 targets), for a handful of seed counts
    return float(stats.t.ppf(0.975, df))


def ci95_halfwidth(std: float, n: int) -> float:
    """Half-width of the 95% Student-t interval of a mean of ``n`` values; 0 when n < 2."""
    if n < 2 or std != std:  # NaN std
        return 0.0
    return _t975(int(n) - 1) * std / math.sqrt(n)


def default_levels(records: pd.DataFrame) -> list[float]:
    """The target sparsities the sweep asked for."""
    pruned = records[records["strategy"] != DENSE]
    return sorted(pruned["target_sparsity"].dropna().unique().tolist())


#: all_events: every event is a frontier point at the levels it reaches (module rules).
#: final_only: the authors' rule: geometric and hybrid runs count only with their final
#: event at their own target; one-shot and constant events only where they hit a level.
FRONTIER_RULES = ("all_events", "final_only")
FINAL_ONLY_STRATEGIES = ("geometric", "hybrid")


def level_points(records: pd.DataFrame, levels: Sequence[float], rule: str = "all_events") -> pd.DataFrame:
    """For every run and level, the run's first event reaching that level (see module rules and
    FRONTIER_RULES)."""
    if rule not in FRONTIER_RULES:
        raise ValueError(f"frontier rule must be one of {', '.join(FRONTIER_RULES)}, got {rule!r}")
    pruned = records[records["strategy"] != DENSE].sort_values(["trial_key", "event"])
    rows = []
    for level in levels:
        reached = pruned[pruned["sparsity"] >= level - TOLERANCE]
        if rule == "final_only":
            hits = (reached["sparsity"] - level).abs() <= TOLERANCE
            aimed = (reached["target_sparsity"] - level).abs() <= TOLERANCE
            # a strategy compared across criteria is named schedule+criterion: the rule is the schedule's
            final_only = reached["strategy"].str.split("+").str[0].isin(FINAL_ONLY_STRATEGIES)
            reached = reached[hits & (aimed | ~final_only)]
        first = reached.groupby("trial_key", sort=False).head(1)
        rows.append(first.assign(sparsity_level=level))
    if not rows:
        return pruned.assign(sparsity_level=pd.Series(dtype=float)).iloc[0:0]
    return pd.concat(rows, ignore_index=True)


def config_points(
    records: pd.DataFrame,
    levels: Sequence[float] | None = None,
    max_cost: float | None = None,
    cost_column: str = "cost_epochs",
    rule: str = "all_events",
    metric: Metric | None = None,
) -> pd.DataFrame:
    """Every configuration's point at every level, aggregated over its seeds.

    With ``max_cost``, a configuration is kept at a level only if all its seeds got
    there with ``cost_column`` <= max_cost (see the module rules).
    """
    m = _metric(records, metric)
    levels = default_levels(records) if levels is None else list(levels)
    points = level_points(records, levels, rule)
    if points.empty:
        return pd.DataFrame(columns=frontier_columns(m))
    std = m.column("test", "std")
    agg = {
        "config": ("config", "first"),
        "seeds": ("seed", "nunique"),
        m.column("val", "mean"): (m.val, "mean"),
        m.column("test", "mean"): (m.test, "mean"),
        std: (m.test, "std"),
        "sparsity_mean": ("sparsity", "mean"),
        "cost_epochs_mean": ("cost_epochs", "mean"),
        "cost_epochs_max": ("cost_epochs", "max"),
        "budget_cost_max": (cost_column, "max"),
    }
    for col in ("param_sparsity", "mac_sparsity", *SPEED_COLUMNS):
        if col in points.columns:
            agg[f"{col}_mean"] = (col, "mean")
    if SPEED_COLUMNS[0] in points.columns:
        passing = (points["target_sparsity"] - points["sparsity_level"]).abs() > TOLERANCE
        points = points.assign(**{c: points[c].mask(passing) for c in SPEED_COLUMNS if c in points.columns})
    if "accelerator_seconds" in points.columns:
        agg["accelerator_seconds_mean"] = ("accelerator_seconds", "mean")
        agg["accelerator_seconds_max"] = ("accelerator_seconds", "max")
    per_config = points.groupby(["strategy", "sparsity_level", "config_key"], sort=False).agg(**agg).reset_index()
    per_config[std] = per_config[std].fillna(0.0)
    per_config[m.column("test", "ci95")] = [ci95_halfwidth(sd, n)
                                            for sd, n in zip(per_config[std], per_config["seeds"])]
    if max_cost is not None:
        per_config = per_config[per_config["budget_cost_max"] <= max_cost]
    return per_config.drop(columns=["budget_cost_max"]).reset_index(drop=True)


def best_per_strategy(per_config: pd.DataFrame, metric: Metric | None = None) -> pd.DataFrame:
    """Each (strategy, level)'s configuration with the best mean validation metric, in the
    metric's direction."""
    m = _metric(per_config, metric)
    columns = frontier_columns(m)
    if per_config.empty:
        return pd.DataFrame(columns=columns)
    most = per_config.groupby(["strategy", "sparsity_level"])["seeds"].transform("max")
    per_config = per_config[per_config["seeds"] == most]
    best = (
        per_config.sort_values(
            ["strategy", "sparsity_level", m.column("val", "mean"), "cost_epochs_mean", "config_key"],
            ascending=[True, True, m.ascending, True, True],
        )
        .groupby(["strategy", "sparsity_level"], sort=False)
        .head(1)
    )
    extra = [c for c in best.columns if c not in columns]
    return best[columns + extra].sort_values(["sparsity_level", "strategy"]).reset_index(drop=True)


def frontier(records: pd.DataFrame, levels: Sequence[float] | None = None, rule: str = "all_events",
             metric: Metric | None = None) -> pd.DataFrame:
    """Each strategy's best configuration at each sparsity level (columns: ``frontier_columns(metric)``)."""
    m = _metric(records, metric)
    return best_per_strategy(config_points(records, levels, rule=rule, metric=m), m)


def budget_matched(
    records: pd.DataFrame,
    budgets: Sequence[float],
    levels: Sequence[float] | None = None,
    cost_column: str = "cost_epochs",
    rule: str = "all_events",
    metric: Metric | None = None,
) -> pd.DataFrame:
    """Frontier recomputed at each budget level B: only configurations that fit B compete."""
    m = _metric(records, metric)
    frames = []
    for b in budgets:
        points = config_points(records, levels, max_cost=b, cost_column=cost_column, rule=rule, metric=m)
        frames.append(best_per_strategy(points, m).assign(budget=b))
    if not frames:
        return pd.DataFrame(columns=frontier_columns(m) + ["budget"])
    return pd.concat(frames, ignore_index=True)


def natural_budget_columns(metric: Metric = ACCURACY) -> list[str]:
    """The columns of ``natural_budget``'s frame, named after ``metric``."""
    return ["budget", "strategy", "sparsity_level", "config", "config_key", "seeds", "natural_cost_epochs_mean",
            "distance_epochs", metric.column("val", "mean"), metric.column("test", "mean"),
            metric.column("test", "std"), metric.column("test", "ci95")]


NATURAL_BUDGET_COLUMNS = natural_budget_columns(ACCURACY)


def natural_budget(records: pd.DataFrame, budgets: Sequence[float],
                   levels: Sequence[float] | None = None, metric: Metric | None = None) -> pd.DataFrame:
    """The authors' equal-budget comparison (see module rules): per budget, strategy and level,
    the untruncated configuration whose natural total epochs are closest to the budget
    (columns: ``natural_budget_columns(metric)``; ties: better validation metric, then config_key)."""
    m = _metric(records, metric)
    columns = natural_budget_columns(m)
    val_mean, std = m.column("val", "mean"), m.column("test", "std")
    levels = default_levels(records) if levels is None else list(levels)
    pruned = records[records["strategy"] != DENSE]
    if pruned.empty or not budgets:
        return pd.DataFrame(columns=columns)
    cut = pruned["patience_cut"].fillna(0) if "patience_cut" in pruned else pd.Series(0.0, index=pruned.index)
    truncated = set(pruned.loc[cut > 0, "trial_key"])
    runs = pruned.sort_values(["trial_key", "event"]).groupby("trial_key", sort=False).tail(1)
    runs = runs.assign(truncated=runs["trial_key"].isin(truncated))
    frames = []
    for level in levels:
        aimed = runs[(runs["target_sparsity"] - level).abs() <= TOLERANCE]
        if aimed.empty:
            continue
        g = aimed.groupby(["strategy", "config_key"], sort=False)
        per = g.agg(**{"config": ("config", "first"), "seeds": ("seed", "nunique"),
                       "any_truncated": ("truncated", "any"), "natural_cost_epochs_mean": ("cost_epochs", "mean"),
                       val_mean: (m.val, "mean"), m.column("test", "mean"): (m.test, "mean"),
                       std: (m.test, "std")})
        per = per[~per["any_truncated"]].drop(columns="any_truncated").reset_index()
        if per.empty:
            continue
        per[std] = per[std].fillna(0.0)
        per[m.column("test", "ci95")] = [ci95_halfwidth(sd, n) for sd, n in zip(per[std], per["seeds"])]
        most = per.groupby("strategy")["seeds"].transform("max")
        per = per[per["seeds"] == most].assign(sparsity_level=level)
        for b in budgets:
            cand = per.assign(budget=float(b), distance_epochs=(per["natural_cost_epochs_mean"] - b).abs())
            best = (cand.sort_values(["strategy", "distance_epochs", val_mean, "config_key"],
                                     ascending=[True, True, m.ascending, True])
                    .groupby("strategy", sort=False).head(1))
            frames.append(best)
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    return out.sort_values(["sparsity_level", "budget", "strategy"]).reset_index(drop=True)


def pareto_front(per_config: pd.DataFrame, cost_column: str = "cost_epochs_mean",
                 metric: Metric | None = None) -> pd.DataFrame:
    """Configuration points not dominated in (sparsity up, test metric better in its direction, cost down)."""
    if per_config.empty:
        return per_config
    m = _metric(per_config, metric)
    pts = per_config.drop_duplicates(subset=["config_key", "sparsity_mean"]).reset_index(drop=True)
    s = pts["sparsity_mean"].to_numpy()
    a = m.score(pts[m.column("test", "mean")].to_numpy())  # larger is better from here on
    c = pts[cost_column].to_numpy()
    keep = []
    for i in range(len(pts)):
        dominated = ((s >= s[i]) & (a >= a[i]) & (c <= c[i]) & ((s > s[i]) | (a > a[i]) | (c < c[i]))).any()
        keep.append(not dominated)
    return pts[keep].sort_values(["sparsity_mean", cost_column]).reset_index(drop=True)


def dense_baseline(records: pd.DataFrame, metric: Metric | None = None) -> dict[str, float]:
    """Mean and standard deviation of the dense model's metric over seeds (keys
    ``test_<metric>_mean``, ``test_<metric>_std``, ``val_<metric>_mean``, ``seeds``)."""
    m = _metric(records, metric)
    test_mean, test_std, val_mean = m.column("test", "mean"), m.column("test", "std"), m.column("val", "mean")
    dense = records[records["strategy"] == DENSE]
    if dense.empty:
        return {test_mean: float("nan"), test_std: float("nan"), val_mean: float("nan"), "seeds": 0}
    std = dense[m.test].std()
    return {
        test_mean: float(dense[m.test].mean()),
        test_std: float(0.0 if pd.isna(std) else std),
        val_mean: float(dense[m.val].mean()),
        "seeds": int(dense["seed"].nunique()),
    }


def is_structured(front: pd.DataFrame) -> bool:
    """Structured sweeps log MAC fractions; their levels are channel ratios, not weight sparsities."""
    return "mac_sparsity_mean" in front.columns and bool(front["mac_sparsity_mean"].notna().any())


def pivot(front: pd.DataFrame, metric: Metric | None = None) -> pd.DataFrame:
    """Sparsity levels as rows, strategies as columns, 'mean ± std' of the test metric as cells
    (accuracy in percent, perplexity as it is)."""
    if front.empty:
        return pd.DataFrame()
    m = _metric(front, metric)
    means, stds = front[m.column("test", "mean")], front[m.column("test", "std")]
    cells = front.assign(cell=[f"{m.shown(a):.2f} ± {m.shown(s):.2f}" for a, s in zip(means, stds)])
    table = cells.pivot(index="sparsity_level", columns="strategy", values="cell").fillna("-")
    table.index = [f"{v:g}" for v in table.index]
    table.index.name = "channel ratio" if is_structured(front) else "sparsity"
    table.columns.name = None
    return table


def patience_cuts(records: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: how many of its patience-mode prune events the epoch cap ended while
    patience was still waiting (columns: strategy, patience_events, cut, cut_fraction).

    A strategy with cut events was not run under the patience protocol it names: what was
    measured is a fixed-budget comparison. Fixed-epoch events and the dense baseline do
    not count; strategies with no patience event are left out.
    """
    columns = ["strategy", "patience_events", "cut", "cut_fraction"]
    if records.empty or "patience_cut" not in records:
        return pd.DataFrame(columns=columns)
    rows = records[records["patience_cut"].notna() & (records["strategy"] != "dense")]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    g = rows.groupby("strategy")["patience_cut"]
    out = pd.DataFrame({"patience_events": g.size(), "cut": g.sum().astype(int)}).reset_index()
    out["cut_fraction"] = out["cut"] / out["patience_events"]
    return out[columns].sort_values("strategy").reset_index(drop=True)


def patience_cut_lines(records: pd.DataFrame) -> list[str]:
    """The warning a user must see before reading a frontier, one line per strategy whose
    patience the budget cut (empty when none was cut)."""
    cuts = patience_cuts(records)
    return [f"{r.strategy}: patience cut in {r.cut_fraction * 100:.0f}% of events ({r.cut} of {r.patience_events}): "
            "this is a fixed-budget comparison, not the patience protocol"
            for r in cuts.itertuples() if r.cut > 0]
