"""Budget-constrained strategy recommendation. Pure: records in, a Recommendation out.

Protocol:
1. Candidates are configurations with a model at sparsity >= S (first event
   reaching S, per frontier rules) for which every seed spent at most the budget
   (fine-tuning epochs and/or accelerator-seconds).
2. Each strategy is represented by its configuration with the best mean
   VALIDATION metric (the task's: accuracy, highest; perplexity, lowest); the
   winner is the strategy whose representative has the best validation metric
   (ties: lower cost). The runner-up is the next strategy.
3. The claim is then checked on the TEST metric over seeds: a paired t-test when the
   two configurations share at least two seeds (same seed = same dense model and
   data order, so pairing removes that variance), else Welch's t-test when both
   have two or more seeds, else no test. "Distinguishable" means p < alpha.
4. Seeds needed: the normal-approximation sample size that would detect the
   observed difference with the observed spread at the given alpha and power.

A Candidate's fields are metric-neutral (val_mean, test_mean, ...);
``Recommendation.to_dict`` names them after the metric (val_accuracy_mean,
val_perplexity_mean, ...), which is what ``tune-prune recommend --json`` prints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from scipy import stats

from tune_prune import frontier as fr
from tune_prune.metrics import ACCURACY, METRICS, Metric, of_columns


@dataclass(frozen=True)
class Candidate:
    strategy: str
    config: str
    config_key: str
    seeds: int
    val_mean: float  # of the task's metric, over seeds
    test_mean: float
    test_std: float
    test_ci95: float  # half-width of the 95% CI of test_mean
    sparsity_mean: float
    cost_epochs_mean: float
    cost_epochs_max: float
    accelerator_seconds_max: float | None
    per_seed_test: dict[int, float]
    trials: list[str]


def _candidate_keys(metric: Metric) -> dict[str, str]:
    """Candidate field -> the key ``to_dict`` gives it (the metric's own column names)."""
    return {"val_mean": metric.column("val", "mean"), "test_mean": metric.column("test", "mean"),
            "test_std": metric.column("test", "std"), "test_ci95": metric.column("test", "ci95"),
            "per_seed_test": f"per_seed_{metric.test}"}


@dataclass(frozen=True)
class Comparison:
    method: str  # "paired t-test", "Welch t-test" or "none"
    difference: float  # winner minus runner-up, mean test metric (a better perplexity winner: negative)
    p_value: float | None
    distinguishable: bool
    seeds_needed: int | None  # per strategy, to detect this difference; None if not estimable
    note: str


@dataclass
class Recommendation:
    sparsity: float
    budget_epochs: float | None
    budget_accelerator_seconds: float | None
    status: str  # "ok", "single_strategy" or "no_data"
    winner: Candidate | None = None
    runner_up: Candidate | None = None
    comparison: Comparison | None = None
    candidates: list[Candidate] = field(default_factory=list)
    nearest: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    alpha: float = 0.05
    power: float = 0.8
    metric: str = ACCURACY.name  # the task's metric (tune_prune.metrics.METRICS)
    higher_is_better: bool = True

    @property
    def scored_by(self) -> Metric:
        return METRICS[self.metric]

    def to_dict(self) -> dict[str, Any]:
        """The JSON API: candidates' metric fields named after the metric (test_accuracy_mean,
        test_perplexity_mean, ...), plus ``metric`` and ``higher_is_better``."""
        keys = _candidate_keys(self.scored_by)
        out = asdict(self)
        for name in ("winner", "runner_up"):
            if out[name] is not None:
                out[name] = {keys.get(k, k): v for k, v in out[name].items()}
        out["candidates"] = [{keys.get(k, k): v for k, v in c.items()} for c in out["candidates"]]
        return out


def _candidate(row: pd.Series, points: pd.DataFrame, metric: Metric) -> Candidate:
    mine = points[points["config_key"] == row["config_key"]]
    accel = row.get("accelerator_seconds_max")
    return Candidate(
        strategy=row["strategy"],
        config=row["config"],
        config_key=row["config_key"],
        seeds=int(row["seeds"]),
        val_mean=float(row[metric.column("val", "mean")]),
        test_mean=float(row[metric.column("test", "mean")]),
        test_std=float(row[metric.column("test", "std")]),
        test_ci95=float(row[metric.column("test", "ci95")]),
        sparsity_mean=float(row["sparsity_mean"]),
        cost_epochs_mean=float(row["cost_epochs_mean"]),
        cost_epochs_max=float(row["cost_epochs_max"]),
        accelerator_seconds_max=None if accel is None or pd.isna(accel) else float(accel),
        per_seed_test={int(s): float(a) for s, a in zip(mine["seed"], mine[metric.test])},
        trials=sorted(mine["trial_name"]) if "trial_name" in mine.columns else [],
    )


def _z(p: float) -> float:
    return float(stats.norm.ppf(p))


def compare(a: Candidate, b: Candidate, alpha: float = 0.05, power: float = 0.8) -> Comparison:
    """Is a's test metric distinguishable from b's with the seeds available? (``difference``
    is a minus b; the tests are two-sided, so the metric's direction does not enter.)"""
    diff = a.test_mean - b.test_mean
    za = _z(1 - alpha / 2) + _z(power)
    common = sorted(set(a.per_seed_test) & set(b.per_seed_test))
    if len(common) >= 2:
        d = [a.per_seed_test[s] - b.per_seed_test[s] for s in common]
        sd = pd.Series(d).std()
        mean_d = sum(d) / len(d)
        if sd == 0:
            p = 1.0 if mean_d == 0 else 0.0
            note = ("every seed shows the same difference; with this few seeds that is as likely an "
                    "artefact of a coarse test set as a real effect") if mean_d != 0 else "identical on every seed"
            return Comparison("paired t-test", diff, p, mean_d != 0 and len(common) >= 3, None, note)
        p = float(stats.ttest_rel([a.per_seed_test[s] for s in common],
                                  [b.per_seed_test[s] for s in common]).pvalue)
        need = None if mean_d == 0 else max(2, math.ceil((za * sd / abs(mean_d)) ** 2))
        return Comparison("paired t-test", diff, p, p < alpha, need, f"paired over seeds {common}")
    if a.seeds >= 2 and b.seeds >= 2:
        pa, pb = list(a.per_seed_test.values()), list(b.per_seed_test.values())
        p = float(stats.ttest_ind(pa, pb, equal_var=False).pvalue)
        var = a.test_std**2 + b.test_std**2
        need = None if diff == 0 or var == 0 else max(2, math.ceil(za**2 * var / diff**2))
        return Comparison("Welch t-test", diff, None if p != p else p, p == p and p < alpha, need,
                          "seeds not shared, unpaired comparison")
    return Comparison("none", diff, None, False, None,
                      "one seed per configuration: the spread over seeds is unknown, so no difference can "
                      "be called real; run at least 3 seeds per strategy")


def _nearest(records: pd.DataFrame, sparsity: float, budget_epochs: float | None,
             budget_accel: float | None, rule: str = "all_events",
             metric: Metric | None = None) -> list[dict[str, Any]]:
    """What the experiment does have: the cheapest point at S per strategy, and the closest levels within
    budget (each entry's metric under its own name, ``test_<metric>_mean``)."""
    m = metric if metric is not None else of_columns(records.columns)
    test_mean, val_mean = m.column("test", "mean"), m.column("val", "mean")
    out: list[dict[str, Any]] = []
    at_s = fr.config_points(records, [sparsity], rule=rule, metric=m)
    if not at_s.empty:
        for strategy, part in at_s.groupby("strategy"):
            cheapest = part.sort_values("cost_epochs_max").iloc[0]
            out.append({"kind": "at_sparsity_over_budget", "strategy": strategy, "sparsity": sparsity,
                        "cost_epochs_max": float(cheapest["cost_epochs_max"]),
                        test_mean: float(cheapest[test_mean]), "config": cheapest["config"]})
    levels = sorted(set(fr.default_levels(records)) | set(records["sparsity"].round(4)))
    within = fr.config_points(records, levels, rule=rule, metric=m)
    if budget_epochs is not None:
        within = within[within["cost_epochs_max"] <= budget_epochs]
    if budget_accel is not None and "accelerator_seconds_max" in within.columns:
        within = within[within["accelerator_seconds_max"] <= budget_accel]
    if not within.empty:
        within = within.assign(distance=(within["sparsity_mean"] - sparsity).abs())
        # one configuration reaches many levels through the same event: list each model once
        within = within.drop_duplicates(subset=["config_key", "sparsity_mean"])
        for _, row in within.sort_values(["distance", val_mean], ascending=[True, m.ascending]).head(3).iterrows():
            out.append({"kind": "within_budget_nearest_sparsity", "strategy": row["strategy"],
                        "sparsity": float(row["sparsity_mean"]), "cost_epochs_max": float(row["cost_epochs_max"]),
                        test_mean: float(row[test_mean]), "config": row["config"]})
    return out


def recommend(
    records: pd.DataFrame,
    sparsity: float,
    budget_epochs: float | None = None,
    budget_accelerator_seconds: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    rule: str = "all_events",
    metric: Metric | None = None,
) -> Recommendation:
    """The best strategy at sparsity >= ``sparsity`` within the budget, and how sure that is.

    ``rule`` is the frontier rule (tune_prune.frontier.FRONTIER_RULES) that decides which events count;
    ``metric`` is the one the records carry unless given.
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    m = metric if metric is not None else of_columns(records.columns)
    rec = Recommendation(sparsity, budget_epochs, budget_accelerator_seconds, "no_data", alpha=alpha, power=power,
                         metric=m.name, higher_is_better=m.higher_is_better)
    pruned = records[records["strategy"] != fr.DENSE]
    per_config = fr.config_points(pruned, [sparsity], rule=rule, metric=m)
    if budget_epochs is not None:
        per_config = per_config[per_config["cost_epochs_max"] <= budget_epochs]
    if budget_accelerator_seconds is not None:
        if "accelerator_seconds_max" not in per_config.columns:
            raise ValueError("these records carry no accelerator_seconds; use an epoch budget")
        per_config = per_config[per_config["accelerator_seconds_max"] <= budget_accelerator_seconds]
    best = fr.best_per_strategy(per_config, m)
    if best.empty:
        rec.nearest = _nearest(pruned, sparsity, budget_epochs, budget_accelerator_seconds, rule, m)
        rec.message = "no configuration reached this sparsity within this budget"
        return rec
    points = fr.level_points(pruned, [sparsity], rule)
    ranked = best.sort_values([m.column("val", "mean"), "cost_epochs_mean"], ascending=[m.ascending, True])
    rec.candidates = [_candidate(row, points, m) for _, row in ranked.iterrows()]
    rec.winner = rec.candidates[0]
    if len(rec.candidates) == 1:
        rec.status = "single_strategy"
        rec.message = f"only {rec.winner.strategy} has a model at this sparsity within this budget"
        return rec
    rec.status = "ok"
    rec.runner_up = rec.candidates[1]
    rec.comparison = compare(rec.winner, rec.runner_up, alpha, power)
    if rec.winner.val_mean == rec.runner_up.val_mean:
        rec.message = f"tie on validation {m.name}; the cheaper strategy is listed first"
    return rec


def format_recommendation(rec: Recommendation) -> str:
    """Human-readable text for the CLI, in the recommendation's metric."""
    m = rec.scored_by
    budget = []
    if rec.budget_epochs is not None:
        budget.append(f"{rec.budget_epochs:g} fine-tuning epochs")
    if rec.budget_accelerator_seconds is not None:
        budget.append(f"{rec.budget_accelerator_seconds / 3600:g} accelerator-hours")
    head = f"sparsity >= {rec.sparsity:g}" + (f" within {' and '.join(budget)}" if budget else " (no budget limit)")
    lines = [f"recommendation at {head}:"]
    if rec.winner is None:
        lines.append(f"  no answer: {rec.message}.")
        if rec.nearest:
            lines.append("  nearest points in this experiment:")
            for n in rec.nearest:
                where = "over budget" if n["kind"] == "at_sparsity_over_budget" else "within budget"
                lines.append(f"    {where}: {n['strategy']} at sparsity {n['sparsity']:.4g}, test "
                             f"{_named(m)}{m.fmt(n[m.column('test', 'mean')])}, cost up to {n['cost_epochs_max']:g} "
                             f"epochs ({n['config']})")
        else:
            lines.append("  the experiment has no pruned model within this budget at any sparsity")
        return "\n".join(lines)

    def describe(label: str, c: Candidate) -> list[str]:
        lo, hi = m.interval(c.test_mean, c.test_ci95)
        ci = f"95% CI {lo:.2f}-{hi:.2f}" if c.seeds >= 2 else "no CI: 1 seed"
        return [f"  {label:<10} {c.strategy}  ({c.config})",
                f"             test {m.name} {m.fmt(c.test_mean)} ({ci}, {c.seeds} seed(s)); "
                f"val {m.fmt(c.val_mean)}; measured sparsity {c.sparsity_mean:.4f}; "
                f"cost {c.cost_epochs_mean:.1f} epochs (max {c.cost_epochs_max:g})"]

    lines += describe("winner:", rec.winner)
    if rec.runner_up is not None:
        lines += describe("runner-up:", rec.runner_up)
        cmp = rec.comparison
        verdict = "distinguishable" if cmp.distinguishable else "NOT distinguishable"
        pv = f"p = {cmp.p_value:.3g}" if cmp.p_value is not None else "no test possible"
        lines.append(f"  difference {m.shown(cmp.difference):+.2f}{' pt' if m.percent else ''} test {m.name}"
                     f"{'' if m.higher_is_better else f' ({m.direction})'}; {cmp.method}: {pv} -> {verdict} "
                     f"at alpha {rec.alpha:g}")
        if cmp.seeds_needed is not None and not cmp.distinguishable:
            lines.append(f"  about {cmp.seeds_needed} seeds per strategy would settle a difference this size "
                         f"(power {rec.power:g})")
        lines.append(f"  ({cmp.note})")
    if rec.message:
        lines.append(f"  note: {rec.message}")
    lines.append(f"  evidence: {len(rec.candidates)} strategies with a model at sparsity >= {rec.sparsity:g} "
                 f"within budget; best configuration each (by validation {m.name}"
                 f"{'' if m.higher_is_better else ', ' + m.direction}):")
    width = max([10, *(len(c.strategy) for c in rec.candidates)])  # schedule+criterion names are longer
    for c in rec.candidates:
        lines.append(f"    {c.strategy:<{width}} val {m.shown(c.val_mean):6.2f}  test {m.shown(c.test_mean):6.2f} "
                     f"± {m.shown(c.test_ci95):.2f}  cost {c.cost_epochs_mean:5.1f} epochs  seeds {c.seeds}  "
                     f"trials {', '.join(c.trials)}")
    return "\n".join(lines)


def _named(metric: Metric) -> str:
    """'' for accuracy (its lines read 'test 84.00 %', as they always have), 'perplexity ' otherwise."""
    return "" if metric == ACCURACY else f"{metric.name} "
