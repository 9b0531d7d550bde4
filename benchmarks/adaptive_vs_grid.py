"""Adaptive search vs the full grid on the same space: same recommendation, fewer epochs?

Runs the spec twice with real local Ray and a SQLite MLflow store in a work
directory: once as a grid (every combination on every seed) and once with
``search.mode: adaptive`` (Optuna samples per strategy and target, ASHA on
compression reached, the best configuration confirmed on the other seeds). For
each target sparsity it asks ``recommend`` (whole budget) of both sweeps and
prints, side by side: each winner with its test accuracy, whether they agree, the
fine-tuning epochs each sweep spent on trials aimed at that target, and the ratio
against the goal (adaptive <= 40% of the grid's epochs). Pretraining is shared
through the dense-model cache and left out of both counts.

    python benchmarks/adaptive_vs_grid.py [SPEC] [--workdir DIR] [--smoke-test]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tune_prune.recommend import recommend
from tune_prune.spec import parse_spec
from tune_prune.sweep import run_sweep
from tune_prune.tracking import USABLE_STATUSES, load_records, resolve_tracking_uri

GOAL = 0.40
#: issue 13: the adaptive sweep's wall time <= 1.25 x (its share of the grid's epochs) x the grid's wall time
WALL_GOAL = 1.25


def _epochs_by_target(records) -> dict[float, float]:
    pruned = records[(records["strategy"] != "dense") & records["status"].isin(USABLE_STATUSES)]
    last = pruned.sort_values("event").groupby("trial_key").tail(1)
    return last.groupby("target_sparsity")["cost_epochs"].sum().to_dict()


def _run(raw: dict, mode: str, smoke: bool, uri: str):
    raw = dict(raw)
    raw["search"] = {**raw.get("search", {}), "mode": mode}
    raw["name"] = f"{raw['name']}-{mode}"
    spec = parse_spec(raw, smoke_test=smoke)
    t0 = time.perf_counter()
    outcome = run_sweep(spec, tracking_uri=uri, smoke_test=smoke)
    wall = time.perf_counter() - t0
    client_records = load_records(uri, _experiment_id(uri, spec.name), outcome.parent_run_id)
    return spec, outcome, client_records[client_records["status"].isin(USABLE_STATUSES)], wall


def _experiment_id(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_experiment_by_name(name).experiment_id


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", default=str(here / "adaptive_vs_grid.yaml"))
    p.add_argument("--workdir", help="where the MLflow store, Ray results and cache go (default: a temp dir)")
    p.add_argument("--smoke-test", action="store_true", help="the spec's smoke_test overrides: a tiny run")
    args = p.parse_args(argv)

    raw = yaml.safe_load(Path(args.spec).read_text())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="adaptive_vs_grid-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    uri = resolve_tracking_uri(None)

    grid_spec, grid_out, grid_rec, grid_wall = _run(raw, "grid", args.smoke_test, uri)
    ad_spec, ad_out, ad_rec, ad_wall = _run(raw, "adaptive", args.smoke_test, uri)

    grid_epochs, ad_epochs = _epochs_by_target(grid_rec), _epochs_by_target(ad_rec)
    print()
    print(f"adaptive vs grid on {args.spec} ({'smoke test, ' if args.smoke_test else ''}"
          f"seeds {list(grid_spec.seeds)}, budget {grid_spec.budget.epochs} epochs per trial; work dir {work})")
    print(f"grid: {grid_rec['trial_key'].nunique()} trials, {grid_wall:.0f}s wall; adaptive: "
          f"{ad_rec['trial_key'].nunique()} trials, {ad_wall:.0f}s wall")
    header = (f"{'target':>6} | {'grid winner (test %)':<26} | {'adaptive winner (test %)':<26} | same | "
              f"{'grid ep':>7} | {'adapt ep':>8} | {'ratio':>5} | goal <= {GOAL:.0%}")
    print(header)
    print("-" * len(header))
    agree = met = 0
    for target in grid_spec.target_sparsities:
        g = recommend(grid_rec, target)
        a = recommend(ad_rec, target)
        gw = f"{g.winner.strategy} {g.winner.test_mean * 100:.2f}" if g.winner else "none"
        aw = f"{a.winner.strategy} {a.winner.test_mean * 100:.2f}" if a.winner else "none"
        same = bool(g.winner and a.winner and g.winner.strategy == a.winner.strategy)
        ge, ae = grid_epochs.get(target, 0.0), ad_epochs.get(target, 0.0)
        ratio = ae / ge if ge else float("nan")
        ok = same and ratio <= GOAL
        agree += same
        met += ok
        g_note = "" if not g.comparison else (" *" if not g.comparison.distinguishable else "")
        print(f"{target:>6g} | {gw + g_note:<26} | {aw:<26} | {'yes' if same else 'NO':>4} | {ge:>7.0f} | "
              f"{ae:>8.0f} | {ratio:>5.2f} | {'PASS' if ok else 'MISS'}")
    total_g, total_a = sum(grid_epochs.values()), sum(ad_epochs.values())
    print(f"{'all':>6} | {'':<26} | {'':<26} | {agree}/{len(grid_spec.target_sparsities)} | {total_g:>7.0f} | "
          f"{total_a:>8.0f} | {total_a / total_g if total_g else float('nan'):>5.2f} |")
    print("* the grid's own winner is not statistically distinguishable from its runner-up with these seeds,"
          " so a different adaptive winner there is within noise")
    share = total_a / total_g if total_g else float("nan")
    allowed = WALL_GOAL * share * grid_wall
    print(f"wall time: adaptive {ad_wall:.0f}s vs {WALL_GOAL:g} x its epoch share {share:.2f} x grid {grid_wall:.0f}s"
          f" = {allowed:.0f}s: {'PASS' if ad_wall <= allowed else 'MISS'} ({ad_wall / (share * grid_wall):.2f}x)")
    return 0 if met == len(grid_spec.target_sparsities) else 1


if __name__ == "__main__":
    sys.exit(main())
