"""The paper's patience protocol next to a fixed-budget study of the same setup (issue 11).

Runs (or reads back) the two Fashion-MNIST LeNet-300-100 studies,
``search_spaces/fashion_mnist_lenet_paper.yaml`` (no per-trial budget: patience alone
ends each event) and ``fashion_mnist_lenet_budget.yaml`` (60 epochs per trial), with
real local Ray and a SQLite MLflow store in a work directory; they share their dense
models through the cache. Then it prints, for each study: the frontier (test accuracy,
mean ± std over seeds, each strategy's configuration chosen on validation), the share of
events whose epoch cap cut patience per strategy, the epochs each strategy spent, the
recommendation at each target, and, for the paper study, the authors' equal-budget view.

    python benchmarks/two_studies.py [--workdir DIR] [--smoke-test]   # runs both sweeps
    python benchmarks/two_studies.py --read-only --workdir DIR        # reads a finished pair back

On the project's 2-core VM the pair takes tens of minutes (the paper study ~3,000 epochs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tune_prune import frontier as fr
from tune_prune.recommend import recommend
from tune_prune.report import natural_budget_table
from tune_prune.spec import load_spec
from tune_prune.tracking import USABLE_STATUSES, find_sweep_run, load_records, resolve_tracking_uri

SPECS = Path(__file__).resolve().parent.parent / "search_spaces"
STUDIES = ("fashion_mnist_lenet_paper.yaml", "fashion_mnist_lenet_budget.yaml")


def _records(uri: str, experiment: str) -> pd.DataFrame:
    run = find_sweep_run(uri, experiment)
    records = load_records(uri, run.info.experiment_id, run.info.run_id)
    return records[records["status"].isin(USABLE_STATUSES)]


def _spent(records: pd.DataFrame) -> pd.DataFrame:
    last = records[records["strategy"] != fr.DENSE].sort_values("event").groupby("trial_key").tail(1)
    g = last.groupby("strategy")["cost_epochs"]
    return pd.DataFrame({"trials": g.size(), "epochs_total": g.sum(), "epochs_per_trial_max": g.max()})


def describe(name: str, records: pd.DataFrame, rule: str, levels: list[float]) -> str:
    """The block printed for one study."""
    lines = [f"=== {name} (frontier rule {rule}) ==="]
    dense = fr.dense_baseline(records)
    lines.append(f"dense baseline: test accuracy {dense['test_accuracy_mean'] * 100:.2f} ± "
                 f"{dense['test_accuracy_std'] * 100:.2f} % over {dense['seeds']} seed(s)")
    lines.append(fr.pivot(fr.frontier(records, levels, rule)).to_string())
    cuts = fr.patience_cuts(records).set_index("strategy")
    spent = _spent(records).join(cuts[["cut", "patience_events", "cut_fraction"]])
    spent["cut_fraction"] = [f"{v * 100:.0f} %" for v in spent["cut_fraction"]]
    lines.append("epochs spent and patience cut per strategy:\n" + spent.to_string())
    for level in levels:
        rec = recommend(records, level, rule=rule)
        if rec.winner is None:
            lines.append(f"at {level:g}: no recommendation")
            continue
        cmp, w = rec.comparison, rec.winner
        versus = (f" over {rec.runner_up.strategy} by {cmp.difference * 100:+.2f} pt, p = "
                  f"{'-' if cmp.p_value is None else f'{cmp.p_value:.2g}'} "
                  f"({'distinguishable' if cmp.distinguishable else 'NOT distinguishable'})") if cmp else ""
        lines.append(f"at {level:g}: {w.strategy} {w.test_accuracy_mean * 100:.2f} %{versus}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where the MLflow store, runs and dense cache go (default: a temp dir)")
    ap.add_argument("--smoke-test", action="store_true", help="the specs' smoke_test overrides: seconds, not minutes")
    ap.add_argument("--read-only", action="store_true", help="read a finished pair back from --workdir's store")
    ap.add_argument("--equal-budgets", default="50,100,200,400", help="budgets of the authors' equal-budget view")
    args = ap.parse_args(argv)
    if args.read_only and not args.workdir:
        ap.error("--read-only needs --workdir")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="two_studies_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the specs' relative storage_path and cache_dir land here
    uri = resolve_tracking_uri(None)
    specs = [load_spec(SPECS / name, smoke_test=args.smoke_test) for name in STUDIES]
    if not args.read_only:
        from tune_prune.sweep import run_sweep

        for spec in specs:
            t0 = time.perf_counter()
            outcome = run_sweep(spec, tracking_uri=uri, smoke_test=args.smoke_test)
            print(f"{spec.name}: {outcome.n_trials} trials in {time.perf_counter() - t0:.0f} s, "
                  f"{len(outcome.failed)} failed", file=sys.stderr)
    budgets = [float(b) for b in args.equal_budgets.split(",")]
    for spec in specs:
        records = _records(uri, spec.name)
        levels = list(spec.target_sparsities)
        print(describe(spec.name, records, spec.frontier_rule, levels))
        if spec.budget.unbounded:
            table = fr.natural_budget(records, budgets, levels)
            print("equal budget, the authors' method (test accuracy % (natural epochs)):")
            print(natural_budget_table(table).to_string() if not table.empty else "  no untruncated runs")
        print()
    print(f"store: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
