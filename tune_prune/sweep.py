"""SweepSpec -> Ray Tune run -> MLflow records -> frontier. The one place Ray is configured."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, TextIO

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


def _say(out: TextIO | None, msg: str) -> None:
    # None: whatever sys.stdout is now (a default bound at import time can be a closed stream)
    print(msg, file=out if out is not None else sys.stdout, flush=True)


def _pretrain_remote(trial_dict: dict[str, Any], cache_dir: str, cpu: float, gpu: float,
                     execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Body of the Ray task that trains (or finds) one dense model."""
    import torch

    from tune_prune import dense as dense_cache
    from tune_prune.data import load_dataset
    from tune_prune.loop import fast_path_for, model_view, pick_device

    trial = TrialSpec.from_dict(trial_dict)
    torch.set_num_threads(max(1, int(cpu)))
    device = pick_device(gpu)
    data = model_view(trial, load_dataset(trial.dataset.name, **trial.dataset.load_kwargs())).to(device)
    fast = fast_path_for(trial, data, device, execution)
    _, result, trained = dense_cache.ensure(trial, data, cache_dir, device, fast=fast)
    share = gpu if device.type == "cuda" else cpu
    return {"dense_key": trial.dense_key, "trained": trained, "result": result.__dict__,
            "accelerator_seconds": result.wall_seconds * share}


def _score(result: dict[str, Any], split: str) -> str:
    """'0.9123' (accuracy) or 'perplexity 37.41', whichever metric the result carries."""
    if f"{split}_perplexity" in result:
        return f"perplexity {result[f'{split}_perplexity']:.2f}"
    return f"{result.get(f'{split}_accuracy', float('nan')):.4f}"


def _removed(result: dict[str, Any]) -> str:
    """Structured trials: what the channel ratio removed, measured."""
    if "mac_sparsity" not in result:
        return ""
    return f" (params -{result.get('param_sparsity', 0) * 100:.1f}%, MACs -{result['mac_sparsity'] * 100:.1f}%)"


def _progress_callback(total: int, finished: Iterable[str] = ()):
    """The sweep's progress printer; `finished`: names of trials that finished before a resume."""
    from ray import tune

    already = frozenset(finished)

    class Progress(tune.Callback):
        """One line per finished prune event and per finished trial.

        Tune pickles callbacks with its experiment state, so this holds no stream:
        it prints to whatever sys.stdout is when it is called. Trials that had finished
        before a resume count from the start and print nothing when Tune replays them.
        """

        is_progress = True  # what a resume swaps for a new one (it cannot pickle a stream)

        def __init__(self) -> None:
            self.counted = set(already)
            self.start = time.perf_counter()

        def _say(self, msg: str) -> None:
            elapsed = time.perf_counter() - self.start
            done = len(self.counted)
            count = f"{done}/{total}" if total else f"{done}"
            print(f"[{count} trials, {elapsed:5.0f}s] {msg}", flush=True)

        def _count(self, trial) -> bool:
            """Count a trial once; False if it was counted already."""
            if trial.custom_trial_name in self.counted:
                return False
            self.counted.add(trial.custom_trial_name)
            return True

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.custom_trial_name in already:
                return  # a finished trial reporting its recorded result again, nothing new
            # Progress output must never fail a sweep: read defensively.
            if result.get("n_events") and "event" in result:
                self._say(f"{trial.custom_trial_name} event {int(result['event'])}/{int(result['n_events'])}"
                          f" sparsity {result.get('sparsity', float('nan')):.4f}{_removed(result)}"
                          f" val {_score(result, 'val')}"
                          f" cost {int(result.get('cost_epochs', 0))} epochs")

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not self._count(trial):
                return
            last = trial.last_result or {}
            self._say(f"done {trial.custom_trial_name}: sparsity {last.get('sparsity', 0):.4f}{_removed(last)}"
                      f" test {_score(last, 'test')}"
                      f" cost {int(last.get('cost_epochs', 0))} epochs")

        def on_trial_error(self, iteration, trials, trial, **info):
            if not self._count(trial):
                return
            self._say(f"FAILED {trial.custom_trial_name}: see {trial.error_file or 'the Ray log'}")

    return Progress()


def _restorable(exp_dir: Path) -> bool:
    """Whether Tune left a snapshot to resume from in exp_dir (not only its tuner.pkl: a driver
    that died as the Tuner started leaves no experiment state, and that phase starts anew)."""
    from ray import tune

    return tune.Tuner.can_restore(str(exp_dir)) and any(exp_dir.glob("experiment_state-*.json"))


def _restore_tuner(exp_dir: Path, trainable, progress):
    """Tune's Tuner of an interrupted run, with the sweep's trainable and a fresh progress printer."""
    from ray import tune

    # Unfinished and errored trials restart (finished ones are skipped): Tune's
    # snapshot may name a checkpoint it had already pruned when the driver died,
    # so the trainable resumes from its own state copy instead (trainable.py).
    # _resume_config is the only way to say this in Ray 2.60's restore().
    resume = tune.ResumeConfig(unfinished=tune.ResumeConfig.ResumeType.RESTART,
                               errored=tune.ResumeConfig.ResumeType.RESTART)
    with _quiet("ray.tune.analysis.experiment_analysis"):
        # restore() reads back the results of every trial in Tune's snapshot and warns,
        # with a FileNotFoundError per trial, about each that had reported nothing yet
        # (never started, or killed before its first event). Ray's own bookkeeping and
        # harmless: those trials start fresh or resume from their state copy anyway.
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, _resume_config=resume)
    # The restored run config carries the progress callback pickled when the sweep
    # started, counting from 0: swap in one that counts from what had finished. The other
    # callbacks stay, in their order (Tune restores callback state by position), and keep
    # the references they were pickled with (the scheduler snapshot's to the scheduler).
    # Ray 2.60 has no public way to change a restored Tuner's callbacks.
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [progress if getattr(c, "is_progress", False) else c for c in run_config.callbacks or []]
    return tuner


