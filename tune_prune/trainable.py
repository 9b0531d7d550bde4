"""The Ray Tune function trainable: config -> TrialSpec -> loop, reporting after every prune event.

The config carries the trial (``config["trial"]``, a TrialSpec as a dict) and the
sweep context (``config["ctx"]``: tracking URI, experiment and parent run ids,
cache dir, resources). Each event is logged to the trial's MLflow child run first,
then reported to Tune with a checkpoint, so a retried trial resumes at the next
event and reopens the same child run (found by its trial key) without logging a
step twice.
"""

from __future__ import annotations

import logging
import math
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tune_prune import dense as dense_cache
from tune_prune.data import load_dataset
from tune_prune.loop import Hooks, LoopState, evaluate, new_model, pick_device, run_trial
from tune_prune.spec import TrialSpec, make_trial
from tune_prune.tracking import TrialTracker

STATE_FILE = "state.pt"


def _report(metrics: dict[str, Any], state: LoopState | None = None) -> None:
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state.to_payload(), Path(tmp) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _resume_state() -> LoopState | None:
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        payload = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    return LoopState.from_payload(payload)


def trial_from_config(config: dict[str, Any]) -> TrialSpec:
    """A grid trial carries its whole TrialSpec; an adaptive one carries its bracket and sampled point."""
    if "trial" in config:
        return TrialSpec.from_dict(config["trial"])
    base = TrialSpec.from_dict(config["base"])
    shared = dict(dataset=base.dataset, model=base.model, pretrain=base.pretrain, finetune=base.finetune,
                  budget=base.budget)
    b = config["bracket"]
    return make_trial(shared, b["schedule"], dict(config["point"]), b["target"], b["seed"])


def train_trial(config: dict[str, Any]) -> None:
    """Run one trial inside a Ray Tune worker."""
    # One INFO line per checkpoint from Ray's storage layer drowns the progress output.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = trial_from_config(config)
    ctx = config["ctx"]
    torch.set_num_threads(max(1, int(ctx["cpu_per_trial"])))
    device = pick_device(float(ctx["gpu_per_trial"]))
    share = float(ctx["gpu_per_trial"]) if device.type == "cuda" else float(ctx["cpu_per_trial"])

    tracker = TrialTracker(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], trial,
                           device=device.type, accelerator_share=share)
    logged_through = tracker.start()
    try:
        data = load_dataset(trial.dataset.name, **trial.dataset.load_kwargs()).to(device)
        cached = dense_cache.load(ctx["cache_dir"], trial.dense_key)
        if cached is None:
            raise RuntimeError(f"dense model {trial.dense_key} missing from {ctx['cache_dir']}; "
                               "the sweep driver pretrains it before trials start")
        dense_state, pretrain = cached

        if trial.is_dense:
            model = new_model(trial, data, trial.seed).to(device)
            model.load_state_dict(dense_state)
            val, test = evaluate(model, data, "val"), evaluate(model, data, "test")
            tracker.log_dense(val.accuracy, test.accuracy, pretrain)
            _report({"event": 0, "sparsity": 0.0, "val_accuracy": val.accuracy,
                     "test_accuracy": test.accuracy, "cost_epochs": 0, "n_events": 0})
            tracker.finish("FINISHED")
            return

        def on_event(record, state: LoopState) -> None:
            if record.event > logged_through:
                tracker.log_event(record)
            if record.event == record.n_events:
                tracker.log_totals(record)
            _report({**record.metrics(), "accelerator_seconds": record.wall_seconds * share,
                     "milestone": -math.log2(1.0 - record.sparsity)}, state)

        def on_epoch(record) -> None:
            if record.event > logged_through:
                tracker.log_epoch(record)

        resume = _resume_state()
        if resume is not None:
            # A retry after a crash or a lost node: say so on the run, which is the same one.
            tracker.note_resume(resume.next_event)
        run_trial(trial, data, dense_state, device, Hooks(on_epoch=on_epoch, on_event=on_event), resume=resume)
    except SystemExit:
        # Tune stops a function trainable by raising SystemExit from tune.report: a
        # scheduler (ASHA) decision, not a failure. The events logged so far stand.
        tracker.finish("KILLED", note="stopped early by the scheduler")
        raise
    except BaseException as exc:
        tracker.finish("FAILED", error="".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    tracker.finish("FINISHED")
