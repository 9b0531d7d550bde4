"""Training images/s: a bare loop, the same work inside a tune_prune trial, and 1/2/4 trials packed.

Three figures side by side, from one run, on one device:

1. bare loop: a minimal hand-written torch loop (resident data, on-device
   normalisation and augmentation, SGD, one validation pass per epoch, the same
   bf16/channels_last choice a trial makes on this device);
   It runs before and after the sweeps; the reference is the mean of the two.
2. inside a trial: a real sweep (local Ray, SQLite MLflow) whose one pruned trial
   fine-tunes the same model for the same epochs: masks re-applied every step,
   per-epoch MLflow metrics, a Tune report and checkpoint per event;
3. packed: K = 1, 2, 4 such trials at once with resources.gpu = 1/K on a GPU (on a
   CPU-only machine, resources.cpu = cores/K): the aggregate images/s.

Steady state only: images/s counts epochs 2..N (the first epoch pays for warm-up,
kernel selection and Ray start-up). For trials the epoch end times come from the
epoch metrics' timestamps in MLflow. The aggregate of K trials is measured over the
window in which all K were in steady state at once (from the latest first-epoch end
to the earliest last-epoch end): the images each trial finished inside that window
(interpolated between its epoch ends), summed, over the window's length. Trials
that never overlapped give no aggregate: raise --epochs.

Goals (issue 5): inside a trial within 1.10x of the bare loop's time; 4 small-model
trials on one GPU at least 2x the aggregate images/s of one. Without a GPU it prints
CPU figures and says so; packing cannot beat one trial when cores are the limit.

    python benchmarks/trial_throughput.py [--dataset fashion_mnist] [--train-subset 20000]
        [--epochs 6] [--batch-size 512] [--packs 1 2 4] [--smoke-test]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tune_prune.data import load_dataset
from tune_prune.loop import FastPath, pick_device
from tune_prune.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(data, model_name: str, width: int, epochs: int, batch: int, device: torch.device) -> tuple[float, FastPath]:
    """Images/s of epochs 2..N of a minimal loop doing the work a trial's epoch does."""
    torch.manual_seed(0)
    model = build_model(model_name, data.in_shape, data.num_classes, width=width).to(device)
    fast = FastPath.resolve("auto", "auto", device, model)
    fast.model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    n = len(data.y_train)
    stamps = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen, device=device).split(batch):
            xb = fast.batch(data.prepare(data.x_train[idx], train=True, generator=gen))
            opt.zero_grad(set_to_none=True)
            with fast.autocast(device):
                loss = F.cross_entropy(model(xb).float(), data.y_train[idx])
            loss.backward()
            opt.step()
        model.eval()
        correct = torch.zeros((), device=device, dtype=torch.int64)
        with torch.no_grad(), fast.autocast(device):
            for i in range(0, len(data.y_val), 1024):
                logits = model(fast.batch(data.prepare(data.x_val[i:i + 1024], train=False)))
                correct += (logits.argmax(1) == data.y_val[i:i + 1024]).sum()
        int(correct)  # the trial reads its accuracy every epoch too
        sync(device)
        stamps.append(time.perf_counter())
    return n * (epochs - 1) / (stamps[-1] - stamps[0]), fast


