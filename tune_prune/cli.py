"""`tune-prune` command line: parse, call, print. Exit 2 on bad input, 1 when trials failed."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Sequence

from tune_prune.spec import SpecError, SweepSpec, load_spec

EXIT_BAD_INPUT = 2


def _fail(msg: str) -> int:
    print(f"tune-prune: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def planned_epochs(spec: SweepSpec) -> tuple[int, int]:
    """(exact epochs of fixed-epoch trials, cap of patience trials): what validate prints."""
    fixed = cap = 0
    for t in spec.trials():
        if t.is_dense:
            continue
        if t.mode == "fixed":
            fixed += len(t.sparsities) * t.epochs_per_event
        else:
            cap += t.budget.epochs
    return fixed, cap


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, smoke_test=args.smoke_test)
    trials = spec.trials()
    per = Counter(t.schedule for t in trials)
    fixed, cap = planned_epochs(spec)
    print(f"{args.spec}: valid ({'smoke test, ' if args.smoke_test else ''}{len(trials)} trials)")
    print(f"  model {spec.model.name} on {spec.dataset.name}; budget {spec.budget.epochs} epochs per trial "
          f"({spec.budget.policy}); seeds {list(spec.seeds)}; target sparsities {list(spec.target_sparsities)}")
    for name, count in per.items():
        print(f"  {name:<10} {count:>4} trials")
    print(f"  planned fine-tuning: {fixed} epochs in fixed-epoch trials + at most {cap} in patience trials "
          f"= at most {fixed + cap} epochs; resources per trial: cpu {spec.resources.cpu}, gpu {spec.resources.gpu}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, smoke_test=args.smoke_test)  # validated before anything starts
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(args.tracking_uri), experiment=args.experiment,
                        address=args.address, smoke_test=args.smoke_test)
    print()
    print(outcome.summary)
    print()
    ok = outcome.n_trials - len(outcome.failed)
    print(f"{ok}/{outcome.n_trials} trials finished in {outcome.wall_seconds:.0f}s; MLflow experiment "
          f"'{outcome.experiment_name}', parent run {outcome.parent_run_id}")
    print(f"browse: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1")
    if outcome.failed:
        print(f"failed trials: {', '.join(outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from tune_prune import frontier as fr
    from tune_prune import report
    from tune_prune.tracking import find_sweep_run, load_records, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        run = find_sweep_run(uri, args.experiment, args.run_id)
    except LookupError as exc:
        return _fail(str(exc))
    records = load_records(uri, run.info.experiment_id, run.info.run_id)
    finished = records[records["status"] == "FINISHED"]
    front = fr.frontier(finished)
    print(f"sweep run {run.info.run_name} ({run.info.run_id}), {records['trial_key'].nunique()} trials")
    print(report.format_frontier(front, fr.dense_baseline(finished)))
    if args.csv:
        report.write_csv(front, args.csv)
        print(f"frontier written to {args.csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune-prune", description="Compare one-shot, iterative and hybrid "
                                "pruning under a compute budget (Ray Tune + MLflow).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="run a sweep spec on Ray Tune and record it in MLflow")
    s.add_argument("spec", help="sweep spec YAML (see search_spaces/)")
    s.add_argument("--smoke-test", action="store_true", help="apply the spec's smoke_test overrides (tiny run)")
    s.add_argument("--address", help="join an existing Ray cluster (e.g. 127.0.0.1:6379 or auto); default: local Ray")
    s.add_argument("--tracking-uri", help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    s.add_argument("--experiment", help="MLflow experiment name; default: the spec's name")
    s.set_defaults(func=cmd_sweep)

    v = sub.add_parser("validate", help="check a spec and print the planned trials and cost")
    v.add_argument("spec")
    v.add_argument("--smoke-test", action="store_true")
    v.set_defaults(func=cmd_validate)

    f = sub.add_parser("frontier", help="print the frontier of a recorded sweep, read back from MLflow")
    f.add_argument("--experiment", required=True)
    f.add_argument("--run-id", help="a specific sweep (parent) run; default: the newest")
    f.add_argument("--tracking-uri")
    f.add_argument("--csv", help="also write the frontier table to this CSV file")
    f.set_defaults(func=cmd_frontier)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
