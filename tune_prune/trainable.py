"""The Ray Tune function trainable: config -> TrialSpec -> loop, reporting after every prune event.

The config carries the trial (``config["trial"]``, a TrialSpec's dict as JSON) and the
sweep context (``config["ctx"]``: tracking URI, experiment and parent run ids,
cache dir, resources). Each event is logged to the trial's MLflow child run first,
then saved as the trial's own state copy and reported to Tune with a checkpoint, so
a retried or resumed trial continues at the next event and reopens the same child
run (found by its trial key) without logging a step twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tune_prune import dense as dense_cache
from tune_prune.dense import atomic_write
from tune_prune.data import load_dataset
from tune_prune.loop import (Hooks, LoopState, evaluate, fast_path_for, model_view, new_model, pick_device,
                             run_trial)
from tune_prune.speed import speedup_metrics
from tune_prune.spec import SHARED_FIELDS, STRUCTURED, TrialSpec, make_trial
from tune_prune.tracking import TrialTracker

STATE_FILE = "state.pt"

#: Fault injection for testing failure handling (off unless set): "fail:<substring>"
#: makes every trial whose name contains <substring> raise after its first event.
CHAOS_ENV = "TUNE_PRUNE_CHAOS"


class InjectedFault(RuntimeError):
    """Raised by the TUNE_PRUNE_CHAOS hook; never raised in normal operation."""


def _chaos(trial: TrialSpec, event: int) -> None:
    import os

    rule = os.environ.get(CHAOS_ENV, "")
    if rule.startswith("fail:") and rule[5:] and rule[5:] in trial.name and event == 1:
        raise InjectedFault(f"{CHAOS_ENV}={rule}: injected failure of {trial.name} after event {event}")


def _report(metrics: dict[str, Any], state: LoopState | None = None) -> None:
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state.to_payload(), Path(tmp) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one sweep shares, handed to the Ray workers with each trial's config."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cache_dir: str
    cpu_per_trial: float
    gpu_per_trial: float
    speed: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: "TrialContext | Mapping[str, Any]") -> "TrialContext":
        """A context from itself, or from its dict form (the resume file, sweeps started before it existed)."""
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(value).items() if k in known})

    def state_path(self, trial: TrialSpec) -> Path:
        """Our own copy of the trial's latest event state, keyed by sweep and trial, on the same
        (shared) storage as the dense cache. Tune's experiment snapshot can lag behind its
        checkpoint pruning when a driver dies, leaving it pointing at a deleted checkpoint;
        this copy does not depend on that bookkeeping."""
        return self.state_path_for_key(trial.key)

    def state_path_for_key(self, trial_key: str) -> Path:
        return Path(self.cache_dir) / "trial_state" / self.parent_run_id / f"{trial_key}.pt"

    def claim_path(self, trial: TrialSpec) -> Path:
        """Written by the first attempt of a trial just before it creates its MLflow run, and
        kept (see TrialTracker's ``claim``): an empty file beside the state copy."""
        return self.state_path(trial).with_suffix(".claim")

    def placement(self) -> tuple[torch.device, float]:
        """The trial's device, and its accelerator share (GPU fraction on CUDA, cores on CPU)."""
        device = pick_device(float(self.gpu_per_trial))
        return device, float(self.gpu_per_trial) if device.type == "cuda" else float(self.cpu_per_trial)


def events_saved(ctx: "TrialContext | Mapping[str, Any]", trial: TrialSpec) -> int:
    """How many prune events the trial's own state copy holds: where it would resume (0: none).

    The copy is written before each event is reported to Tune, so it is never behind
    Tune's checkpoint; the trial resumes after this many events.
    """
    return events_saved_for_key(ctx, trial.key)


def events_saved_for_key(ctx: "TrialContext | Mapping[str, Any]", trial_key: str) -> int:
    """events_saved for a trial known by its key only (an adaptive trial, from its MLflow run)."""
    path = TrialContext.of(ctx).state_path_for_key(trial_key)
    if not path.is_file():
        return 0
    # mmap: the counter is read without loading the weights into memory
    payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(payload["next_event"])


def _save_own_state(path: Path, state: LoopState) -> None:
    atomic_write(path, lambda tmp: torch.save(state.to_payload(), tmp))


def _resume_state(own: Path) -> LoopState | None:
    """The newest of Tune's checkpoint and our own state copy, if any."""
    found = []
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            found.append(LoopState.from_payload(torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)))
    if own.is_file():
        found.append(LoopState.from_payload(torch.load(own, map_location="cpu", weights_only=False)))
    return max(found, key=lambda s: s.next_event) if found else None