def packed_sweep(k: int, args, work: Path, cuda: bool, cores: int) -> tuple[float, list[float]]:
    """Run K pruned trials at once; return (aggregate images/s, each trial's images/s)."""
    from mlflow.tracking import MlflowClient

    from tune_prune.spec import parse_spec
    from tune_prune.sweep import run_sweep

    raw = {
        "name": f"throughput_k{k}",
        "dataset": {"name": args.dataset, "val_size": args.val_size, "train_subset": args.train_subset},
        "model": {"name": args.model, "width": args.width},
        "pretrain": {"epochs": 1, "batch_size": args.batch_size},
        "finetune": {"batch_size": args.batch_size, "lr": 0.01},
        "budget": {"epochs": args.epochs},
        "target_sparsities": [0.5, 0.6, 0.7, 0.8][:k],
        "seeds": [0],
        "strategies": {"one_shot": {"patience": None, "epochs_per_event": args.epochs}},
        "resources": {"cpu": max(1, cores // k) if cuda else cores / k, "gpu": 1.0 / k if cuda else 0},
        "speed": {"enabled": False},
        "cache_dir": str(work / "cache"),
        "storage_path": str(work / "ray"),
    }
    spec = parse_spec(raw)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    log = io.StringIO()  # Tune's tables and our progress lines: not part of this report
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        outcome = run_sweep(spec, tracking_uri=uri, out=log)
    if outcome.failed:
        raise SystemExit(f"packed sweep k={k}: trials failed: {outcome.failed}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.name).experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}' "
                                                   "and params.schedule = 'one_shot'")
    n = args.train_subset
    stamps = []
    for run in runs:
        ts = sorted(m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "epoch_val_accuracy"))
        stamps.append(ts)
    per_trial = [n * (len(ts) - 1) / (ts[-1] - ts[0]) for ts in stamps]
    start, end = max(ts[0] for ts in stamps), min(ts[-1] for ts in stamps)
    if end <= start:
        return float("nan"), per_trial

    def images_by(ts: list[float], t: float) -> float:  # images finished by time t, linear within an epoch
        return n * float(np.interp(t, ts, range(len(ts))))

    aggregate = sum(images_by(ts, end) - images_by(ts, start) for ts in stamps) / (end - start)
    return aggregate, per_trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks that it runs")
    args = p.parse_args()
    if args.smoke_test:
        args.dataset, args.train_subset, args.val_size, args.epochs, args.packs = "digits", 800, 200, 3, [1, 2]
        args.width, args.batch_size = 8, 64

    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    device = pick_device(1.0)
    torch.set_num_threads(cores if not cuda else min(cores, 4))
    data = load_dataset(args.dataset, val_size=args.val_size, train_subset=args.train_subset).to(device)
    where = (f"GPU: {torch.cuda.get_device_name(0)}" if cuda
             else f"no GPU on this machine: CPU figures ({cores} cores); 'packed' shares the cores, not a GPU")
    print(f"torch {torch.__version__}; {where}")

    bare_before, fast = bare_loop(data, args.model, args.width, args.epochs, args.batch_size, device)
    print(f"{args.model}(width {args.width}) on {args.dataset}: {args.train_subset} training images, batch "
          f"{args.batch_size}, {args.epochs} epochs (steady state: epochs 2..{args.epochs}); "
          f"bf16 autocast {'on' if fast.amp else 'off'}, channels_last {'on' if fast.channels_last else 'off'}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.packs:
            t0 = time.perf_counter()
            results[k] = packed_sweep(k, args, Path(tmp), cuda, cores)
            print(f"  (sweep with {k} packed trial(s): {time.perf_counter() - t0:.0f}s wall incl. Ray start-up)",
                  file=sys.stderr)
    # the bare loop again after the sweeps: machines drift, and the reference is the mean of both
    bare_after, _ = bare_loop(data, args.model, args.width, args.epochs, args.batch_size, device)
    bare = (bare_before + bare_after) / 2

    print(f"\n{'':<34}{'images/s':>10}{'ratio':>9}   goal")
    print(f"{'bare loop (mean of before/after)':<34}{bare:>10.0f}{1.0:>8.2f}x   "
          f"(before {bare_before:.0f}, after {bare_after:.0f})")
    if 1 in results:
        one = statistics.median(results[1][1])
        ok = one >= bare / 1.10
        print(f"{'inside a tune_prune trial':<34}{one:>10.0f}{one / bare:>8.2f}x   >= 0.91x of bare (time within "
              f"1.10x): {'PASS' if ok else 'MISS'}")
    base = results.get(1, (None,))[0]
    for k in args.packs:
        agg, each = results[k]
        share = f"gpu {1 / k:g}" if cuda else f"cpu {cores / k:g}"
        label = f"{k} trial(s) packed, aggregate ({share})"
        ratio = agg / base if base else float("nan")
        goal = ""
        if k == 4 and base:
            goal = f"   >= 2x of 1 trial: {'PASS' if ratio >= 2 else 'MISS'}" + ("" if cuda else " (CPU: not expected)")
        if agg != agg:
            print(f"{label:<34}{'-':>10}   the trials never ran at the same time; raise --epochs")
            continue
        print(f"{label:<34}{agg:>10.0f}{ratio:>8.2f}x{goal}")
        if k > 1:
            print(f"{'':<4}per trial: " + ", ".join(f"{v:.0f}" for v in sorted(each)))
    print("\nratio column: vs the bare loop for the trial row, vs 1 packed trial for the packed rows")


if __name__ == "__main__":
    main()
