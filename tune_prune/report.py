"""Frontier analysis -> printable tables, CSVs, PNG plots and a self-contained HTML page.

Every table, note and plot speaks the sweep's metric (``tune_prune.metrics``), read from
the frames' columns: accuracy in percent for classification, perplexity (lower is better)
for a causal language model.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tune_prune import frontier as fr
from tune_prune.metrics import ACCURACY, Metric, of_columns
from tune_prune.recommend import Recommendation, recommend

COLORS = {"one_shot": "tab:blue", "constant": "tab:orange", "geometric": "tab:green", "hybrid": "tab:red"}


def _metric(frame: pd.DataFrame | dict, metric: Metric | None = None) -> Metric:
    """The metric given, else the one a frame's columns (or a dense baseline's keys) carry."""
    return metric if metric is not None else of_columns(frame.keys())


def _test_label(m: Metric) -> str:
    """'test accuracy (%)'; 'test perplexity (lower is better)': only the less usual direction is spelled out."""
    return m.label("test") + ("" if m.higher_is_better else f" ({m.direction})")


def _short(m: Metric) -> str:
    """A narrow table column for the test metric."""
    return "test acc (%)" if m.name == "accuracy" else f"test {m.name}"


def _mean_std(m: Metric, mean: float, std: float) -> str:
    """'96.00 ± 1.41 %' or '37.41 ± 0.52'."""
    return f"{m.shown(mean):.2f} ± {m.shown(std):.2f}" + (" %" if m.percent else "")


def _dense_text(m: Metric, dense: dict[str, float]) -> str:
    """'test accuracy 96.00 ± 1.41 % over 2 seed(s)'."""
    mean, std = dense[m.column("test", "mean")], dense[m.column("test", "std")]
    return f"test {m.name} {_mean_std(m, mean, std)} over {dense['seeds']} seed(s)"


def format_frontier(front: pd.DataFrame, dense: dict[str, float], records: pd.DataFrame | None = None,
                    metric: Metric | None = None) -> str:
    """The table a sweep ends with: the test metric per sparsity and strategy, plus the dense baseline.

    With ``records``, strategies whose patience the budget cut are named first.
    """
    m = _metric(front if len(front.columns) else dense, metric)
    lines = fr.patience_cut_lines(records) if records is not None else []
    if dense.get("seeds"):
        lines.append(f"dense baseline (sparsity 0): {_dense_text(m, dense)}")
    table = fr.pivot(front, m)
    if table.empty:
        lines.append("no pruned trial finished: no frontier")
    else:
        lines.append(f"{_test_label(m)} of each strategy's best configuration (chosen on validation), "
                     "mean ± std over seeds:")
        lines.append(table.to_string())
        speed = speed_table(front, m)
        if not speed.empty:
            timed = any("speed-up" in c for c in speed.columns)
            lines.append("measured on the models" + (" (speed-up = dense time / pruned time of final models; "
                                                     "'-' = level passed on the way)" if timed else "") + ":")
            lines.append(speed.drop(columns=[_short(m)]).to_string(index=False))
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "-" if pd.isna(v) else f"{v * 100:.1f}"


def _times(v: float) -> str:
    return "-" if pd.isna(v) else f"{v:.2f}x"


def speed_table(front: pd.DataFrame, metric: Metric | None = None) -> pd.DataFrame:
    """The test metric next to what was removed and the measured speed of each frontier point's final models.

    Speed cells are '-' where the point is an intermediate event of a sparser run
    (its final model is not the model at that level) or where timing was off.
    """
    if front.empty or "latency_speedup_mean" not in front.columns:
        return pd.DataFrame()
    m = _metric(front, metric)
    rows, structured = [], fr.is_structured(front)
    level = "channel ratio" if structured else "sparsity"
    front = front.assign(metric_test_mean=front[m.column("test", "mean")])
    for r in front.sort_values(["sparsity_level", "strategy"]).itertuples():
        row = {
            level: f"{r.sparsity_level:g}",
            "strategy": r.strategy,
            _short(m): f"{m.shown(r.metric_test_mean):.2f}",
            "params removed (%)": _pct(getattr(r, "param_sparsity_mean", float("nan"))),
            "MACs removed (%)": _pct(getattr(r, "mac_sparsity_mean", float("nan"))),
            "latency ms (dense)": "-" if pd.isna(r.latency_ms_mean)
            else f"{r.latency_ms_mean:.3g} ({r.dense_latency_ms_mean:.3g})",
            "latency speed-up": _times(r.latency_speedup_mean),
            "throughput speed-up": _times(r.throughput_speedup_mean),
        }
        if front["csr_latency_speedup_mean"].notna().any():
            row["CSR latency speed-up"] = _times(r.csr_latency_speedup_mean)
            row["CSR throughput speed-up"] = _times(r.csr_throughput_speedup_mean)
        rows.append(row)
    table = pd.DataFrame(rows)
    empty = [c for c in table.columns[3:] if (table[c] == "-").all()]  # not measured in this sweep
    table = table.drop(columns=empty)
    if list(table.columns[3:]) == ["params removed (%)"] and not structured:
        return pd.DataFrame()  # unstructured with timing off: params removed is just the level again
    return table


def write_csv(front: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    front.to_csv(path, index=False)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(front: pd.DataFrame, dense: dict[str, float], path: str | Path, title: str = "",
                  metric: Metric | None = None) -> Path:
    """The test metric vs sparsity per strategy, 95% CI band over seeds, dense baseline dashed."""
    plt = _pyplot()
    m = _metric(front if len(front.columns) else dense, metric)
    test_mean, ci95 = m.column("test", "mean"), m.column("test", "ci95")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for strategy, part in front.groupby("strategy"):
        part = part.sort_values("sparsity_level")
        x = part["sparsity_level"] * 100
        mean = part[test_mean]
        half = part[ci95] if ci95 in part else 0 * mean
        band = [m.interval(a, h) for a, h in zip(mean, half)]  # clipped to what the metric can take
        color = COLORS.get(strategy)
        ax.plot(x, mean.map(m.shown), marker="o", label=strategy, color=color)
        ax.fill_between(x, [lo for lo, _ in band], [hi for _, hi in band], alpha=0.15, color=color)
    if dense.get("seeds"):
        base = dense[test_mean]
        ax.axhline(m.shown(base), color="black", linestyle="--", linewidth=1,
                   label=f"dense ({m.shown(base):.1f}{'%' if m.percent else ''})")
    if not front.empty:
        # scale to the means; with two or three seeds a 95% band can span most of the axis
        if m.percent:
            low = float(m.shown(front[test_mean].min()))
            ax.set_ylim(max(0.0, low - 0.25 * (100 - low) - 2), 100.5)
        else:
            values = [m.shown(v) for v in [*front[test_mean], dense.get(test_mean, float("nan"))] if v == v]
            low, high = min(values), max(values)
            if high > 10 * low:  # unbounded above: a heavily pruned model's perplexity can dwarf the dense one's
                ax.set_yscale("log")
                ax.set_ylim(low / 1.2, high * 1.5)
            else:
                pad = 0.25 * (high - low) + 0.5
                ax.set_ylim(max(m.floor, low - pad), high + pad)
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel(m.label("test"))
    direction = "" if m.higher_is_better else f"{m.direction}; "
    ax.set_title(title or f"{m.name}-sparsity frontier ({direction}band: 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left" if m.higher_is_better else "upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_budget(matched: pd.DataFrame, levels: Sequence[float], path: str | Path,
                metric: Metric | None = None) -> Path:
    """Best test metric reachable within each budget, one panel per sparsity level."""
    plt = _pyplot()
    m = _metric(matched, metric)
    path = Path(path)
    levels = list(levels)
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 3.6), dpi=110, squeeze=False)
    for ax, level in zip(axes[0], levels):
        part = matched[np.isclose(matched["sparsity_level"], level)]
        for strategy, s in part.groupby("strategy"):
            s = s.sort_values("budget")
            ax.plot(s["budget"], s[m.column("test", "mean")].map(m.shown), marker="o", drawstyle="steps-post",
                    label=strategy, color=COLORS.get(strategy))
        ax.set_title(f"sparsity >= {level:g}")
        ax.set_xlabel("budget (fine-tuning epochs)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{m.label('test')} of best-on-val config")
    axes[0][-1].legend(loc="lower right" if m.higher_is_better else "upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_cost(front: pd.DataFrame, path: str | Path) -> Path:
    """Fine-tuning epochs spent by each strategy's frontier configuration, per sparsity."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for strategy, part in front.groupby("strategy"):
        part = part.sort_values("sparsity_level")
        ax.plot(part["sparsity_level"] * 100, part["cost_epochs_mean"], marker="s", label=strategy,
                color=COLORS.get(strategy))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("fine-tuning epochs spent (mean over seeds)")
    ax.set_title("cost of each strategy's frontier point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def natural_budget_title(metric: Metric | None = None) -> str:
    """What ``natural_budget_table`` shows, in the metric's words."""
    m = metric if metric is not None else ACCURACY
    cell = f"test {m.name}" + (" %" if m.percent else f" ({m.direction})")
    return ("equal budget, the authors' method: at each budget, each strategy's configuration whose "
            f"natural total epochs (runs no cap truncated) are closest to it; cell: {cell} (natural epochs)")


NATURAL_BUDGET_TITLE = natural_budget_title()


def natural_budget_table(table: pd.DataFrame, metric: Metric | None = None) -> pd.DataFrame:
    """(sparsity, budget) rows, strategies as columns, 'metric (epochs)' cells, from fr.natural_budget."""
    if table.empty:
        return pd.DataFrame()
    m = _metric(table, metric)
    cells = table.assign(cell=[f"{m.shown(a):.2f} ({c:.0f})" for a, c in
                               zip(table[m.column("test", "mean")], table["natural_cost_epochs_mean"])],
                         sparsity=[f"{v:g}" for v in table["sparsity_level"]],
                         budget_epochs=[f"{v:g}" for v in table["budget"]])
    out = cells.pivot_table(index=["sparsity", "budget_epochs"], columns="strategy", values="cell",
                            aggfunc="first", sort=False).fillna("-")
    out.columns.name = None
    return out


def budget_levels(records: pd.DataFrame, n: int = 6) -> list[float]:
    """Budgets to show: evenly spread from the cheapest to the most expensive trial."""
    pruned = records[records["strategy"] != fr.DENSE]
    if pruned.empty:
        return []
    hi = float(pruned["cost_epochs"].max())
    return sorted({float(round(v)) for v in np.linspace(max(1.0, hi / n), hi, n)})


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def recommendations(finished: pd.DataFrame, levels: Sequence[float], rule: str,
                    metric: Metric | None = None) -> dict[float, Recommendation]:
    """recommend() (whole budget) at each level, computed once for the tables, the note and the
    models linked to the sweep, which all show it: each call costs tens of ms of pandas work."""
    m = _metric(finished, metric)
    return {level: recommend(finished, level, rule=rule, metric=m) for level in levels}


def recommendation_table(finished: pd.DataFrame, levels: Sequence[float], rule: str,
                         front: pd.DataFrame | None = None, metric: Metric | None = None,
                         by_level: dict[float, Recommendation] | None = None) -> pd.DataFrame:
    """One row per target sparsity: winner, its test metric, runner-up, difference, p, distinguishable.
    ``by_level``: recommendations() of the same records, if already computed."""
    m = _metric(finished, metric)
    if front is None:
        front = fr.frontier(finished, levels, rule, metric=m)
    if front.empty:
        return pd.DataFrame()
    by_level = by_level or {}
    rows = []
    for level in levels:
        rec = by_level[level] if level in by_level else recommend(finished, level, rule=rule, metric=m)
        if rec.winner is None:
            continue
        cmp = rec.comparison
        rows.append({
            "sparsity": f"{level:g}",
            "winner": rec.winner.strategy,
            _short(m): f"{m.shown(rec.winner.test_mean):.2f} ± {m.shown(rec.winner.test_ci95):.2f}",
            "runner-up": rec.runner_up.strategy if rec.runner_up else "-",
            ("difference (pt)" if m.percent else "difference"): f"{m.shown(cmp.difference):+.2f}" if cmp else "-",
            "p": f"{cmp.p_value:.3g}" if cmp and cmp.p_value is not None else "-",
            "distinguishable": ("yes" if cmp.distinguishable else "no") if cmp else "-",
            "winner config": rec.winner.config,
        })
    return pd.DataFrame(rows)


def recommended_trials(finished: pd.DataFrame, levels: Sequence[float], rule: str,
                       by_level: dict[float, Recommendation] | None = None) -> list[str]:
    """Names of the trials behind each level's winner that were aimed at that level (their final
    model is the model at that level), in level order, each once. ``by_level``: as recommendation_table's."""
    out: list[str] = []
    if finished.empty:
        return out
    by_level = by_level or {}
    targets = finished.drop_duplicates("trial_name").set_index("trial_name")["target_sparsity"]
    for level in levels:
        rec = by_level[level] if level in by_level else recommend(finished, level, rule=rule)
        if rec.winner is None:
            continue
        out += [t for t in rec.winner.trials if abs(float(targets.get(t, -1)) - level) < 1e-9 and t not in out]
    return out


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a GitHub-flavoured markdown table (what MLflow's run description renders)."""
    if index:
        df = df.reset_index()
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def spent_lines(records: pd.DataFrame, params: dict[str, str], metrics: dict[str, float]) -> list[str]:
    """What the sweep spent, from its records and its parent run's params and metrics."""
    last = records.sort_values("event").groupby("trial_key").tail(1)
    pruned = last[last["strategy"] != fr.DENSE]
    lines = []
    budget = params.get("budget_epochs")
    if budget == "unbounded":  # the paper's patience protocol: no per-trial budget
        lines.append("budget per trial: none (patience alone ends each event)")
    elif budget is not None:
        policy = f" ({params['budget_policy']})" if "budget_policy" in params else ""
        lines.append(f"budget per trial: {budget} fine-tuning epochs{policy}")
    if not pruned.empty:
        lines.append(f"fine-tuning spent: {pruned['cost_epochs'].sum():g} epochs over {len(pruned)} pruned trials "
                     f"(most in one trial: {pruned['cost_epochs'].max():g})")
    if "pretrain_epochs_total" in metrics:
        lines.append(f"pretraining: {metrics['pretrain_epochs_total']:g} epochs "
                     "(paid once per dense model, outside the trials' budget)")
    accel = metrics.get("trials_accelerator_seconds_total")
    if accel is not None:
        unit = "GPU" if float(params.get("gpu_per_trial", 0) or 0) > 0 else "core"
        lines.append(f"accelerator time in trials: {accel:.1f} {unit}-seconds")
    if "sweep_wall_seconds" in metrics:
        failed = int(metrics.get("trials_failed", 0))
        lines.append(f"sweep wall time: {metrics['sweep_wall_seconds']:.0f} s; {records['trial_key'].nunique()} trials "
                     f"recorded, {failed} failed")
    return lines


def markdown_note(records: pd.DataFrame, run_id: str, levels: Sequence[float] | None = None,
                  rule: str = "all_events", params: dict[str, str] | None = None,
                  metrics: dict[str, float] | None = None, by_level: dict[float, Recommendation] | None = None) -> str:
    """The sweep's answer as markdown for its parent run's description in MLflow.

    The recommendation at each target sparsity first (MLflow shows the top of a long
    description and folds the rest), then the frontier table, the dense baseline, the
    budget spent and the frontier plot (the run's own ``frontier.png`` artifact).
    """
    finished = records[records["status"].isin(("FINISHED", "KILLED"))] if "status" in records else records
    m = of_columns(records.columns)
    levels = fr.default_levels(finished) if levels is None else list(levels)
    front = fr.frontier(finished, levels, rule, metric=m)
    dense = fr.dense_baseline(finished, m)
    out = ["#### Recommendation per target sparsity"]  # blocks, joined by blank lines
    recs = recommendation_table(finished, levels, rule, front, m, by_level)
    if recs.empty:
        out.append("No strategy has a model at the target sparsities yet.")
    else:
        direction = "" if m.higher_is_better else f" ({m.direction})"
        out += [markdown_table(recs.drop(columns=["winner config"])),
                f"Winner chosen on validation {m.name}{direction}; test {m.name} is the mean ± 95% CI half-width "
                "over seeds; the difference to the runner-up is tested over seeds (paired t-test where seeds are "
                "shared): *distinguishable: no* means the seeds cannot separate the two."]
    if dense.get("seeds"):
        mean, std = dense[m.column("test", "mean")], dense[m.column("test", "std")]
        out.append(f"**Dense baseline:** {_mean_std(m, mean, std)} test {m.name} over {dense['seeds']} seed(s).")
    else:
        out.append("**Dense baseline:** none finished.")
    out += [f"**Warning:** {line}" for line in fr.patience_cut_lines(finished)]
    out.append(f"#### Frontier: {_test_label(m)} of each strategy's best configuration")
    pivot = fr.pivot(front, m)
    out.append(markdown_table(pivot, index=True) if not pivot.empty else "No pruned trial finished: no frontier.")
    spent = spent_lines(records, params or {}, metrics or {})
    if spent:
        out += ["#### Budget spent", "\n".join(f"- {line}" for line in spent)]
    out += [f"![frontier](get-artifact?path=frontier.png&run_uuid={run_id})",
            f"Frontier rule: `{rule}`. Artifacts: `report.html` (all tables and plots), `frontier.csv`, "
            "`frontier_table.json`, `events.csv`. Other budgets: `tune-prune recommend --sparsity S --budget-epochs B`."]
    return "\n\n".join(out) + "\n"


def build_report(records: pd.DataFrame, out_dir: str | Path, title: str,
                 levels: Sequence[float] | None = None, rule: str = "all_events",
                 by_level: dict[float, Recommendation] | None = None) -> list[Path]:
    """Write every report file for one sweep into ``out_dir``; return their paths. ``by_level``: the
    recommendations() of its finished records, if already computed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = records[records["status"].isin(("FINISHED", "KILLED"))] if "status" in records else records
    m = of_columns(records.columns)
    levels = fr.default_levels(finished) if levels is None else list(levels)
    front = fr.frontier(finished, levels, rule, metric=m)
    dense = fr.dense_baseline(finished, m)
    per_config = fr.config_points(finished, levels, rule=rule, metric=m)
    budgets = budget_levels(finished)
    matched = fr.budget_matched(finished, budgets, levels, rule=rule, metric=m)
    pareto = fr.pareto_front(per_config, metric=m)
    natural = fr.natural_budget(finished, budgets, levels, metric=m)

    files = [
        write_csv(fr.patience_cuts(finished), out / "patience_cuts.csv"),
        write_csv(front, out / "frontier.csv"),
        write_csv(matched, out / "budget_matched.csv"),
        write_csv(pareto, out / "pareto.csv"),
        write_csv(natural, out / "natural_budget.csv"),
        plot_frontier(front, dense, out / "frontier.png", title=title, metric=m),
        plot_cost(front, out / "cost.png"),
    ]
    shown = levels[-4:] if len(levels) > 4 else levels
    files.append(plot_budget(matched, shown, out / "budget.png", metric=m))

    recs = recommendation_table(finished, levels, rule, front, m, by_level)
    pivot = fr.pivot(front, m)
    speed = speed_table(front, m)
    if dense.get("seeds"):
        mean, std = dense[m.column("test", "mean")], dense[m.column("test", "std")]
        dense_line = f"Dense baseline: {_mean_std(m, mean, std)} test {m.name} over {dense['seeds']} seed(s)."
    else:
        dense_line = "No dense baseline finished."
    direction = "" if m.higher_is_better else f" ({m.direction})"
    natural_title = natural_budget_title(m)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:100%;margin:0.5em 0}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(dense_line)} {finished['trial_key'].nunique()} finished trials.
Each strategy's point at a sparsity is its configuration with the best mean validation {m.name}{direction} among
runs that reached at least that sparsity; test {m.name} is reported as mean ± 95% CI half-width over seeds.
Frontier rule: {html.escape(rule)}.</p>
{"".join(f'<p class="warn"><b>{html.escape(line)}</b></p>' for line in fr.patience_cut_lines(finished))}
<h2>Frontier</h2>{_img(out / "frontier.png")}
{pivot.to_html() if not pivot.empty else "<p>no frontier</p>"}
<h2>What the pruned models buy: measured inference speed</h2>
{speed.to_html(index=False) if not speed.empty else "<p>no timings recorded</p>"}
<p>Each final model was timed against the dense model on the trial's own device: median batch-1 latency
and throughput at the spec's <code>speed.batch_size</code>, after warm-up, dense and pruned interleaved.
Speed-up = dense time / pruned time. Unstructured zeros run on dense kernels; the CSR columns store
sparse-enough Linear layers in CSR format. "-": the point is an intermediate event of a sparser run.</p>
<h2>Recommendation per sparsity (whole budget)</h2>
{recs.to_html(index=False) if not recs.empty else "<p>none</p>"}
<p>Winner chosen on validation {m.name}; the difference to the runner-up is tested on test {m.name} over
seeds (paired t-test where seeds are shared). "no" means the seeds cannot separate them. Use
<code>tune-prune recommend --sparsity S --budget-epochs B</code> for other budgets.</p>
<h2>{m.name.capitalize()} within a budget</h2>{_img(out / "budget.png")}
<p>Cap-based view: at budget B a configuration counts only if every seed reached the sparsity having spent at most B.</p>
<h2>Equal budget, the authors' method</h2>
<p>{html.escape(natural_title[0].upper() + natural_title[1:])}. Nothing is cut to fit the budget,
so a point may have cost more or less than it.</p>
{natural_budget_table(natural, m).to_html() if not natural.empty else "<p>no untruncated runs</p>"}
<h2>Cost</h2>{_img(out / "cost.png")}
<h2>Pareto front (sparsity ↑, test {m.name} {m.arrow}, fine-tuning epochs ↓)</h2>
{pareto[["strategy", "config", "sparsity_mean", m.column("test", "mean"), "cost_epochs_mean", "seeds"]].to_html(index=False) if not pareto.empty else "<p>empty</p>"}
</body></html>
"""
    page_path = out / "report.html"
    page_path.write_text(page)
    files.append(page_path)
    return files