def trial_from_config(config: dict[str, Any]) -> TrialSpec:
    """A grid trial carries its whole TrialSpec; an adaptive one carries its bracket and sampled point."""
    if "trial" in config:
        trial = config["trial"]  # JSON (a dict in sweeps started by earlier versions)
        return TrialSpec.from_dict(json.loads(trial) if isinstance(trial, str) else trial)
    base = TrialSpec.from_dict(config["base"])
    shared = {f: getattr(base, f) for f in SHARED_FIELDS}
    b = config["bracket"]
    return make_trial(shared, b["schedule"], dict(config["point"]), b["target"], b["seed"])


@dataclass
class _Prepared:
    """A trial's data (normalised as its model expects), execution choices and dense model,
    and the tags that say where and how it ran."""

    data: Any
    fast: Any
    dense_state: dict[str, torch.Tensor]
    pretrain: Any
    tags: dict[str, str]


#: the last dataset this worker process loaded: Tune reuses the process for the next trial,
#: which nearly always reads the same data (loading is deterministic, so reuse is exact)
_LAST_DATASET: dict[str, Any] = {}


def _dataset(trial: TrialSpec):
    key = repr((trial.dataset.name, sorted(trial.dataset.load_kwargs().items())))
    if key not in _LAST_DATASET:
        _LAST_DATASET.clear()
        _LAST_DATASET[key] = load_dataset(trial.dataset.name, **trial.dataset.load_kwargs())
    return _LAST_DATASET[key]


def _prepare(trial: TrialSpec, ctx: TrialContext, device: torch.device) -> _Prepared:
    """Everything a trial needs before its run opens; nothing here writes to MLflow."""
    import ray

    data = model_view(trial, _dataset(trial)).to(device)
    fast = fast_path_for(trial, data, device, ctx.execution)
    cached = dense_cache.load(ctx.cache_dir, trial.dense_key)
    if cached is None:
        raise RuntimeError(f"dense model {trial.dense_key} missing from {ctx.cache_dir}; "
                           "the sweep driver pretrains it before trials start")
    # Which node ran (or re-ran) this trial: a tag, since a retry may land elsewhere. Set with
    # the run's creation, not in a request of their own.
    tags = {"tune_prune.node_id": ray.get_runtime_context().get_node_id(),
            "tune_prune.data_storage": data.storage,
            "tune_prune.amp": "bf16" if fast.amp else "fp32",
            "tune_prune.channels_last": str(fast.channels_last).lower()}
    return _Prepared(data, fast, *cached, tags=tags)


def _dense_model(trial: TrialSpec, env: _Prepared, device: torch.device):
    model = env.fast.model(new_model(trial, env.data, trial.seed).to(device))
    model.load_state_dict(env.dense_state)
    return model


def _record_dense(trial: TrialSpec, env: _Prepared, device: torch.device, tracker: TrialTracker) -> None:
    """The dense baseline: the cached dense model evaluated once on val and test."""
    model = _dense_model(trial, env, device)
    val, test = evaluate(model, env.data, "val", fast=env.fast), evaluate(model, env.data, "test", fast=env.fast)
    metric = trial.metric
    tracker.log_dense(val, test, env.pretrain)
    _report({"event": 0, "sparsity": 0.0, metric.val: val.score,
             metric.test: test.score, "cost_epochs": 0, "n_events": 0})


def _replay(metrics: Mapping[str, float]) -> dict[str, float]:
    """A recorded run's final metrics as a Tune result: what Tune was told last, at the same milestone."""
    replay = {k: v for k, v in metrics.items() if not k.startswith("epoch_")}
    replay.setdefault("event", replay.get("n_events", 0.0))
    if "sparsity" in replay and replay["sparsity"] < 1.0:
        replay["milestone"] = -math.log2(1.0 - replay["sparsity"])
    return replay


