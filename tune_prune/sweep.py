"""SweepSpec -> Ray Tune run -> MLflow records -> frontier. The one place Ray is configured."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from tune_prune import frontier as fr
from tune_prune import report
from tune_prune.spec import SweepSpec, TrialSpec


@dataclass
class SweepOutcome:
    experiment_name: str
    parent_run_id: str
    tracking_uri: str
    n_trials: int
    failed: list[str]
    frontier: pd.DataFrame
    dense: dict[str, float]
    wall_seconds: float
    summary: str


def _say(out: TextIO, msg: str) -> None:
    print(msg, file=out, flush=True)


def _pretrain_remote(trial_dict: dict[str, Any], cache_dir: str, cpu: float, gpu: float) -> dict[str, Any]:
    """Body of the Ray task that trains (or finds) one dense model."""
    import torch

    from tune_prune import dense as dense_cache
    from tune_prune.data import load_dataset
    from tune_prune.loop import pick_device

    trial = TrialSpec.from_dict(trial_dict)
    torch.set_num_threads(max(1, int(cpu)))
    device = pick_device(gpu)
    data = load_dataset(trial.dataset.name, **trial.dataset.load_kwargs()).to(device)
    _, result, trained = dense_cache.ensure(trial, data, cache_dir, device)
    share = gpu if device.type == "cuda" else cpu
    return {"dense_key": trial.dense_key, "trained": trained, "result": result.__dict__,
            "accelerator_seconds": result.wall_seconds * share}


def _progress_callback(total: int):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished prune event and per finished trial.

        Tune pickles callbacks with its experiment state, so this holds no stream:
        it prints to whatever sys.stdout is when it is called.
        """

        def __init__(self) -> None:
            self.done = 0
            self.start = time.perf_counter()

        def _say(self, msg: str) -> None:
            elapsed = time.perf_counter() - self.start
            print(f"[{self.done}/{total} trials, {elapsed:5.0f}s] {msg}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("n_events"):
                self._say(f"{trial.custom_trial_name} event {int(result['event'])}/{int(result['n_events'])}"
                          f" sparsity {result['sparsity']:.4f} val {result['val_accuracy']:.4f}"
                          f" cost {int(result['cost_epochs'])} epochs")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            last = trial.last_result or {}
            self._say(f"done {trial.custom_trial_name}: sparsity {last.get('sparsity', 0):.4f}"
                      f" test {last.get('test_accuracy', float('nan')):.4f}"
                      f" cost {int(last.get('cost_epochs', 0))} epochs")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            self._say(f"FAILED {trial.custom_trial_name}: see {trial.error_file or 'the Ray log'}")

    return Progress()


def run_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    experiment: str | None = None,
    address: str | None = None,
    smoke_test: bool = False,
    out: TextIO = sys.stdout,
) -> SweepOutcome:
    """Pretrain the dense models, run every trial on Ray Tune, then build and log the frontier."""
    import ray
    from ray import tune

    from tune_prune.tracking import SweepTracker, load_records
    from tune_prune.trainable import train_trial

    t_start = time.perf_counter()
    trials = spec.trials()
    experiment = experiment or spec.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_name = f"{spec.name}-{stamp}"
    cache_dir = str(Path(spec.cache_dir).resolve())
    storage_path = str(Path(spec.storage_path).resolve())

    # MLflow first, in the driver: the experiment and parent run exist before any
    # trial starts (concurrent creation from workers races; environment.md).
    tracker = SweepTracker(tracking_uri, experiment)
    parent_id = tracker.start_parent(spec, run_name, len(trials), smoke_test)
    _say(out, f"sweep {run_name}: {len(trials)} trials ({len(spec.seeds)} dense baselines), "
              f"MLflow experiment '{experiment}' (id {tracker.experiment_id}), parent run {parent_id}")
    _say(out, f"tracking store: {tracking_uri}")

    status = "FAILED"
    try:
        # A checkpoint per prune event is by design; Tune's "snapshotting too often" warning is noise here.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(include_dashboard=False, logging_level="WARNING")
        res = spec.resources

        # Dense models: one Ray task per key missing from the cache, in parallel.
        by_key: dict[str, TrialSpec] = {}
        for t in trials:
            by_key.setdefault(t.dense_key, t)
        task = ray.remote(_pretrain_remote).options(num_cpus=res.cpu, num_gpus=res.gpu)
        _say(out, f"dense models: {len(by_key)} (cache {cache_dir})")
        t0 = time.perf_counter()
        pre = ray.get([task.remote(t.to_dict(), cache_dir, res.cpu, res.gpu) for t in by_key.values()])
        from tune_prune.loop import PretrainResult

        results = {p["dense_key"]: PretrainResult(**p["result"]) for p in pre}
        trained = sum(p["trained"] for p in pre)
        _say(out, f"dense models ready in {time.perf_counter() - t0:.1f}s ({trained} trained, "
                  f"{len(pre) - trained} from cache); val accuracy "
                  + ", ".join(f"{k}={r.val_accuracy:.4f}" for k, r in results.items()))
        tracker.log_pretraining(results, accelerator_seconds=sum(p["accelerator_seconds"] for p in pre))

        ctx = {
            "tracking_uri": tracking_uri,
            "experiment_id": tracker.experiment_id,
            "parent_run_id": parent_id,
            "cache_dir": cache_dir,
            "cpu_per_trial": res.cpu,
            "gpu_per_trial": res.gpu,
        }
        names = {t.key: t.name for t in trials}
        trainable = tune.with_resources(train_trial, {"cpu": res.cpu, "gpu": res.gpu})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.to_dict() for t in trials]), "ctx": ctx},
            tune_config=tune.TuneConfig(
                reuse_actors=True,  # a fresh worker costs seconds of imports; trials are tiny
                trial_name_creator=lambda tr: names[TrialSpec.from_dict(tr.config["trial"]).key],
                trial_dirname_creator=lambda tr: names[TrialSpec.from_dict(tr.config["trial"]).key],
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[_progress_callback(len(trials))],
                verbose=0,
            ),
        )
        grid = tuner.fit()
        failed = [names[TrialSpec.from_dict(r.config["trial"]).key] for r in grid if r.error is not None]
        status = "FINISHED"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if status != "FINISHED":
            tracker.end("FAILED")

    # Read back what the trials logged, from MLflow itself.
    records = load_records(tracking_uri, tracker.experiment_id, parent_id)
    finished = records[records["status"] == "FINISHED"]
    front = fr.frontier(finished, spec.target_sparsities)
    dense = fr.dense_baseline(finished)
    with tempfile.TemporaryDirectory() as tmp:
        title = f"{spec.name}: {spec.model.name} on {spec.dataset.name}"
        for path in report.build_report(records, tmp, title, spec.target_sparsities):
            tracker.log_artifact(path)
        events_csv = Path(tmp) / "events.csv"
        records.to_csv(events_csv, index=False)
        tracker.log_artifact(events_csv)
    wall = time.perf_counter() - t_start
    last = records.sort_values("event").groupby("trial_key").tail(1)
    tracker.log_summary(
        {"trials_failed": len(failed), "trials_total": len(trials), "sweep_wall_seconds": wall,
         "dense_test_accuracy": dense["test_accuracy_mean"],
         "trials_cost_epochs_total": float(last["cost_epochs"].sum()),
         "trials_wall_seconds_total": float(last["wall_seconds"].sum()),
         "trials_accelerator_seconds_total": float(last["accelerator_seconds"].fillna(0).sum())},
        tags={"tune_prune.failed_trials": ",".join(failed)[:5000]} if failed else None,
    )
    tracker.end("FINISHED" if not failed else "FAILED")
    summary = report.format_frontier(front, dense)
    return SweepOutcome(experiment, parent_id, tracking_uri, len(trials), failed, front, dense, wall, summary)