class _Fitter:
    """Builds and runs Tuners that share the sweep's trainable, resources and run settings.

    resuming: a Tuner whose directory holds a snapshot is restored from it (finished trials
    kept, unfinished ones restarted) instead of being started anew.
    """

    def __init__(self, spec: SweepSpec, ctx, storage_path: str, progress, resuming: bool = False) -> None:
        from ray import tune

        from tune_prune.trainable import train_trial

        self.spec, self.ctx, self.storage_path, self.progress = spec, ctx, storage_path, progress
        self.resuming = resuming
        self.trainable = tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        self.epochs_by_trial: dict[str, float] = {}

    def _run(self, name: str, param_space: dict[str, Any], callbacks: tuple = (), **tune_kwargs: Any) -> list[str]:
        from ray import tune

        from tune_prune.trainable import trial_from_config

        def trial_name(tr) -> str:
            return trial_from_config(tr.config).name

        exp_dir = Path(self.storage_path) / name
        if self.resuming and _restorable(exp_dir):
            tuner = _restore_tuner(exp_dir, self.trainable, self.progress)
        else:
            tuner = self._new_tuner(name, param_space, trial_name, callbacks, **tune_kwargs)
        with _pending_trials(self._slots() if "search_alg" in tune_kwargs else None):
            self.last_grid = tuner.fit()
        failed = []
        for r in self.last_grid:
            key = trial_from_config(r.config).name
            self.epochs_by_trial[key] = float((r.metrics or {}).get("cost_epochs", 0) or 0)
            if r.error is not None:
                failed.append(key)
        if "scheduler" in tune_kwargs:
            _close_cut_short(self.ctx, [trial_from_config(r.config) for r in self.last_grid if r.error is None])
        return failed

    def _slots(self) -> int:
        r = self.spec.resources
        slots = trial_slots(r.cpu, r.gpu)
        return max(1, int(slots)) if slots != float("inf") else 1

    def _new_tuner(self, name, param_space, trial_name, callbacks, **tune_kwargs):
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        return tune.Tuner(
            self.trainable,
            # ctx as plain data: Tune swaps any other object in a param space for a placeholder
            # of the driver's object store, which a restored Tuner cannot resolve for the new
            # trials a searcher draws after a resume
            param_space={**param_space, "ctx": asdict(self.ctx)},
            tune_config=tune.TuneConfig(
                reuse_actors=True,  # a fresh worker costs seconds of imports; trials are tiny
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                **tune_kwargs,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=self.storage_path,
                failure_config=tune.FailureConfig(max_failures=self.spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # result.json only (see _ray_session): a restored Tuner reads each trial's results from it
                callbacks=[self.progress, *callbacks, JsonLoggerCallback()],
                verbose=0,
            ),
        )

    def grid(self, trials: list[TrialSpec], name: str) -> list[str]:
        from ray import tune

        if not trials:
            return []
        # Each trial as a JSON string: Tune deep-copies the whole grid for every trial it
        # generates, which for dicts grows with the grid (36 ms a trial at 500 trials, 134 ms at
        # 2,000, on 2 cores); a string is copied by reference.
        return self._run(name, {"trial": tune.grid_search([json.dumps(t.to_dict()) for t in trials])})

    def search_all(self, name: str, brackets: list[tuple[str, float, dict[str, Any]]], seed: int,
                   fillers: list[TrialSpec], confirm: "Confirmations") -> list[str]:
        """The whole adaptive sweep in one Tuner, so it fills the cluster from start to end.

        Every (schedule, target, space) bracket is in flight at once. Each keeps its own
        Optuna sampler (seeded as before) and its own ASHA rungs (max_t from its target);
        results are routed to them by the trial's bracket. A bracket's confirmations start as
        soon as its last sample has ended, while other brackets still search; the fillers
        (dense baselines, strategies with nothing to search) take slots no search trial can
        use yet. Confirmations and fillers run to the end of their budget (no ASHA)."""
        import math

        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        from ray.tune.search.sample import Domain

        s = self.spec.search
        searchers, schedulers, bases = {}, {}, {}
        for schedule, target, space in brackets:
            key = _bracket_key(schedule, target)
            # Optuna returns only what it samples: the constant knobs go with the bracket's base
            sampled = {k: v for k, v in space.items() if isinstance(v, Domain)}
            fixed = {k: v for k, v in space.items() if not isinstance(v, Domain)}
            searchers[key] = NoRepeatSearcher(OptunaSearch(space={"point": sampled}, metric=self.spec.metric.val,
                                                           mode=self.spec.metric.mode, seed=seed))
            schedulers[key] = ASHAScheduler(time_attr="milestone", max_t=-math.log2(1.0 - target),
                                            grace_period=min(s.grace_period, -math.log2(1.0 - target)),
                                            reduction_factor=s.reduction_factor)
            bases[key] = {"base": TrialSpec(**self.spec.base(), schedule=schedule, target=target, seed=seed).to_dict(),
                          "bracket": {"schedule": schedule, "target": target, "seed": seed}, "point": fixed}
        metric = self.spec.metric
        searcher = BracketSearcher(searchers, bases, s.num_samples, metric.val, metric.mode,
                                   fillers=[{"trial": json.dumps(t.to_dict())} for t in fillers], follow_up=confirm)
        scheduler = BracketScheduler(schedulers, searcher)
        # at most: every sample drawn and every bracket confirmed; the searcher ends it sooner
        # when a space runs out or fewer samples ran to their end than confirm_top
        most = len(fillers) + len(brackets) * (s.num_samples + s.confirm_top * len(confirm.seeds))
        return self._run(name, {}, callbacks=(scheduler.snapshot_callback(),), metric=metric.val, mode=metric.mode,
                         num_samples=most, search_alg=searcher, scheduler=scheduler)


@contextmanager
def _pending_trials(n: int | None):
    """Let Tune hold ``n`` trials pending (None: Tune's default), unless the user set
    TUNE_MAX_PENDING_TRIALS_PG. With a search algorithm of its own (our BracketSearcher)
    Tune holds one pending trial, and that ran an adaptive search one trial at a time
    whatever the cluster (measured with OptunaSearch on 2 CPUs: six 1-s trials one after
    another; with 2 pending, two at a time)."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if n is None or key in os.environ:
        yield
        return
    os.environ[key] = str(n)
    try:
        yield
    finally:
        os.environ.pop(key, None)


def tune_space(grid: tuple[tuple[str, tuple[Any, ...]], ...]) -> dict[str, Any]:
    """A strategy's knobs as a Ray Tune search space: ranges, choices and constants."""
    from ray import tune

    from tune_prune.spec import Range

    space: dict[str, Any] = {}
    for key, values in grid:
        if len(values) == 1 and isinstance(values[0], Range):
            r = values[0]
            if r.integer:
                space[key] = (tune.lograndint if r.log else tune.randint)(int(r.low), int(r.high) + 1)
            else:
                space[key] = (tune.loguniform if r.log else tune.uniform)(float(r.low), float(r.high))
        elif len(values) == 1:
            space[key] = values[0]
        else:
            space[key] = tune.choice(list(values))
    return space


#: the adaptive sweep's one Tuner, under the sweep directory (earlier versions ran three,
#: "dense", "search" and "confirm", one after another)
ADAPTIVE_TUNER = "adaptive"


def _adaptive_plan(spec: SweepSpec) -> tuple[list[tuple[str, float, dict[str, Any]]], list[TrialSpec]]:
    """The searched brackets (schedule, target, space), and the trials of strategies with
    nothing to search (one configuration, run on every seed with the confirmations)."""
    from ray.tune.search.sample import Domain

    from tune_prune.spec import make_trial

    fixed: list[TrialSpec] = []
    brackets: list[tuple[str, float, dict[str, Any]]] = []
    for strat in spec.strategies:
        space = tune_space(strat.grid)
        if not any(isinstance(v, Domain) for v in space.values()):
            fixed += [make_trial(spec.base(), strat.schedule, dict(space), t, seed)
                      for t in spec.target_sparsities for seed in spec.seeds]
            continue
        brackets += [(strat.schedule, target, space) for target in spec.target_sparsities]
    return brackets, fixed


def _adaptive(spec: SweepSpec, fit: "_Fitter", out: TextIO | None) -> list[str]:
    """Dense baselines, a searched bracket per (strategy, target) and its confirmations, in one
    Tuner (ADAPTIVE_TUNER under fit.storage_path). A resuming fit restores it with its
    searchers, ASHA schedulers and pending confirmations as Tune last saved them."""
    search_seed, other_seeds = spec.seeds[0], spec.seeds[1:]
    brackets, fixed = _adaptive_plan(spec)
    fillers = spec.dense_trials() + fixed
    if not brackets:  # nothing to search: the fixed trials are a grid
        return fit.grid(fillers, ADAPTIVE_TUNER)
    _say(out, f"search: {len(brackets)} bracket{'s' if len(brackets) != 1 else ''} at once, up to "
              f"{spec.search.num_samples} samples each "
              f"on seed {search_seed}; "
              + (f"each bracket's best {spec.search.confirm_top} re-run on seeds {list(other_seeds)} as soon as "
                 "its search ends" if other_seeds else "one seed, so nothing to confirm")
              + (f"; {len(fixed)} trials of strategies with nothing to search" if fixed else ""))
    confirm = Confirmations(spec.base(), tuple(other_seeds), spec.search.confirm_top, spec.metric.val,
                            spec.metric.higher_is_better)
    return fit.search_all(ADAPTIVE_TUNER, brackets, search_seed, fillers, confirm)


@dataclass(frozen=True)
class Confirmations:
    """What follows a bracket's search: its ``top`` samples that ran to their end (best
    validation metric first, then fewer epochs), each as a full trial on every other seed.

    Plain data, so Tune can pickle it with the searcher that calls it; it prints to
    whatever sys.stdout is, like the progress printer.
    """

    shared: dict[str, Any]
    seeds: tuple[int, ...]
    top: int
    metric: str
    higher_is_better: bool

    def __call__(self, bracket: dict[str, Any], done: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> list[dict]:
        from tune_prune.spec import make_trial

        ended = [(point, r) for point, r in done if r and r.get("event") == r.get("n_events") and self.metric in r]
        sign = -1 if self.higher_is_better else 1
        ended.sort(key=lambda pr: (sign * pr[1][self.metric], pr[1].get("cost_epochs", 0)))
        best = ended[: self.top]
        trials = [make_trial(self.shared, bracket["schedule"], dict(point), bracket["target"], seed)
                  for point, _ in best for seed in self.seeds]
        what = (f"{len(trials)} confirmation trials on seeds {list(self.seeds)}" if trials
                else "no confirmation (one seed)" if not self.seeds else "nothing to confirm")
        print(f"search {bracket['schedule']} at {bracket['target']:g} ended: {len(done)} samples, {len(ended)} ran to "
              f"their end; {what}", flush=True)
        return [{"trial": json.dumps(t.to_dict())} for t in trials]


def _bracket_key(schedule: str, target: float) -> str:
    return f"{schedule}@{float(target)!r}"


def _trial_bracket(trial) -> str | None:
    """The bracket a searched trial belongs to; None for a trial that is not searched."""
    b = trial.config.get("bracket")
    return None if b is None else _bracket_key(b["schedule"], b["target"])


def _trial_key_of(config: dict[str, Any]) -> str:
    """The content key of the trial a config describes: what names it in Ray and MLflow alike."""
    from tune_prune.trainable import trial_from_config

    return trial_from_config(config).key


def _saved_bytes(searcher, suffix: str = "") -> bytes:
    """A searcher's own save() output, as bytes to keep inside another searcher's file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"state{suffix}")
        searcher.save(path)
        return Path(path).read_bytes()


def _restore_bytes(searcher, blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state")
        Path(path).write_bytes(blob)
        searcher.restore(path)


class BracketSearcher:
    """One Ray Tune searcher over several brackets, each with its own inner searcher.

    Suggestions go round the brackets that still have samples left, so all of them are in
    flight together; each result goes back to the bracket that suggested the trial. A
    bracket's search is over after ``per_bracket`` suggestions or when its searcher says
    FINISHED; once its last trial has ended, ``follow_up(bracket, [(point, last result or
    None), ...])`` gives the trials that follow it (the confirmations). Those go first;
    ``fillers`` (trials that need no search) take the slots nothing else can use yet.

    A trial is known by its Tune id, and also by its content key: a resumed sweep restarts
    unfinished trials under new Tune ids, and ``renamed`` (called by BracketScheduler when
    Tune adds the trial again) moves the bookkeeping over to the new id.
    """

    def __new__(cls, inner: dict[str, Any], bases: dict[str, dict[str, Any]], per_bracket: int,
                metric: str = "val_accuracy", mode: str = "max", fillers: list[dict[str, Any]] = (),
                follow_up=None):
        from ray.tune.search import Searcher

        class _Brackets(Searcher):
            def __init__(self) -> None:
                super().__init__(metric=metric, mode=mode)
                self.order = list(inner)
                self.given = dict.fromkeys(inner, 0)
                self.finished: set[str] = set()
                self.owner: dict[str, str] = {}
                self.id_of_key: dict[str, str] = {}
                self.turn = 0
                self.points: dict[str, dict[str, Any]] = {}  # trial id -> sampled point, while it runs
                self.done: dict[str, list] = {k: [] for k in inner}  # bracket -> [(point, last result)]
                self.closed: set[str] = set()  # brackets whose follow-up is queued
                self.queue: list[dict[str, Any]] = []  # follow-up trials not suggested yet
                self.filled = 0  # fillers suggested so far

            def set_search_properties(self, metric, mode, config, **spec) -> bool:
                self._metric, self._mode = metric, mode
                return True  # each inner searcher already has its own space

            def _searching(self, key: str) -> bool:
                return key not in self.finished and self.given[key] < per_bracket

            def _close_ended(self) -> None:
                """Queue the follow-up of each bracket whose search is over and whose trials all ended."""
                if follow_up is None:
                    return
                running = {self.owner[t] for t in self.points}
                for key in self.order:
                    if key not in self.closed and not self._searching(key) and key not in running:
                        self.closed.add(key)
                        self.queue += follow_up(bases[key]["bracket"], self.done[key])

            def suggest(self, trial_id: str):
                self._close_ended()
                if self.queue:
                    return self.queue.pop(0)
                for _ in range(len(self.order)):
                    key = self.order[self.turn % len(self.order)]
                    self.turn += 1
                    if not self._searching(key):
                        continue
                    cfg = inner[key].suggest(trial_id)
                    if cfg == Searcher.FINISHED:
                        self.finished.add(key)
                        continue
                    if cfg is None:  # that bracket waits for results; try the next
                        continue
                    self.given[key] += 1
                    self.owner[trial_id] = key
                    # the bracket's constant knobs under the sampled ones
                    config = {**bases[key], **cfg, "point": {**bases[key].get("point", {}), **cfg.get("point", {})}}
                    self.points[trial_id] = config["point"]
                    if "base" in config:  # (unit tests drive it with bare brackets)
                        self.id_of_key[_trial_key_of(config)] = trial_id
                    return config
                if self.filled < len(fillers):
                    self.filled += 1
                    return fillers[self.filled - 1]
                self._close_ended()  # a bracket's searcher may have just said FINISHED
                if self.queue:
                    return self.queue.pop(0)
                over = all(not self._searching(k) for k in self.order)
                if over and (follow_up is None or len(self.closed) == len(self.order)):
                    return Searcher.FINISHED
                return None  # brackets still running: their follow-ups come later

            def renamed(self, trial_key: str, trial_id: str) -> None:
                """Tune added the trial with this content key under `trial_id` (a restart on resume)."""
                old = self.id_of_key.get(trial_key)
                if old is None or old == trial_id or old not in self.owner:
                    return
                bracket = self.owner.pop(old)
                self.owner[trial_id] = bracket
                self.id_of_key[trial_key] = trial_id
                if old in self.points:
                    self.points[trial_id] = self.points.pop(old)
                inner[bracket].renamed(old, trial_id)

            def on_trial_result(self, trial_id: str, result: dict) -> None:
                if trial_id in self.owner:
                    inner[self.owner[trial_id]].on_trial_result(trial_id, result)

            def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
                if trial_id in self.owner:
                    key = self.owner[trial_id]
                    inner[key].on_trial_complete(trial_id, result, error)
                    if trial_id in self.points:
                        self.done[key].append((self.points.pop(trial_id), None if error else result))
                    self._close_ended()

            def save(self, checkpoint_path: str) -> None:
                """Tune's experiment snapshot: every bracket's searcher and our counters, in one file
                (Tune renames that one file into place; it knows of no others)."""
                import pickle

                state = {"inner": {k: _saved_bytes(inner[k]) for k in self.order}, "given": self.given,
                         "finished": self.finished, "owner": self.owner, "id_of_key": self.id_of_key,
                         "turn": self.turn, "points": self.points, "done": self.done, "closed": self.closed,
                         "queue": self.queue, "filled": self.filled}
                with open(checkpoint_path, "wb") as f:
                    pickle.dump(state, f)

            def restore(self, checkpoint_path: str) -> None:
                import pickle

                with open(checkpoint_path, "rb") as f:
                    state = pickle.load(f)
                for k in self.order:
                    _restore_bytes(inner[k], state["inner"][k])
                self.given, self.finished, self.owner = state["given"], state["finished"], state["owner"]
                self.id_of_key, self.turn = state["id_of_key"], state["turn"]
                self.points, self.done, self.closed = state["points"], state["done"], state["closed"]
                self.queue, self.filled = state["queue"], state["filled"]

        return _Brackets()


class BracketScheduler:
    """Routes each trial to its bracket's own scheduler (ASHA rungs per target).

    Ray 2.60 saves no scheduler state with its experiment snapshot (only the searcher's
    and the callbacks'), so ``snapshot_callback()`` gives the Tuner a callback that carries
    every bracket's ASHA state in that snapshot. On resume Tune restarts unfinished trials
    under new ids; ``on_trial_add`` finds them by content key and renames them in the
    rungs and in the searcher, so a restarted trial is not recorded twice in a rung.
    Trials of no bracket (confirmations, dense baselines) go to a FIFO scheduler: they run
    to their end.
    """

    def __new__(cls, inner: dict[str, Any], searcher=None):
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler, TrialScheduler

        class _Brackets(TrialScheduler):
            def __init__(self) -> None:
                super().__init__()
                self.any = next(iter(inner.values()))
                self.plain = FIFOScheduler()
                self.id_of_key: dict[str, str] = {}

            def _of(self, trial):
                key = _trial_bracket(trial)
                return self.plain if key is None else inner[key]

            def set_search_properties(self, metric, mode, **spec) -> bool:
                self._metric, self._mode = metric, mode
                return all(s.set_search_properties(metric, mode, **spec) for s in inner.values())

            def _rename(self, sched, old: str, new: str) -> None:
                # ASHA's own bookkeeping (Ray 2.60: _trial_info, and each bracket's rungs of
                # (milestone, {trial_id: metric})): the restarted trial keeps its recorded rungs
                if old in getattr(sched, "_trial_info", {}):
                    sched._trial_info[new] = sched._trial_info.pop(old)
                for bracket in getattr(sched, "_brackets", []):
                    for _, recorded in bracket._rungs:
                        if old in recorded:
                            recorded[new] = recorded.pop(old)

            def on_trial_add(self, tune_controller, trial) -> None:
                key = _trial_key_of(trial.config)
                old = self.id_of_key.get(key)
                if old is not None and old != trial.trial_id and _trial_bracket(trial) is not None:
                    self._rename(inner[_trial_bracket(trial)], old, trial.trial_id)
                    if searcher is not None:
                        searcher.renamed(key, trial.trial_id)
                self.id_of_key[key] = trial.trial_id
                self._of(trial).on_trial_add(tune_controller, trial)

            def on_trial_error(self, tune_controller, trial) -> None:
                self._of(trial).on_trial_error(tune_controller, trial)

            def on_trial_result(self, tune_controller, trial, result):
                return self._of(trial).on_trial_result(tune_controller, trial, result)

            def on_trial_complete(self, tune_controller, trial, result) -> None:
                self._of(trial).on_trial_complete(tune_controller, trial, result)

            def on_trial_remove(self, tune_controller, trial) -> None:
                self._of(trial).on_trial_remove(tune_controller, trial)

            def choose_trial_to_run(self, tune_controller):
                return self.any.choose_trial_to_run(tune_controller)  # the same FIFO choice in every bracket

            def debug_string(self) -> str:
                return "; ".join(f"{k}: {s.debug_string()}" for k, s in inner.items())

            def get_state(self) -> dict[str, Any]:
                """Every bracket's scheduler state and the key -> Tune id map, for the snapshot."""
                return {"inner": {k: _saved_bytes(s) for k, s in inner.items()}, "id_of_key": dict(self.id_of_key)}

            def set_state(self, state: dict[str, Any]) -> None:
                for k, blob in state["inner"].items():
                    _restore_bytes(inner[k], blob)
                self.any = next(iter(inner.values()))
                self.id_of_key = dict(state["id_of_key"])

            def snapshot_callback(self):
                return _SchedulerSnapshot(self)

        class _SchedulerSnapshot(tune.Callback):
            """Puts the scheduler's state into Tune's experiment snapshot (and back on resume)."""

            def __init__(self, scheduler) -> None:
                self.scheduler = scheduler

            def get_state(self) -> dict[str, Any]:
                return {"scheduler": self.scheduler.get_state()}

            def set_state(self, state: dict[str, Any]) -> None:
                self.scheduler.set_state(state["scheduler"])

        return _Brackets()


class NoRepeatSearcher:
    """Wraps a Ray Tune searcher so a configuration is never run twice in one bracket.

    Optuna's samplers can propose a categorical configuration again; running it would
    create a second trial with the same content key (and MLflow run). A repeat is
    answered from memory instead: the inner searcher is told the earlier result (or
    an error while that trial is still running) and asked again. When it keeps
    repeating, the space is exhausted and the search ends.
    """

    def __new__(cls, inner, max_tries: int = 64):
        from ray.tune.search import Searcher

        class _NoRepeat(Searcher):
            def __init__(self) -> None:
                super().__init__(metric=inner.metric, mode=inner.mode)
                self.inner = inner
                self.seen: dict[str, dict | None] = {}
                self.ids: dict[str, tuple[str, str]] = {}

            def set_search_properties(self, metric, mode, config, **spec) -> bool:
                ok = self.inner.set_search_properties(metric, mode, config, **spec)
                self._metric, self._mode = metric, mode
                return ok

            def suggest(self, trial_id: str):
                import json

                for attempt in range(max_tries):
                    inner_id = f"{trial_id}-{attempt}"
                    cfg = self.inner.suggest(inner_id)
                    if cfg is None or cfg == Searcher.FINISHED:
                        return cfg
                    key = json.dumps(cfg.get("point", cfg), sort_keys=True, default=str)
                    if key not in self.seen:
                        self.seen[key] = None
                        self.ids[trial_id] = (key, inner_id)
                        return cfg
                    previous = self.seen[key]
                    self.inner.on_trial_complete(inner_id, previous, error=previous is None)
                return Searcher.FINISHED

            def renamed(self, old: str, new: str) -> None:
                """The trial `old` goes on as `new` (the inner searcher keeps its own id for it)."""
                if old in self.ids:
                    self.ids[new] = self.ids.pop(old)

            def on_trial_result(self, trial_id: str, result: dict) -> None:
                if trial_id in self.ids:
                    self.inner.on_trial_result(self.ids[trial_id][1], result)

            def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
                if trial_id in self.ids:
                    key, inner_id = self.ids[trial_id]
                    self.seen[key] = None if error else result
                    self.inner.on_trial_complete(inner_id, result, error)

            def save(self, checkpoint_path: str) -> None:
                import pickle

                with open(checkpoint_path, "wb") as f:
                    pickle.dump({"inner": _saved_bytes(self.inner), "seen": self.seen, "ids": self.ids}, f)

            def restore(self, checkpoint_path: str) -> None:
                import pickle

                with open(checkpoint_path, "rb") as f:
                    state = pickle.load(f)
                _restore_bytes(self.inner, state["inner"])
                self.seen, self.ids = state["seen"], state["ids"]

        return _NoRepeat()


CONTEXT_FILE = "tune_prune_sweep.json"

LOOPBACK = "127.0.0.1"


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a new single-node Ray for this process that advertises and listens on 127.0.0.1 only.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough in Ray 2.60: Ray swaps a
    loopback address for the machine's network address, and its servers then listen on
    every interface. Ray keeps a node on loopback only while it believes multi-node
    clusters are off (`ray_constants.ENABLE_RAY_CLUSTER`, the switch behind
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER): the node's address is then 127.0.0.1, and the GCS,
    raylet, agents and workers bind 127.0.0.1. The switch is read while ray.init resolves
    the node's address, so it is off for that call only; a later `ray.init(address=...)` in
    this process joins clusters as usual. tests/test_ray_loopback.py checks the result.

    address="local" starts a new Ray even when another one runs on this machine: a bare
    ray.init() would join the cluster that the last `ray start` recorded in /tmp/ray.
    """
    import ray
    from ray._private import ray_constants

    clusters_on = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                 logging_level="WARNING", **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters_on


def join_ray(address: str) -> None:
    """Join a running Ray cluster at `address` (host:port, ray://..., or auto).

    A cluster addressed on 127.0.0.1 or localhost is joined with Ray's single-machine
    switch off, as in start_local_ray: otherwise Ray swaps the loopback address for the
    machine's, where a cluster kept on loopback does not listen.
    """
    import ray
    from ray._private import ray_constants

    host = address.rsplit(":", 1)[0].split("://")[-1].strip("[]")
    clusters_on = ray_constants.ENABLE_RAY_CLUSTER
    if host in (LOOPBACK, "localhost"):
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address=address, logging_level="WARNING")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters_on


@contextmanager
def _ray_session(address: str | None, tracker):
    """Ray for the body of a sweep; always shut down, and the parent run marked FAILED
    if the body raised (the trials' own runs record their fate themselves)."""
    import ray

    # A checkpoint per prune event is by design; Tune's "snapshotting too often" warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own per-trial CSV and TensorBoard files repeat what MLflow records, at ~10 ms of the
    # driver's time per trial; its result.json logger is kept (see _Fitter._new_tuner). A user who
    # wants the others back sets TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ok = False
    try:
        if address:
            join_ray(address)
        else:
            start_local_ray()
        yield
        ok = True
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not ok:
            tracker.end("FAILED")


def run_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    experiment: str | None = None,
    address: str | None = None,
    smoke_test: bool = False,
    out: TextIO | None = None,
) -> SweepOutcome:
    """Pretrain the dense models, run every trial on Ray Tune, then build and log the frontier."""
    import ray

    from tune_prune.tracking import SweepTracker

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
    what = (f"{len(trials)} trials" if spec.search.mode == "grid" else
            f"adaptive search: {len(spec.strategies) * len(spec.target_sparsities)} brackets x "
            f"{spec.search.num_samples} samples, top {spec.search.confirm_top} confirmed on {len(spec.seeds)} seeds")
    _say(out, f"sweep {run_name}: {what} ({len(spec.seeds)} dense baselines), "
              f"MLflow experiment '{experiment}' (id {tracker.experiment_id}), parent run {parent_id}")
    _say(out, f"tracking store: {tracking_uri}")

    with _ray_session(address, tracker):
        res = spec.resources
        warning = sqlite_preflight(tracking_uri, address, res.cpu, res.gpu)
        if warning:
            _say(out, f"warning: {warning}")

        # Dense models: one Ray task per key missing from the cache, in parallel.
        by_key: dict[str, TrialSpec] = {}
        for t in trials:
            by_key.setdefault(t.dense_key, t)
        task = ray.remote(_pretrain_remote).options(num_cpus=res.cpu, num_gpus=res.gpu)
        _say(out, f"dense models: {len(by_key)} (cache {cache_dir})")
        t0 = time.perf_counter()
        pending = {task.remote(t.to_dict(), cache_dir, res.cpu, res.gpu, asdict(spec.execution)): t
                   for t in by_key.values()}
        done_by_key: dict[str, dict[str, Any]] = {}
        while pending:
            # one line per dense model as it is ready: pretraining can take minutes per seed
            ready, _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ready[0])
            p = ray.get(ready[0])
            done_by_key[t.dense_key] = p
            how = "trained" if p["trained"] else "from cache"
            _say(out, f"  dense model {len(done_by_key)}/{len(by_key)} ready after {time.perf_counter() - t0:.0f}s "
                      f"(seed {t.seed}, {how}): val {spec.metric.name} {p['result'].get('val_score', float('nan')):.4f}")
        pre = [done_by_key[k] for k in by_key]
        from tune_prune.loop import PretrainResult

        results = {p["dense_key"]: PretrainResult.from_dict(p["result"]) for p in pre}
        trained = sum(p["trained"] for p in pre)
        made = "taken as they are from their starting weights" if spec.pretrain.epochs == 0 else "trained"
        _say(out, f"dense models ready in {time.perf_counter() - t0:.1f}s ({trained} {made}, "
                  f"{len(pre) - trained} from cache); val {spec.metric.name} "
                  + ", ".join(f"{k}={r.val_score:.4f}" for k, r in results.items()))
        tracker.log_pretraining(results, accelerator_seconds=sum(p["accelerator_seconds"] for p in pre))

        from tune_prune.trainable import TrialContext

        ctx = TrialContext(tracking_uri=tracking_uri, experiment_id=tracker.experiment_id, parent_run_id=parent_id,
                           cache_dir=cache_dir, cpu_per_trial=res.cpu, gpu_per_trial=res.gpu,
                           speed=asdict(spec.speed), execution=asdict(spec.execution),
                           tracking=asdict(spec.tracking))
        progress = _progress_callback(len(trials) if spec.search.mode == "grid" else 0)
        # What `tune-prune resume` needs if this driver dies, beside Tune's own state: a grid
        # sweep is one Tuner in this directory, an adaptive one a Tuner per phase below it.
        exp_dir = Path(storage_path) / run_name
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / CONTEXT_FILE).write_text(json.dumps({
            "spec": spec.resolved_dict(), "experiment": experiment, "run_name": run_name,
            "tracking_uri": tracking_uri, "parent_run_id": parent_id, "ctx": asdict(ctx),
            "mode": spec.search.mode}, indent=2, default=str))
        _say(out, f"if this driver dies, finish the sweep with: tune-prune resume {exp_dir}")
        if spec.search.mode == "grid":
            fit = _Fitter(spec, ctx, storage_path, progress)
            failed = fit.grid(trials, run_name)
        else:
            fit = _Fitter(spec, ctx, str(exp_dir), progress)
            failed = _adaptive(spec, fit, out)
    return _finish(spec, tracker, experiment, failed, t_start)


#: most trials at once tested against one SQLite file (tests/test_sqlite_concurrency.py runs 16;
#: benchmarks/README.md has the figures); beyond this the sweep suggests a tracking server
SQLITE_MAX_CONCURRENT = 64


def sqlite_preflight(tracking_uri: str, address: str | None, cpu: float, gpu: float) -> str | None:
    """What to use instead of a SQLite store, when this Ray cannot use one well; None if it can.

    Call with Ray initialised: it counts the nodes and the trials that can run at once.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    try:
        return _sqlite_advice(address, cpu, gpu)
    except Exception:  # noqa: BLE001 - advice only: never stop a sweep over it (e.g. a Ray client)
        return None


def trial_slots(cpu: float, gpu: float) -> float:
    """How many trials the running Ray cluster holds at once with ``cpu`` CPUs and ``gpu``
    GPUs each (inf when a trial asks for neither)."""
    import ray

    total = ray.cluster_resources()
    return min(total.get("CPU", 0) / cpu if cpu else float("inf"), total.get("GPU", 0) / gpu if gpu else float("inf"))


def _sqlite_advice(address: str | None, cpu: float, gpu: float) -> str | None:
    import ray

    server = ("run an MLflow tracking server on PostgreSQL (deploy/mlflow/run_server.sh) and pass "
              "--tracking-uri http://HOST:PORT")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        return (f"the tracking store is a SQLite file on this machine but Ray has {len(nodes)} nodes: trials on "
                f"other machines cannot write to it; {server}")
    slots = trial_slots(cpu, gpu)
    if SQLITE_MAX_CONCURRENT < slots < float("inf"):
        return (f"up to {slots:.0f} trials at once will write to one SQLite file (tested up to "
                f"{SQLITE_MAX_CONCURRENT}); if MLflow reports 'database is locked', {server}")
    if address:
        return f"the tracking store is a SQLite file while joining a Ray cluster; for more than one machine, {server}"
    return None


@dataclass(frozen=True)
class ResumePlan:
    """Where each trial of an interrupted sweep stands, before it is resumed.

    finished: names of trials whose MLflow child run FINISHED (Tune replays them without
    training); resume_after: trial name -> prune events its state copy holds (it
    continues with the next one); fresh: names of trials that start from the dense model.
    """

    total: int
    finished: tuple[str, ...]
    resume_after: dict[str, int]
    fresh: tuple[str, ...]
    adaptive: bool = False

    @classmethod
    def of(cls, trials: list[TrialSpec], tracker, ctx) -> "ResumePlan":
        from tune_prune.tracking import TAG_TRIAL_KEY, child_runs
        from tune_prune.trainable import events_saved

        done_keys = {r.data.tags.get(TAG_TRIAL_KEY) for r in child_runs(tracker.uri, tracker.experiment_id,
                                                                      tracker.parent_run_id)
                     if r.info.status == "FINISHED"}
        finished, resume_after, fresh = [], {}, []
        for t in trials:
            if t.key in done_keys:
                finished.append(t.name)
            elif not t.is_dense and (events := events_saved(ctx, t)) > 0:
                resume_after[t.name] = events
            else:
                fresh.append(t.name)
        return cls(len(trials), tuple(finished), resume_after, tuple(fresh))

    @classmethod
    def of_runs(cls, spec: SweepSpec, tracker, ctx) -> "ResumePlan":
        """The same for an adaptive sweep, whose trials are known only once drawn: those with a
        child run. total: the trials of the fixed plan (dense, search samples at most,
        confirmations) so far as the spec fixes it; finished includes ASHA-stopped (KILLED) runs."""
        from tune_prune.tracking import TAG_TRIAL_KEY, USABLE_STATUSES, child_runs
        from tune_prune.trainable import events_saved_for_key

        finished, resume_after, fresh = [], {}, []
        for r in child_runs(tracker.uri, tracker.experiment_id, tracker.parent_run_id):
            name = r.info.run_name
            if r.info.status in USABLE_STATUSES:
                finished.append(name)
            elif r.data.tags.get("tune_prune.kind") != "dense" and \
                    (events := events_saved_for_key(ctx, r.data.tags[TAG_TRIAL_KEY])) > 0:
                resume_after[name] = events
            else:
                fresh.append(name)
        brackets, fixed = _adaptive_plan(spec)
        total = len(spec.dense_trials()) + len(brackets) * (spec.search.num_samples + spec.search.confirm_top
                                                             * (len(spec.seeds) - 1)) + len(fixed)
        return cls(total, tuple(sorted(finished)), resume_after, tuple(sorted(fresh)), adaptive=True)

    def summary(self) -> str:
        """One line, e.g. 'resuming: 7 of 20 trials finished, 3 resume (2 after event 3, 1 after
        event 1), 10 start fresh'."""
        from collections import Counter

        by_event = sorted(Counter(self.resume_after.values()).items(), reverse=True)
        detail = ", ".join(f"{n} after event {e}" for e, n in by_event)
        resume = f"{len(self.resume_after)} resume" + (f" ({detail})" if detail else "")
        if self.adaptive:
            return (f"resuming: {len(self.finished)} of up to {self.total} trials finished, {resume}, "
                    f"{len(self.fresh)} start fresh; the search draws only the samples it has not drawn yet")
        return f"resuming: {len(self.finished)} of {self.total} trials finished, {resume}, {len(self.fresh)} start fresh"


@contextmanager
def _quiet(logger_name: str):
    """Only errors from this logger while the body runs."""
    import logging

    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def resume_sweep(path: str | Path, *, address: str | None = None, out: TextIO | None = None) -> SweepOutcome:
    """Finish a sweep whose driver died: restore its Tuner(s), rerun nothing that finished.

    Unfinished trials resume from their last prune-event state copy and write into
    their existing MLflow child runs (found by trial key); errored trials are retried.
    An adaptive sweep's Tuner comes back with its searchers', ASHA schedulers' and pending
    confirmations' state, so it draws only the samples it had not drawn yet, and each
    bracket's confirmations follow from its results.
    """
    from tune_prune.spec import parse_spec
    from tune_prune.tracking import SweepTracker
    from tune_prune.trainable import TrialContext

    exp_dir = Path(path).resolve()
    context_file = exp_dir / CONTEXT_FILE
    if not context_file.is_file():
        raise LookupError(f"{exp_dir} is not a tune_prune sweep directory (no {CONTEXT_FILE}); pass the "
                          "directory the sweep printed, <storage_path>/<sweep run name>")
    context = json.loads(context_file.read_text())
    spec = parse_spec(context["spec"])
    adaptive = spec.search.mode != "grid"
    t_start = time.perf_counter()
    tracker = SweepTracker(context["tracking_uri"], context["experiment"])
    tracker.reopen_parent(context["parent_run_id"])
    _say(out, f"resuming {'adaptive ' if adaptive else ''}sweep {context['run_name']} "
              f"(parent run {context['parent_run_id']}) from {exp_dir}")
    plan = (ResumePlan.of_runs(spec, tracker, context["ctx"]) if adaptive
            else ResumePlan.of(spec.trials(), tracker, context["ctx"]))
    _say(out, plan.summary())
    with _ray_session(address, tracker):
        if adaptive:
            if not _restorable(exp_dir / ADAPTIVE_TUNER):
                earlier = " (it has the phases of an earlier tune_prune, which this version cannot resume)" \
                    if (exp_dir / "search").is_dir() else ""
                raise LookupError(f"Ray Tune has no restorable state in {exp_dir / ADAPTIVE_TUNER}{earlier}")
            fit = _Fitter(spec, TrialContext.of(context["ctx"]), str(exp_dir),
                          _progress_callback(0, plan.finished), resuming=True)
            failed = _adaptive(spec, fit, out)
            abandoned = _close_abandoned(tracker)
            if abandoned:
                _say(out, f"{len(abandoned)} child runs that no Tune trial took up again were marked FAILED: "
                          + ", ".join(abandoned))
        else:
            if not _restorable(exp_dir):
                raise LookupError(f"Ray Tune has no restorable state in {exp_dir}")
            from tune_prune.trainable import train_trial, trial_from_config

            from ray import tune

            res = spec.resources
            trainable = tune.with_resources(train_trial, {"cpu": res.cpu, "gpu": res.gpu})
            grid = _restore_tuner(exp_dir, trainable, _progress_callback(plan.total, plan.finished)).fit()
            failed = [trial_from_config(r.config).name for r in grid if r.error is not None]
    return _finish(spec, tracker, context["experiment"], failed, t_start)


def _close_cut_short(ctx, ended: list[TrialSpec]) -> list[str]:
    """Close as KILLED the runs of trials that Tune ended without error while their runs are
    still RUNNING; their names.

    Such a trial was stopped by its scheduler (ASHA) at one of its events, and its worker
    was cut short before it closed the run: Tune ends a Tuner, and its actors, as soon as
    its last trial is stopped. Left RUNNING, the run would read as unfinished, and its
    events would not count. Reopened as the trial's retry would reopen it, its record on
    the parent is completed from its own history first.
    """
    from tune_prune.tracking import TAG_TRIAL_KEY, TrialTracker, child_runs
    from tune_prune.trainable import close_stopped

    by_key = {t.key: t for t in ended}
    names = []
    for r in child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, status="RUNNING"):
        trial = by_key.get(r.data.tags.get(TAG_TRIAL_KEY))
        if trial is None:
            continue
        tracker = TrialTracker(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial,
                               device=r.data.params.get("device", "cpu"),
                               accelerator_share=float(r.data.params.get("accelerator_share", 1.0)))
        tracker.start()
        close_stopped(tracker, ctx, trial)  # as the worker would have
        names.append(r.info.run_name)
    return names