def _prune(trial: TrialSpec, ctx: TrialContext, env: _Prepared, device: torch.device, share: float,
           tracker: TrialTracker, logged_through: int) -> None:
    """Prune along the schedule; log each event to MLflow, then save it, then report it to Tune.

    The last event is reported only once the trial is recorded whole (final model, speed,
    status FINISHED): Tune may answer that report with a stop (an ASHA scheduler stops every
    trial that reaches its max_t), and a stopped trial's thread can be cut short with its actor.
    """
    own = ctx.state_path(trial)
    last_result: dict[str, Any] = {}

    def on_event(record, state: LoopState) -> None:
        last = record.event == record.n_events
        if record.event > logged_through:  # a replayed event was logged before the crash
            tracker.log_event(record, totals=last)
        _save_own_state(own, state)
        result = {**record.metrics(), "accelerator_seconds": record.wall_seconds * share,
                  "milestone": -math.log2(1.0 - record.sparsity)}
        if last:
            # No Tune checkpoint after the last event: nothing would resume from it that the
            # state copy (saved just above, on the dense cache's shared storage) does not hold,
            # and for one-event trials it is the whole per-trial checkpoint cost.
            last_result.update(result)
        else:
            _report(result, state)
        _chaos(trial, record.event)

    def on_epoch(record) -> None:
        if record.event > logged_through:
            tracker.log_epoch(record)

    layers: dict[str, Any] = {}

    def on_final(model) -> None:
        speed = None
        if ctx.speed.get("enabled", True):
            dense = _dense_model(trial, env, device)  # same layout as the trial's
            opts = {k: ctx.speed[k] for k in ("batch_size", "warmup", "repeats") if k in ctx.speed}
            vocab = env.data.num_classes if trial.task == "causal_lm" else None
            speed = speedup_metrics(dense, model, env.data.in_shape, device, trial.structure == STRUCTURED, **opts,
                                    vocab_size=vocab)
        tracker.log_final_model(model, speed, layers, log_model=ctx.tracking.get("log_models", True))
        tracker.finish("FINISHED")
        own.unlink(missing_ok=True)  # finished: the resume copy is no longer needed
        # Resumed after its last event (the worker died before this point): Tune gets the
        # last event as the run recorded it.
        _report(last_result or _replay(tracker.client.get_run(tracker.run_id).data.metrics))

    resume = _resume_state(own)
    if resume is not None:
        # A retry after a crash or a lost node: say so on the run, which is the same one.
        tracker.note_resume(resume.next_event)
    hooks = Hooks(on_epoch=on_epoch, on_event=on_event, on_final=on_final, on_prunable=tracker.log_prunable,
                  on_layers=layers.update)
    run_trial(trial, env.data, env.dense_state, device, hooks, resume=resume, fast=env.fast)


def close_stopped(tracker: TrialTracker, ctx: TrialContext, trial: TrialSpec) -> None:
    """End a trial's run as its scheduler stopped it: KILLED, the events logged so far
    standing, and its resume copy gone (it will not be resumed)."""
    tracker.finish("KILLED", note="stopped early by the scheduler")
    if not trial.is_dense:
        ctx.state_path(trial).unlink(missing_ok=True)


def train_trial(config: dict[str, Any]) -> None:
    """Run one trial inside a Ray Tune worker: prepare, then record the dense baseline or prune."""
    # One INFO line per checkpoint from Ray's storage layer drowns the progress output.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = trial_from_config(config)
    ctx = TrialContext.of(config["ctx"])
    torch.set_num_threads(max(1, int(ctx.cpu_per_trial)))
    device, share = ctx.placement()

    tracker = TrialTracker(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial,
                           device=device.type, accelerator_share=share, claim=ctx.claim_path(trial))
    # An adaptive trial (one with a bracket) can also have been stopped by its ASHA scheduler
    # (KILLED); grid trials have no scheduler, so a KILLED grid run only means an interrupted one.
    done = tracker.finished_result(stopped_too="bracket" in config)
    if done is not None:
        # Already finished or stopped under this sweep (Tune's state lagged behind MLflow when
        # a driver died): report what is recorded, redo nothing. The restored scheduler sees
        # the same result at the same milestone as before, and decides as it did then.
        _report(_replay(done))
        return
    try:
        env = _prepare(trial, ctx, device)
        logged_through = tracker.start(tags=env.tags)
        tracker.log_dataset(env.data)
        if trial.is_dense:
            _record_dense(trial, env, device, tracker)
        else:
            _prune(trial, ctx, env, device, share, tracker, logged_through)
    except SystemExit:
        # Tune stops a function trainable by raising SystemExit from tune.report: a
        # scheduler (ASHA) decision, not a failure. The events logged so far stand. A trial
        # stopped at its last event's report has finished and is recorded so already.
        if not tracker.closed:
            close_stopped(tracker, ctx, trial)
        raise
    except BaseException as exc:
        if tracker.run_id is None:  # failed before its run opened: a run still records why
            with contextlib.suppress(Exception):  # (the error raised below is the one to see)
                tracker.start()
        tracker.finish("FAILED", error="".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    tracker.finish("FINISHED")
    ctx.state_path(trial).unlink(missing_ok=True)  # finished: the resume copy is no longer needed
