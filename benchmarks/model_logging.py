"""What recording a trial's final model and data in MLflow costs per trial.

Times, against a real SQLite store in a temporary directory, the per-trial MLflow work that
issue 12 added: ``TrialTracker.log_final_model`` (an MLflow logged model in the PyTorch
format, linked metrics) and ``TrialTracker.log_dataset`` (a dataset input), next to what a
trial did before (``torch.save`` of the module as one plain run artifact). The first call
in a process is reported apart: it pays imports (``mlflow.pytorch``) once per Ray worker.

    .venv/bin/python benchmarks/model_logging.py [--model mlp|resnet20] [--repeats 20] [--smoke-test]

Prints medians; the goal is a figure to set against a trial's time, not a pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _model(name: str) -> torch.nn.Module:
    from tune_prune.models import build_model

    if name == "mlp":
        return build_model("mlp", (1, 8, 8), 10, hidden=[128, 64])
    return build_model("resnet20", (3, 32, 32), 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "resnet20"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--smoke-test", action="store_true", help="3 repeats")
    args = ap.parse_args()
    repeats = 3 if args.smoke_test else args.repeats

    from mlflow.tracking import MlflowClient

    from tune_prune.data import load_dataset
    from tune_prune.spec import load_spec
    from tune_prune.tracking import SweepTracker, TrialTracker

    spec = load_spec(Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml", smoke_test=True)
    trial = next(t for t in spec.trials() if not t.is_dense)
    data = load_dataset(trial.dataset.name, **trial.dataset.load_kwargs())
    model = _model(args.model)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        sweep = SweepTracker(uri, "bench")
        parent = sweep.start_parent(spec, "bench", repeats, True)
        client = MlflowClient(uri)
        times: dict[str, list[float]] = {"log_final_model": [], "log_dataset": [], "plain artifact (before)": []}
        first: dict[str, float] = {}
        for i in range(repeats + 1):
            tracker = TrialTracker(uri, sweep.experiment_id, parent, trial)
            tracker.start()
            t0 = time.perf_counter()
            tracker.log_dataset(data)
            t1 = time.perf_counter()
            tracker.log_final_model(model, {"latency_ms": 0.1})
            t2 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                torch.save(model, Path(d) / "final_model.pt")
                client.log_artifact(tracker.run_id, str(Path(d) / "final_model.pt"))
            t3 = time.perf_counter()
            tracker.finish()
            for key, value in (("log_dataset", t1 - t0), ("log_final_model", t2 - t1),
                               ("plain artifact (before)", t3 - t2)):
                if i == 0:
                    first[key] = value
                else:
                    times[key].append(value)
    print(f"model {args.model} ({params:,} params), SQLite store, {repeats} trials after a first one")
    print(f"{'step':<26}{'first (ms)':>12}{'median (ms)':>13}{'min..max (ms)':>18}")
    for key, values in times.items():
        print(f"{key:<26}{first[key] * 1000:>12.1f}{statistics.median(values) * 1000:>13.1f}"
              f"{min(values) * 1000:>9.1f}..{max(values) * 1000:.1f}")


if __name__ == "__main__":
    main()