def _close_abandoned(tracker) -> list[str]:
    """End the child runs still RUNNING after a resumed sweep as FAILED; their names.

    Such a run belongs to a trial that started after Tune's last snapshot before the
    driver died and that the restored searcher did not draw again, so no trial will
    finish it. Left RUNNING it would look alive forever.
    """
    from tune_prune.tracking import child_runs

    names = []
    for r in child_runs(tracker.uri, tracker.experiment_id, tracker.parent_run_id, status="RUNNING"):
        if r.info.status == "RUNNING":
            tracker.client.set_tag(r.info.run_id, "tune_prune.error",
                                   "abandoned: started just before its sweep's driver died, and the resumed "
                                   "search did not draw this configuration again")
            tracker.client.set_terminated(r.info.run_id, "FAILED")
            names.append(r.info.run_name)
    return names


def _finish(spec: SweepSpec, tracker, experiment: str, failed: list[str], t_start: float) -> SweepOutcome:
    """Read back what the trials logged, from MLflow itself; report; close the parent run."""
    from tune_prune.tracking import USABLE_STATUSES, load_records

    parent_id = tracker.parent_run_id
    records = load_records(tracker.uri, tracker.experiment_id, parent_id)
    finished = records[records["status"].isin(USABLE_STATUSES)]
    metric = spec.metric
    front = fr.frontier(finished, spec.target_sparsities, spec.frontier_rule, metric=metric)
    dense = fr.dense_baseline(finished, metric)
    recs = report.recommendations(finished, spec.target_sparsities, spec.frontier_rule, metric)  # shared below
    with tempfile.TemporaryDirectory() as tmp:
        title = f"{spec.name}: {spec.model.name} on {spec.dataset.name}"
        for path in report.build_report(records, tmp, title, spec.target_sparsities, spec.frontier_rule, recs):
            tracker.log_artifact(path)
        events_csv = Path(tmp) / "events.csv"
        records.to_csv(events_csv, index=False)
        tracker.log_artifact(events_csv)
    tracker.log_table(front)
    tracker.link_models(report.recommended_trials(finished, spec.target_sparsities, spec.frontier_rule, recs))
    wall = time.perf_counter() - t_start
    last = records.sort_values("event").groupby("trial_key").tail(1)
    tracker.log_summary(
        {"trials_failed": len(failed), "trials_total": records["trial_key"].nunique(), "sweep_wall_seconds": wall,
         f"dense_{spec.metric.test}": dense[f"{spec.metric.test}_mean"],
         "trials_cost_epochs_total": float(last["cost_epochs"].sum()),
         "trials_wall_seconds_total": float(last["wall_seconds"].sum()),
         "trials_accelerator_seconds_total": float(last["accelerator_seconds"].fillna(0).sum())},
        tags={"tune_prune.failed_trials": ",".join(failed)[:5000]} if failed else None,
    )
    run = tracker.client.get_run(parent_id)  # its params and the totals just logged, for the description
    tracker.set_description(report.markdown_note(records, parent_id, spec.target_sparsities, spec.frontier_rule,
                                                 run.data.params, run.data.metrics, recs))
    tracker.end("FINISHED" if not failed else "FAILED")
    summary = report.format_frontier(front, dense, finished, metric=metric)
    n_run = records["trial_key"].nunique()
    return SweepOutcome(experiment, parent_id, tracker.uri, n_run, failed, front, dense, wall, summary)
