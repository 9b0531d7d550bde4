"""`tune-prune` command line: parse, call, print. Exit 2 on bad input, 1 when trials failed."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Sequence

from tune_prune.frontier import FRONTIER_RULES
from tune_prune.spec import SpecError, load_spec

EXIT_BAD_INPUT = 2
FRONTIER_RULE_CHOICES = FRONTIER_RULES


def _fail(msg: str) -> int:
    print(f"tune-prune: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_experiment(name: str | None) -> None:
    from tune_prune.schema import NAME_RULE, is_safe_name

    if name is not None and not is_safe_name(name):
        raise SpecError("--experiment", f"{NAME_RULE}, got {name!r}")


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from tune_prune.schema import json_schema

    print(json.dumps(json_schema(), indent=2 if not args.compact else None))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    spec = load_spec(args.spec, smoke_test=args.smoke_test, check_data=not args.no_data_check)
    trials = spec.trials()
    per = Counter(t.strategy for t in trials)
    plan = spec.planned_cost()
    if spec.search.mode == "adaptive":
        sr = spec.search
        brackets = len(spec.strategies) * len(spec.target_sparsities)
        print(f"{args.spec}: valid ({'smoke test, ' if args.smoke_test else ''}adaptive search: {brackets} "
              f"(strategy, sparsity) brackets x up to {sr.num_samples} Optuna samples on seed {spec.seeds[0]}, "
              f"ASHA (grace {sr.grace_period:g} doublings, factor {sr.reduction_factor}), top {sr.confirm_top} "
              f"re-run on {len(spec.seeds) - 1} more seed(s); {len(trials)} dense baselines)")
    else:
        print(f"{args.spec}: valid ({'smoke test, ' if args.smoke_test else ''}{len(trials)} trials)")
    m = spec.model
    start = (f"starts from checkpoint {m.checkpoint}" + (f" (sha256 {m.checkpoint_sha256[:12]})" if m.checkpoint_sha256 else "")
             if m.checkpoint else "starts from library weights" if m.starts_from_weights else "starts from a random init")
    dense = "used as it is" if spec.pretrain.epochs == 0 else f"trained {spec.pretrain.epochs} epochs per seed"
    print(f"  model: {m.name} ({m.source}); {start}; dense model {dense}")
    if spec.prune_include or spec.prune_exclude:
        print(f"  pruned layers: include {list(spec.prune_include) or 'all'}, exclude {list(spec.prune_exclude)}")
    print(f"  data {spec.dataset.name}; budget per trial {spec.budget.label()}; seeds {list(spec.seeds)}; "
          f"target sparsities {list(spec.target_sparsities)}")
    metric = spec.metric
    print(f"  task {spec.task}: scored by {metric.name} ({metric.direction}); criteria "
          f"{', '.join(spec.criteria or (spec.criterion,))}")
    width = max([10, *map(len, per)])
    for name, count in per.items():
        print(f"  {name:<{width}} {count:>4} trials")
    for name, count in spec.left_out().items():
        print(f"  {name:<10} {count:>4} grid points left out: first_sparsity is not below their target")
    print(f"  planned cost: {plan.fixed_epochs} epochs in fixed-epoch trials + {plan.patience_min_epochs} to "
          f"{plan.patience_cap_epochs} in patience trials + {plan.pretrain_epochs} pretraining (if not cached) "
          f"= {plan.min_total_epochs} to {plan.total_epochs} epochs")
    if spec.budget.unbounded:
        print("  (no per-trial budget: where in that range a trial lands is up to patience; the upper end is "
              "every event running to budget.max_event_epochs)")
    if plan.accelerator_hours is not None:
        low = plan.min_total_epochs * plan.epoch_seconds * plan.accelerator_share / 3600
        print(f"  = {low:.3g} to {plan.accelerator_hours:.3g} accelerator-hours at {plan.epoch_seconds:g} s/epoch "
              f"x {plan.accelerator_share:g} per trial")
    limits = spec.sweep_budget
    if limits.epochs is not None or limits.accelerator_hours is not None:
        print(f"  within the sweep budget: epochs {limits.epochs or '-'}, accelerator-hours "
              f"{limits.accelerator_hours or '-'}")
    print(f"  resources per trial: cpu {spec.resources.cpu}, gpu {spec.resources.gpu}")
    print(f"  writes Ray results to {Path(spec.storage_path).resolve()}/{spec.name}-<time>/")
    print(f"  caches dense models in {Path(spec.cache_dir).resolve()}/")
    if args.no_data_check:
        print("  data: not checked (--no-data-check)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import replace

    _check_experiment(args.experiment)
    # the whole spec, its data paths included, is checked before anything starts
    spec = load_spec(args.spec, smoke_test=args.smoke_test, check_data=True)
    if args.storage_path:
        spec = replace(spec, storage_path=args.storage_path)
    if args.cache_dir:
        spec = replace(spec, cache_dir=args.cache_dir)
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(args.tracking_uri), experiment=args.experiment,
                        address=args.address, smoke_test=args.smoke_test)
    return _print_outcome(outcome)


def cmd_submit(args: argparse.Namespace) -> int:
    from tune_prune import jobs

    _check_experiment(args.experiment)
    job_id = jobs.submit(args.spec, address=args.address, tracking_uri=args.tracking_uri,
                         storage_path=args.storage_path, cache_dir=args.cache_dir, smoke_test=args.smoke_test,
                         experiment=args.experiment)
    print(job_id)
    print(f"follow it with: tune-prune logs {job_id} --address {args.address} --follow", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tune_prune import jobs

    info = jobs.status(args.job_id, args.address)
    print(f"{info['job']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
    return 0 if info["status"] in ("PENDING", "RUNNING", "SUCCEEDED") else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from tune_prune import jobs

    for chunk in jobs.logs(args.job_id, args.address, follow=args.follow):
        print(chunk, end="")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from tune_prune.sweep import resume_sweep

    try:
        outcome = resume_sweep(args.sweep_dir, address=args.address)
    except LookupError as exc:
        return _fail(str(exc))
    return _print_outcome(outcome)


def _print_outcome(outcome) -> int:
    print()
    print(outcome.summary)
    print()
    ok = outcome.n_trials - len(outcome.failed)
    print(f"{ok}/{outcome.n_trials} trials finished in {outcome.wall_seconds:.0f}s; MLflow experiment "
          f"'{outcome.experiment_name}', parent run {outcome.parent_run_id}")
    from tune_prune.tracking import browse_url, run_experiment_id

    exp_id = run_experiment_id(outcome.tracking_uri, outcome.parent_run_id)
    if outcome.tracking_uri.startswith(("http://", "https://")):
        print(f"browse: {browse_url(outcome.tracking_uri, exp_id)}")
    else:
        print(f"browse: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1, then open "
              f"{browse_url(outcome.tracking_uri, exp_id)}")
    print(f"  the answer (frontier, recommendation): {browse_url(outcome.tracking_uri, exp_id, outcome.parent_run_id)}")
    if outcome.failed:
        print(f"failed trials: {', '.join(outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def _budget_list(text: str | None, flag: str) -> list[float]:
    """'100,300' -> [100.0, 300.0]; anything else is refused naming the flag."""
    if text is None:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise SpecError(flag, f"must be budgets in fine-tuning epochs (> 0) separated by commas, e.g. 100,300, "
                        f"got {text!r}")
    return values


def cmd_frontier(args: argparse.Namespace) -> int:
    from tune_prune import frontier as fr
    from tune_prune import report
    from tune_prune.metrics import of_columns

    equal_budgets = _budget_list(args.equal_budget, "--equal-budget")
    try:
        _, run, finished = _load_sweep(args)
    except LookupError as exc:
        return _fail(str(exc))
    rule = _frontier_rule(args, run)
    metric = of_columns(finished.columns)
    front = fr.frontier(finished, rule=rule, metric=metric)
    print(f"sweep run {run.info.run_name} ({run.info.run_id}), {finished['trial_key'].nunique()} trials recorded"
          f"; frontier rule {rule}" + ("" if metric.higher_is_better else f"; {metric.name}: {metric.direction}"))
    print(report.format_frontier(front, fr.dense_baseline(finished, metric), finished, metric=metric))
    if equal_budgets:
        table = fr.natural_budget(finished, equal_budgets, metric=metric)
        print(f"\n{report.natural_budget_title(metric)}:")
        print(report.natural_budget_table(table, metric).to_string() if not table.empty else "  no untruncated runs")
    if args.csv:
        report.write_csv(front, args.csv)
        print(f"frontier written to {args.csv}")
    return 0


def _frontier_rule(args: argparse.Namespace, run) -> str:
    """--frontier-rule, else the rule the sweep was run with (its parent run's tag), else all_events."""
    from tune_prune.tracking import TAG_FRONTIER_RULE

    return args.frontier_rule or run.data.tags.get(TAG_FRONTIER_RULE, "all_events")


def _load_sweep(args: argparse.Namespace):
    from tune_prune.tracking import USABLE_STATUSES, find_sweep_run, load_records, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    run = find_sweep_run(uri, args.experiment, args.run_id)
    records = load_records(uri, run.info.experiment_id, run.info.run_id, parent_run=run)
    return uri, run, records[records["status"].isin(USABLE_STATUSES)]


def _positive(value: float | None, flag: str) -> None:
    if value is not None and not value > 0:
        raise SpecError(flag, f"must be > 0, got {value:g}")


def cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from tune_prune.frontier import patience_cut_lines, patience_cuts
    from tune_prune.recommend import format_recommendation, recommend

    if not 0.0 < args.sparsity < 1.0:
        raise SpecError("--sparsity", f"must be in (0, 1), got {args.sparsity:g}")
    _positive(args.budget_epochs, "--budget-epochs")
    _positive(args.budget_gpu_hours, "--budget-gpu-hours")
    try:
        _, run, records = _load_sweep(args)
    except LookupError as exc:
        return _fail(str(exc))
    seconds = args.budget_gpu_hours * 3600 if args.budget_gpu_hours is not None else None
    rule = _frontier_rule(args, run)
    rec = recommend(records, args.sparsity, args.budget_epochs, seconds, rule=rule)
    if args.json:
        payload = rec.to_dict()
        payload["patience_cut"] = patience_cuts(records).to_dict(orient="records")
        payload["frontier_rule"] = rule
        payload["sweep_run_id"] = run.info.run_id
        payload["experiment"] = args.experiment
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(f"experiment '{args.experiment}', sweep run {run.info.run_name} ({run.info.run_id})")
        print(format_recommendation(rec))
        for line in patience_cut_lines(records):
            print(f"  warning: {line}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tune_prune import report
    from tune_prune.tracking import describe_run, log_artifacts

    try:
        uri, run, records = _load_sweep(args)
    except LookupError as exc:
        return _fail(str(exc))
    out = Path(args.out or f"tune_prune_report/{run.info.run_name}")
    rule = _frontier_rule(args, run)
    files = report.build_report(records, out, f"{args.experiment}: sweep {run.info.run_name}", rule=rule)
    if not args.no_log:
        from tune_prune.frontier import frontier

        log_artifacts(uri, run.info.run_id, files)
        note = report.markdown_note(records, run.info.run_id, rule=rule, params=run.data.params,
                                    metrics=run.data.metrics)
        describe_run(uri, run.info.run_id, note, frontier(records, rule=rule))
    print(f"report written to {out}/ ({', '.join(f.name for f in files)})"
          + ("" if args.no_log else f"; logged to sweep run {run.info.run_id} and its description refreshed"))
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
    s.add_argument("--storage-path", help="Ray Tune results and checkpoints (overrides the spec's storage_path)")
    s.add_argument("--cache-dir", help="dense-model cache and trial state (overrides the spec's cache_dir)")
    s.set_defaults(func=cmd_sweep)

    sb = sub.add_parser("submit", help="send a sweep to a Ray cluster as a Ray Job; prints the job id")
    sb.add_argument("spec")
    sb.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    sb.add_argument("--tracking-uri", help="a tracking server the cluster reaches (default: $MLFLOW_TRACKING_URI)")
    sb.add_argument("--storage-path", help="absolute path on shared storage for Ray results and checkpoints")
    sb.add_argument("--cache-dir", help="absolute shared path for dense models (default: STORAGE_PATH/cache)")
    sb.add_argument("--experiment")
    sb.add_argument("--smoke-test", action="store_true")
    sb.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="status of a submitted sweep")
    st.add_argument("job_id")
    st.add_argument("--address", required=True)
    st.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="logs of a submitted sweep")
    lg.add_argument("job_id")
    lg.add_argument("--address", required=True)
    lg.add_argument("--follow", action="store_true", help="stream until the job ends")
    lg.set_defaults(func=cmd_logs)

    rs = sub.add_parser("resume", help="finish a sweep (grid or adaptive) whose driver died; finished trials are "
                                       "not rerun, an adaptive search draws only the samples it had not drawn")
    rs.add_argument("sweep_dir", help="the directory the sweep printed: <storage_path>/<sweep run name>")
    rs.add_argument("--address", help="join an existing Ray cluster; default: local Ray")
    rs.set_defaults(func=cmd_resume)

    v = sub.add_parser("validate", help="check a spec and print the planned trials and cost")
    v.add_argument("spec")
    v.add_argument("--smoke-test", action="store_true")
    v.add_argument("--no-data-check", action="store_true",
                   help="do not look for the dataset's files here (a spec meant for a cluster's shared storage)")
    v.set_defaults(func=cmd_validate)

    sc = sub.add_parser("schema", help="print the spec's JSON Schema (for editor completion and checking)")
    sc.add_argument("--compact", action="store_true", help="one line instead of indented JSON")
    sc.set_defaults(func=cmd_schema)

    f = sub.add_parser("frontier", help="print the frontier of a recorded sweep, read back from MLflow")
    f.add_argument("--experiment", required=True)
    f.add_argument("--run-id", help="a specific sweep (parent) run; default: the newest")
    f.add_argument("--tracking-uri")
    f.add_argument("--csv", help="also write the frontier table to this CSV file")
    f.add_argument("--equal-budget", metavar="B[,B...]",
                   help="also print the authors' equal-budget comparison at these budgets (fine-tuning epochs)")
    f.add_argument("--frontier-rule", choices=FRONTIER_RULE_CHOICES,
                   help="which events count as frontier points; default: the sweep's own")
    f.set_defaults(func=cmd_frontier)

    r = sub.add_parser("recommend", help="the best strategy at a sparsity within a budget, with its evidence")
    r.add_argument("--experiment", required=True)
    r.add_argument("--sparsity", type=float, required=True, help="required sparsity, in (0, 1)")
    r.add_argument("--budget-epochs", type=float, help="most fine-tuning epochs a trial may have spent")
    r.add_argument("--budget-gpu-hours", type=float,
                   help="most accelerator-hours a trial may have spent (GPU share x hours; core-hours on CPU)")
    r.add_argument("--run-id", help="a specific sweep (parent) run; default: the newest")
    r.add_argument("--tracking-uri")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.add_argument("--frontier-rule", choices=FRONTIER_RULE_CHOICES,
                   help="which events count as frontier points; default: the sweep's own")
    r.set_defaults(func=cmd_recommend)

    rp = sub.add_parser("report", help="write plots and an HTML summary of a sweep and log them to its parent run")
    rp.add_argument("--experiment", required=True)
    rp.add_argument("--run-id")
    rp.add_argument("--tracking-uri")
    rp.add_argument("--out", help="output directory; default tune_prune_report/<sweep run name>")
    rp.add_argument("--no-log", action="store_true", help="do not log the files to MLflow")
    rp.add_argument("--frontier-rule", choices=FRONTIER_RULE_CHOICES,
                    help="which events count as frontier points; default: the sweep's own")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `tune-prune ... | head` closed our stdout: stop quietly, as shell tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SpecError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        from tune_prune.tracking import CredentialsInUriError

        if isinstance(exc, CredentialsInUriError):
            return _fail(str(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
