"""Sweep specs: YAML in, validated frozen objects out.

Everything a user can get wrong is checked here, before Ray starts or MLflow is
touched; a problem raises ``SpecError`` whose message starts with the dotted
field name and says what is accepted.

A spec expands into a list of ``TrialSpec``: one per point of
strategy x knobs x target sparsity x seed, plus one dense baseline per seed.
Each trial is named by its content: ``<schedule>-s<target>-<key8>``.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from tune_prune import schema
from tune_prune.pruning.budget import planned_range
from tune_prune.pruning.schedules import SCHEDULE_KNOBS, ScheduleError, build_schedule
from tune_prune.schema import AMP_CHOICES, COMMON_STRATEGY_KEYS, DEFAULT_CRITERION, EXTRA_STRATEGY_KEYS, STRUCTURES

DENSE = "dense"
STRUCTURED, UNSTRUCTURED = STRUCTURES
#: accepted values of execution.channels_last (resolved by loop.FastPath, with AMP_CHOICES)
CHANNELS_LAST_CHOICES = ("auto", True, False)
__all__ = ["AMP_CHOICES", "DEFAULT_CRITERION", "SpecError", "SweepSpec", "TrialSpec", "load_spec", "parse_spec"]


class SpecError(ValueError):
    """A sweep spec is invalid; ``field`` is the dotted path of the culprit."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    def freeze(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        if isinstance(v, dict):
            return _frozen(v)
        return v

    return tuple(sorted((k, freeze(v)) for k, v in (mapping or {}).items()))


def _thaw(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    def thaw(v: Any) -> Any:
        if isinstance(v, tuple):
            if all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v) and v:
                return _thaw(v)
            return [thaw(x) for x in v]
        return v

    return {k: thaw(v) for k, v in items}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str | None = None
    val_size: float | int = 0.1
    train_subset: int | None = None
    split_seed: int = 0
    download: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def kwargs_own(self) -> dict[str, Any]:
        """The dataset's own options (beyond root, val_size, train_subset, split_seed, download)."""
        return _thaw(self.options)

    def key_dict(self) -> dict[str, Any]:
        """The fields that name this data in keys: how it is held (``storage``) changes no result."""
        d = asdict(self)
        d["options"] = tuple((k, v) for k, v in self.options if k != "storage")
        return d

    def load_kwargs(self) -> dict[str, Any]:
        kw = {k: getattr(self, k) for k in ("root", "val_size", "train_subset", "split_seed", "download")}
        kw.update(_thaw(self.options))
        return kw


@dataclass(frozen=True)
class ModelSpec:
    """Which network, from where, with which starting weights.

    ``source`` is builtin (tune_prune.models), torchvision, timm or python
    (module:function). ``options`` are the builder's own options for builtin
    models, and weights/pretrained/num_classes/kwargs for the others. A checkpoint
    is identified by ``checkpoint_sha256``, its content hash, not by its path.
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    source: str = "builtin"
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    checkpoint_sha256: str | None = None
    normalize: Any = None  # None (auto), "data", "imagenet", or frozen {mean, std}

    def kwargs(self) -> dict[str, Any]:
        return _thaw(self.options)

    @property
    def starts_from_weights(self) -> bool:
        """True when the dense model starts from weights rather than a random init."""
        opts = self.kwargs()
        return self.checkpoint is not None or bool(opts.get("weights")) or bool(opts.get("pretrained"))

    def key_dict(self) -> dict[str, Any]:
        """The fields that name this model in trial and dense keys.

        Fields added after keys were first published are left out at their default,
        so built-in models keep their keys; a checkpoint counts by content, not path.
        """
        d = asdict(self)
        for f in fields(self):
            if f.name not in ("name", "options") and d[f.name] == f.default:
                d.pop(f.name)
        if self.checkpoint_sha256 is not None:
            d.pop("checkpoint", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["options"] = _refreeze(d.get("options", ()))
        d["normalize"] = _refreeze(d.get("normalize"))
        return cls(**d)


def _refreeze(value: Any) -> Any:
    """Undo JSON's tuple -> list for a frozen value."""
    if isinstance(value, (list, tuple)):
        return tuple(_refreeze(v) for v in value)
    return value


@dataclass(frozen=True)
class PretrainSpec:
    epochs: int = 30
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd | adamw

    def key_dict(self) -> dict[str, Any]:
        """Fields added after keys were first published are left out at their default."""
        d = asdict(self)
        if d["optimizer"] == "sgd":
            d.pop("optimizer")
        return d


@dataclass(frozen=True)
class FinetuneSpec:
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_delta: float = 0.0
    monitor: str = "val_accuracy"  # what patience watches: the task's val metric, or val_loss
    optimizer: str = "sgd"  # sgd | adamw, built fresh per prune event
    batches_per_epoch: int | None = None  # None: an epoch is a full pass over the training split


@dataclass(frozen=True)
class BudgetSpec:
    """A trial's fine-tuning budget. ``epochs=None`` is the paper's patience protocol: no
    per-trial budget, patience alone ends each event, ``max_event_epochs`` is its safety cap."""

    epochs: int | None
    policy: str = "carry_over"
    max_event_epochs: int | None = None

    @property
    def unbounded(self) -> bool:
        return self.epochs is None

    def label(self) -> str:
        """How validate and the records name it: '30 epochs (carry_over)' or 'unbounded ...'."""
        cap = f", at most {self.max_event_epochs} per event" if self.max_event_epochs is not None else ""
        if self.unbounded:
            return f"unbounded (patience alone ends each event{cap})"
        return f"{self.epochs} epochs ({self.policy}{cap})"


@dataclass(frozen=True)
class SweepBudgetSpec:
    """Limits on the whole sweep's plan (they do not change any trial, so not part of trial keys)."""

    epochs: int | None = None  # total fine-tuning + pretraining epochs
    accelerator_hours: float | None = None  # GPU share x hours (core-hours on CPU)
    epoch_seconds: float | None = None  # the user's estimate of one epoch on one trial's resources


@dataclass(frozen=True)
class PlannedCost:
    """What a sweep would spend: fixed-epoch trials exactly, patience trials between the
    fewest epochs patience allows (``patience_min_epochs``) and their cap."""

    fixed_epochs: int
    patience_cap_epochs: int
    pretrain_epochs: int
    accelerator_share: float  # per trial: GPU fraction, or cores on CPU
    epoch_seconds: float | None
    patience_min_epochs: int = 0

    @property
    def total_epochs(self) -> int:
        """The most the sweep can spend (what the sweep budget is checked against)."""
        return self.fixed_epochs + self.patience_cap_epochs + self.pretrain_epochs

    @property
    def min_total_epochs(self) -> int:
        """The least it can spend: every patience event stopping as early as patience allows."""
        return self.fixed_epochs + self.patience_min_epochs + self.pretrain_epochs

    @property
    def accelerator_hours(self) -> float | None:
        if self.epoch_seconds is None:
            return None
        return self.total_epochs * self.epoch_seconds * self.accelerator_share / 3600


@dataclass(frozen=True)
class SpeedSpec:
    """How each trial's final model is timed against the dense one (see tune_prune.speed).

    Timing does not change what a trial trains, so it is not part of trial keys.
    """

    enabled: bool = True
    batch_size: int = 256  # the throughput batch; latency is always batch 1
    warmup: int = 3
    repeats: int = 15


@dataclass(frozen=True)
class TrackingSpec:
    """What each trial records in MLflow beyond its metrics (not in trial keys)."""

    log_models: bool = True


@dataclass(frozen=True)
class ExecutionSpec:
    """Speed choices, resolved per device at run time (see tune_prune.loop.FastPath); not in trial keys.

    amp: auto | bf16 | fp32. channels_last: auto | true | false. ``auto`` means on
    where it helps: bf16 autocast and channels_last (conv models) on CUDA, off on CPU.
    """

    amp: str = "auto"
    channels_last: Any = "auto"


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one trial's result (and so its key)."""

    dataset: DatasetSpec
    model: ModelSpec
    pretrain: PretrainSpec
    finetune: FinetuneSpec
    budget: BudgetSpec
    schedule: str
    target: float
    seed: int
    knobs: tuple[tuple[str, float], ...] = ()
    patience: int | None = None
    first_patience: int | None = None
    epochs_per_event: int | None = None
    criterion: str = "global_magnitude"
    structure: str = UNSTRUCTURED
    prune_include: tuple[str, ...] = ()  # glob patterns on module names; () = every Conv2d/Linear
    prune_exclude: tuple[str, ...] = ()
    task: str = "classification"  # or causal_lm: the metric and its direction (tune_prune.metrics)
    #: what the records call this trial's strategy when it is not the schedule: schedule+criterion
    #: in a sweep comparing criteria. A label only: not part of the key.
    arm: str | None = None

    @property
    def strategy(self) -> str:
        return self.arm or self.schedule

    @property
    def metric(self):
        """The task's metric (tune_prune.metrics.Metric): what patience, checkpoints and the frontier rank."""
        from tune_prune.metrics import for_task

        return for_task(self.task)

    @property
    def is_dense(self) -> bool:
        return self.schedule == DENSE

    @property
    def sparsities(self) -> tuple[float, ...]:
        """The cumulative schedule (empty for the dense baseline)."""
        if self.is_dense:
            return ()
        return build_schedule(self.schedule, self.target, **dict(self.knobs))

    @property
    def mode(self) -> str:
        return "patience" if self.patience is not None else "fixed"

    def event_patience(self, index: int) -> int | None:
        """Patience of event ``index`` (0-based): first_patience after the first, else patience."""
        if index == 0 and self.first_patience is not None:
            return self.first_patience
        return self.patience

    def planned_epochs(self) -> tuple[int, int]:
        """(fewest, most) fine-tuning epochs this trial can spend (0, 0 for a dense baseline)."""
        n = len(self.sparsities)
        if n == 0:
            return 0, 0
        if self.mode == "fixed":
            least = most = [self.epochs_per_event] * n
        else:
            # patience p stops an event after p epochs without improvement at the earliest
            least = [max(self.event_patience(i), 1) for i in range(n)]
            most = [self.epochs_per_event] * n
            if self.epochs_per_event is not None:
                least = [min(x, self.epochs_per_event) for x in least]
        b = self.budget
        return planned_range(b.epochs, b.policy, least, most, b.max_event_epochs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _keyed(self) -> dict[str, Any]:
        # Fields added after keys were first published are left out at their
        # default value, so trials of older sweeps keep their keys (and resume).
        d = self.to_dict()
        if d["structure"] == UNSTRUCTURED:
            d.pop("structure")
        for f in ("prune_include", "prune_exclude"):
            if not d[f]:
                d.pop(f)
        d["model"] = self.model.key_dict()
        d["dataset"] = self.dataset.key_dict()
        if d["finetune"]["monitor"] == "val_accuracy":
            d["finetune"].pop("monitor")
        for f, default in (("optimizer", "sgd"), ("batches_per_epoch", None)):
            if d["finetune"][f] == default:
                d["finetune"].pop(f)
        d["pretrain"] = self.pretrain.key_dict()
        if d["task"] == "classification":
            d.pop("task")
        d.pop("arm")
        if d["budget"]["max_event_epochs"] is None:
            d["budget"].pop("max_event_epochs")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        d = dict(d)
        d["dataset"] = DatasetSpec(**{**d["dataset"], "options": _refreeze(d["dataset"].get("options", ()))})
        d["model"] = ModelSpec.from_dict(d["model"])
        for f in ("prune_include", "prune_exclude"):
            d[f] = tuple(d.get(f, ()))
        d["pretrain"] = PretrainSpec(**d["pretrain"])
        d["finetune"] = FinetuneSpec(**d["finetune"])
        d["budget"] = BudgetSpec(**d["budget"])
        d["knobs"] = _refreeze(d.get("knobs", ()))
        return cls(**d)

    # ---- content keys -------------------------------------------------
    @property
    def key(self) -> str:
        """8 hex chars naming this trial's full settings (the Ray trial and the MLflow run)."""
        return _hash(self._keyed())

    @property
    def config_key(self) -> str:
        """Like ``key`` but without the seed: trials that differ only by seed share it."""
        d = self._keyed()
        d.pop("seed")
        return _hash(d)

    @property
    def dense_key(self) -> str:
        """Names the dense model this trial starts from: (model, dataset, seed, pretrain settings)."""
        return _hash({"model": self.model.key_dict(), "dataset": self.dataset.key_dict(),
                      "seed": self.seed, "pretrain": self.pretrain.key_dict()})

    @property
    def name(self) -> str:
        return f"{self.strategy}-s{self.target:g}-{self.key}"

    def config_label(self) -> str:
        """Short human label of the knobs that distinguish configurations of a strategy."""
        parts = [f"target={self.target:g}"]
        parts += [f"{k}={v:g}" for k, v in self.knobs]
        if self.patience is not None:
            parts.append(f"patience={self.patience}")
            if self.first_patience is not None:
                parts.append(f"first_patience={self.first_patience}")
        if self.epochs_per_event is not None:
            parts.append(f"epochs_per_event={self.epochs_per_event}")
        parts.append(f"lr={self.finetune.lr:g}")
        if self.budget.policy != BudgetSpec.policy:
            parts.append(f"budget_policy={self.budget.policy}")
        return " ".join(parts)


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Range:
    """A knob searched over an interval (adaptive search only)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def endpoints(self) -> tuple[Any, Any]:
        return (self.low, self.high)


@dataclass(frozen=True)
class SearchSpec:
    """How the sweep explores each strategy's knobs.

    grid: every combination. adaptive: per (strategy, target sparsity), Optuna samples
    ``num_samples`` configurations on the first seed while ASHA stops the weak ones;
    then the ``confirm_top`` best configurations are re-run on every other seed.

    The fairness rule: ASHA's time axis is the compression reached, in doublings
    (-log2(1 - sparsity): 1 = 50 %, 2 = 75 %, 3 = 87.5 %), not epochs. Trials are
    compared only within their own (strategy, target) and only once they have
    reached the same sparsity, so a configuration that prunes faster is never cut
    for being sparser at equal cost. ``grace_period`` is in doublings.
    """

    mode: str = "grid"
    num_samples: int = 8
    confirm_top: int = 1
    grace_period: float = 1.0
    reduction_factor: int = 2


@dataclass(frozen=True)
class StrategySpec:
    schedule: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...]

    def points(self) -> list[dict[str, Any]]:
        """Every grid point (grid mode; ranges are not allowed there)."""
        keys = [k for k, _ in self.grid]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.grid))]

    def corners(self) -> list[dict[str, Any]]:
        """Grid points with every range replaced by its two endpoints: event counts and costs are
        monotone in each knob, so if every corner fits the budget, every sampled point does."""
        keys = [k for k, _ in self.grid]
        axes = [v[0].endpoints() if len(v) == 1 and isinstance(v[0], Range) else v for _, v in self.grid]
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]

    def has_ranges(self) -> bool:
        return any(isinstance(x, Range) for _, values in self.grid for x in values)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: DatasetSpec
    model: ModelSpec
    pretrain: PretrainSpec
    finetune: FinetuneSpec
    budget: BudgetSpec
    target_sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    strategies: tuple[StrategySpec, ...]
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_failures: int = 0
    storage_path: str = "tune_prune_runs"
    cache_dir: str = ".tune_prune_cache"
    sweep_budget: SweepBudgetSpec = field(default_factory=SweepBudgetSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    criterion: str = "global_magnitude"
    structure: str = UNSTRUCTURED
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    prune_include: tuple[str, ...] = ()
    prune_exclude: tuple[str, ...] = ()
    frontier_rule: str = "all_events"  # which events are frontier points; changes no trial
    task: str = "classification"
    #: criteria compared in this sweep (more than one: every schedule with each); criterion is the first
    criteria: tuple[str, ...] = ()
    resolved: tuple[tuple[str, Any], ...] = ()  # the merged raw mapping, for the record

    @property
    def metric(self):
        """The task's metric (tune_prune.metrics.Metric), with its direction."""
        from tune_prune.metrics import for_task

        return for_task(self.task)

    def base(self) -> dict[str, Any]:
        """The settings every trial of this sweep shares."""
        return {f: getattr(self, f) for f in SHARED_FIELDS}

    def dense_trials(self) -> list[TrialSpec]:
        return [TrialSpec(**self.base(), schedule=DENSE, target=0.0, seed=s) for s in self.seeds]

    def planned_cost(self) -> PlannedCost:
        """Bounds of the sweep's cost; pretraining counted as if no dense model were cached."""
        fixed = cap = least = 0
        if self.search.mode == "adaptive":
            # every sample may run to the cap (ASHA may stop any early); confirmations re-run the
            # best on the other seeds
            brackets = len(self.strategies) * len(self.target_sparsities)
            runs = brackets * (self.search.num_samples + self.search.confirm_top * (len(self.seeds) - 1))
            cap = runs * max((t.planned_epochs()[1] for t in self.corner_trials()), default=0)
        for t in self.trials():
            if t.is_dense:
                continue
            lo, hi = t.planned_epochs()
            if t.mode == "fixed":
                fixed += hi
            else:
                least += lo
                cap += hi
        share = self.resources.gpu if self.resources.gpu > 0 else self.resources.cpu
        return PlannedCost(fixed, cap, self.pretrain.epochs * len(self.seeds), share,
                           self.sweep_budget.epoch_seconds, patience_min_epochs=least)

    def resolved_dict(self) -> dict[str, Any]:
        return _thaw(self.resolved)

    def trials(self) -> list[TrialSpec]:
        """Grid mode: dense baselines first (one per seed), then every strategy point, in spec order.

        Adaptive mode: the dense baselines only; the driver samples the rest.
        """
        out = self.dense_trials()
        if self.search.mode == "adaptive":
            return out
        for criterion in self.criteria or (self.criterion,):
            base = {**self.base(), "criterion": criterion}
            for strat in self.strategies:
                arm = f"{strat.schedule}+{criterion}" if len(self.criteria) > 1 else None
                for point in strat.points():
                    for target in self.target_sparsities:
                        if not _applies(point, target):
                            continue
                        for seed in self.seeds:
                            out.append(replace(make_trial(base, strat.schedule, point, target, seed), arm=arm))
        return out

    def left_out(self) -> dict[str, int]:
        """Grid points per strategy that cannot exist: a hybrid's first_sparsity at or above the target."""
        out: dict[str, int] = {}
        for strat in self.strategies:
            n = sum(not _applies(p, t) for p in strat.points() for t in self.target_sparsities) * len(self.seeds)
            if n:
                out[strat.schedule] = n
        return out

    def corner_trials(self) -> list[TrialSpec]:
        """The extreme configurations of every strategy (equal to trials() in grid mode)."""
        out = []
        for strat in self.strategies:
            for point in strat.corners():
                for target in self.target_sparsities:
                    if not _applies(point, target):
                        if self.search.mode == "adaptive":  # a sampler cannot be told to skip it
                            raise SpecError(f"strategies.{strat.schedule}.first_sparsity",
                                            f"in adaptive search every value must be below every target; "
                                            f"{point['first_sparsity']} is not below {target:g}")
                        continue
                    out.append(make_trial(self.base(), strat.schedule, point, target, self.seeds[0]))
        return out


def _applies(point: Mapping[str, Any], target: float) -> bool:
    """Whether a strategy point makes sense at ``target``: an absolute first step must lie below it
    (the paper's Tables 3-4 only pair p_k with larger targets)."""
    first = point.get("first_sparsity")
    return first is None or isinstance(first, Range) or first < target


#: TrialSpec fields that every trial of a sweep shares (the rest: schedule, knobs, target, seed)
SHARED_FIELDS = ("dataset", "model", "pretrain", "finetune", "budget", "criterion", "structure",
                 "prune_include", "prune_exclude", "task")


def make_trial(base: dict[str, Any], schedule: str, point: dict[str, Any], target: float, seed: int) -> TrialSpec:
    """One trial from shared settings, a strategy point (knob -> value), a target and a seed."""
    point = dict(point)
    finetune, budget = base["finetune"], base["budget"]
    if "lr" in point:
        finetune = replace(finetune, lr=point.pop("lr"))
    if "budget_policy" in point:
        budget = replace(budget, policy=point.pop("budget_policy"))
    extras = {k: point.pop(k, None) for k in ("patience", "first_patience", "epochs_per_event")}
    knobs = tuple(sorted((k, float(v)) for k, v in point.items()))
    if extras["patience"] is not None:
        extras["patience"] = int(extras["patience"])
    if extras["first_patience"] is not None:
        extras["first_patience"] = int(extras["first_patience"])
    if extras["epochs_per_event"] is not None:
        extras["epochs_per_event"] = int(extras["epochs_per_event"])
    return TrialSpec(**{**base, "finetune": finetune, "budget": budget}, schedule=schedule, target=float(target),
                     seed=int(seed), knobs=knobs, **extras)


# ---------------------------------------------------------------- parsing


def load_spec(path: str | Path, smoke_test: bool = False, check_data: bool = False) -> SweepSpec:
    """Read and validate a sweep spec file; ``smoke_test`` applies its ``smoke_test:`` overrides.

    ``check_data`` also checks that the dataset's files can be found (or downloaded)
    from this machine: what ``validate`` and ``sweep`` do, and ``submit`` cannot.
    """
    from tune_prune.safe_yaml import YamlError, load_yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError("spec", f"no such file: {path}")
    try:
        raw = load_yaml(path)
    except YamlError as exc:
        raise SpecError("spec", f"{path} {exc}") from None
    return parse_spec(raw, smoke_test=smoke_test, check_data=check_data)


def _merge(base: dict[str, Any], over: Mapping[str, Any], top: bool = True) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping.

    A dataset or model section that names another dataset or model (or source)
    replaces the spec's whole section: the options of one mean nothing to another.
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        old = out.get(k)
        other = (top and k in ("dataset", "model") and isinstance(v, Mapping) and isinstance(old, Mapping)
                 and any(f in v and v[f] != old.get(f) for f in ("name", "source")))
        if isinstance(v, Mapping) and isinstance(old, Mapping) and not other:
            out[k] = _merge(dict(old), v, top=False)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _checked(raw: Any) -> Any:
    """The schema's verdict on a raw mapping, as a SpecError naming the field."""
    try:
        return schema.validate_raw(raw)
    except schema.SchemaError as exc:
        raise SpecError(exc.path, exc.message) from None


def parse_spec(raw: Any, smoke_test: bool = False, check_data: bool = False) -> SweepSpec:
    """Validate a raw mapping (as loaded from YAML) into a SweepSpec.

    The whole spec is checked, the ``smoke_test:`` overrides included even when
    they are not applied, so a mistake there shows now rather than on the first
    smoke run; errors inside the overrides are named ``smoke_test.<field>``.
    """
    checked = _checked(raw)
    smoke = checked.smoke_test
    if smoke is not None:
        unknown = [k for k in smoke if k not in schema.TOP_KEYS or k == "smoke_test"]
        if unknown:
            accepted = ", ".join(k for k in schema.TOP_KEYS if k != "smoke_test")
            raise SpecError(f"smoke_test.{unknown[0]}", f"unknown field; accepted: {accepted}")
        raw_top = {k: v for k, v in raw.items() if k != "smoke_test"}
        merged = _merge(raw_top, smoke)
        if smoke_test:
            return _to_sweep(_checked(merged), merged, check_data)
        try:
            _to_sweep(_checked(merged), merged, check_data=False)
        except SpecError as exc:
            if exc.field.split(".")[0].split("[")[0] in smoke:
                raise SpecError(f"smoke_test.{exc.field}", str(exc).split(": ", 1)[1]) from None
            raise
        raw = raw_top
    return _to_sweep(checked, dict(raw), check_data)


def _given(section: Any) -> dict[str, Any]:
    """The fields a user wrote: defaults stay with the frozen dataclasses (and out of trial keys)."""
    return section.model_dump(exclude_unset=True) if section is not None else {}


def _to_sweep(checked: Any, raw: dict[str, Any], check_data: bool) -> SweepSpec:
    """Frozen objects from a validated spec, then the rules that need the schedules."""
    data = _given(checked.dataset)
    data.pop("name")
    common = {k: data.pop(k) for k in ("root", "val_size", "train_subset", "split_seed", "download") if k in data}
    # Trials run in directories of Ray's choosing: a relative path means the driver's working directory.
    if common.get("root") is not None:
        common["root"] = _absolute(common["root"])
    for k in [k for k in data if k.endswith("_root") and isinstance(data[k], str)]:
        data[k] = _absolute(data[k])
    dataset = DatasetSpec(name=checked.dataset.name, **common, options=_frozen(data))
    model = _model(checked.model)
    # The record (and `tune-prune resume`, which parses it again from wherever it runs)
    # carries the resolved paths, so a resumed sweep finds the same files and trial keys.
    raw = copy.deepcopy(raw)
    raw["dataset"].update({k: v for k, v in {**common, **data}.items() if k == "root" or k.endswith("_root")})
    if model.checkpoint is not None:
        raw["model"]["checkpoint"] = model.checkpoint
    budget_given = _given(checked.budget)
    budget = BudgetSpec(**{k: budget_given[k] for k in ("epochs", "policy", "max_event_epochs") if k in budget_given})
    sweep_budget = SweepBudgetSpec(epochs=checked.budget.sweep_epochs,
                                   accelerator_hours=checked.budget.sweep_accelerator_hours,
                                   epoch_seconds=checked.budget.epoch_seconds)
    structure = checked.structure
    _check_task(checked)
    criteria = _criteria(checked)
    if checked.dataset.name == "text" and data.get("files"):
        data["files"] = tuple(_absolute(f) for f in data["files"])
        raw["dataset"]["files"] = list(data["files"])
        dataset = DatasetSpec(name=checked.dataset.name, **common, options=_frozen(data))
    if (checked.dataset.name == "text" and data.get("tokenizer") is None and model.source == "huggingface"
            and model.starts_from_weights):
        # the model's own tokenizer: its directory (when it holds one) or its hub id
        local = Path(model.name)
        if not local.is_dir() or any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            data["tokenizer"] = raw["dataset"]["tokenizer"] = model.name
            dataset = DatasetSpec(name=checked.dataset.name, **common, options=_frozen(data))
        else:
            # a tokenizer trained here would number tokens unlike the one the weights learned
            raise SpecError("dataset.tokenizer", f"model {model.name} holds no tokenizer (tokenizer.json or "
                            "tokenizer_config.json) and pretrained weights need their own: give its directory "
                            "or hub id")
    for f in ("hf_dataset", "tokenizer"):
        if data.get(f) is not None and Path(data[f]).expanduser().exists():
            data[f] = raw["dataset"][f] = _absolute(data[f])
            dataset = DatasetSpec(name=checked.dataset.name, **common, options=_frozen(data))
    spec = SweepSpec(
        name=checked.name, dataset=dataset, model=model,
        pretrain=_pretrain(checked, model),
        finetune=_finetune(checked),
        budget=budget, target_sparsities=tuple(sorted(checked.target_sparsities)),
        seeds=tuple(checked.seeds), strategies=_strategies(checked.strategies, raw["strategies"],
                                                         lr_axis=_lr_axis(checked)),
        resources=ResourcesSpec(**_given(checked.resources)), max_failures=checked.max_failures,
        storage_path=checked.storage_path, cache_dir=checked.cache_dir, sweep_budget=sweep_budget,
        search=SearchSpec(**_given(checked.search)),
        criterion=criteria[0], criteria=criteria if len(criteria) > 1 else (), structure=structure,
        speed=SpeedSpec(**_given(checked.speed)), execution=ExecutionSpec(**_given(checked.execution)),
        tracking=TrackingSpec(**_given(checked.tracking)),
        prune_include=tuple(checked.prune.include), prune_exclude=tuple(checked.prune.exclude),
        frontier_rule=checked.frontier_rule, task=checked.task,
        resolved=_frozen(raw),
    )
    if "sparsegpt" in criteria and (checked.task != "causal_lm" or structure == STRUCTURED):
        raise SpecError("criterion", "sparsegpt refits Linear weights layer by layer: it needs task: causal_lm "
                        "(whose prunable tensors are the transformer's Linear weights) and structure: unstructured; "
                        "use wanda, global_magnitude, taylor or hessian_diag here")
    if structure == STRUCTURED and "wanda" in criteria:
        raise SpecError("criterion", "wanda ranks weights within each output row; structured mode removes whole "
                        "channels and has no rule for it: use l2_magnitude, global_magnitude, taylor or hessian_diag")
    _check_budget_fits(spec.corner_trials())
    _check_sweep_budget(spec)
    if check_data:
        check_dataset(spec.dataset)
        check_model(spec)
    return spec


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _model(checked: Any) -> ModelSpec:
    opts = _given(checked)
    for f in ("name", "source", "checkpoint", "checkpoint_key", "normalize"):
        opts.pop(f, None)  # input_size stays among the options: it changes what the model computes
    checkpoint = sha = None
    if checked.checkpoint is not None:
        checkpoint = _absolute(checked.checkpoint)
        path = Path(checkpoint)
        if path.is_file():
            sha = _file_sha256(path)
    normalize = checked.normalize
    name = checked.name
    if checked.source == "huggingface":
        opts.pop("name", None)
        if name is None:
            name = f"{checked.model_type}-from-config"
        else:
            opts["pretrained"] = True
            local = Path(name).expanduser()
            if local.is_dir():  # a model directory counts by its content, like a checkpoint file
                name = str(local.resolve())
                sha = _dir_sha256(local)
    return ModelSpec(name=name, options=_frozen(opts), source=checked.source or "builtin",
                     checkpoint=checkpoint, checkpoint_key=checked.checkpoint_key, checkpoint_sha256=sha,
                     normalize=_frozen(normalize) if isinstance(normalize, Mapping) else normalize)


def _dir_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode())
        digest.update(_file_sha256(f).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pretrain(checked: Any, model: ModelSpec) -> PretrainSpec:
    """Pretraining settings; a model that starts from a checkpoint is used as it is unless told otherwise."""
    given = _given(checked.pretrain)
    if "epochs" not in given and (model.checkpoint is not None
                                  or (model.source == "huggingface" and model.starts_from_weights)):
        given["epochs"] = 0
    if given.get("epochs", 1) == 0 and not model.starts_from_weights:
        raise SpecError("pretrain.epochs", "0 means: use the starting weights as they are, but the model starts "
                        "from a random init; give model.checkpoint (or library weights), or epochs >= 1")
    return PretrainSpec(**given)


def check_dataset(dataset: DatasetSpec) -> None:
    """Refuse a dataset whose files cannot be found (or fetched) from here, naming the field."""
    from tune_prune.data import check_data

    kw = dataset.load_kwargs()
    try:
        check_data(dataset.name, root=kw.pop("root"), download=kw.pop("download"), **kw)
    except (FileNotFoundError, ValueError) as exc:
        field_name, _, message = str(exc).partition(": ")
        if not field_name.startswith("dataset.") or not message:
            field_name, message = "dataset", str(exc)
        raise SpecError(field_name, message) from None


def check_model(spec: SweepSpec) -> None:
    """Build the model as the trials will (random init) and check what the spec says about it.

    The checkpoint must fit it exactly (the first mismatching tensors are named), every
    prune pattern must match a Conv2d or Linear layer, and something must be left to prune.
    """
    from tune_prune import models
    from tune_prune.data import describe
    from tune_prune.pruning.masks import PRUNABLE_TYPES, select_layers

    if spec.task == "causal_lm":
        _check_lm(spec)
        return
    m = spec.model
    kw = spec.dataset.load_kwargs()
    in_shape, classes = describe(spec.dataset.name, root=kw.get("root"), **spec.dataset.kwargs_own())
    wanted = m.kwargs().get("num_classes")
    if wanted is not None and wanted != classes:
        raise SpecError("model.num_classes", f"is {wanted} but dataset {spec.dataset.name} has {classes} classes")
    try:
        model = models.build(m, in_shape, classes, weights=False)
    except (ValueError, TypeError) as exc:
        field_name, _, message = str(exc).partition(": ")
        if field_name.startswith("model.") and message:
            raise SpecError(field_name, message) from None
        raise SpecError("model", f"{m.source} model {m.name!r} cannot be built: {exc}") from None
    if m.checkpoint is not None:
        if not Path(m.checkpoint).is_file():
            raise SpecError("model.checkpoint", f"no such file: {m.checkpoint}")
        try:
            state = models.load_checkpoint(m.checkpoint, m.checkpoint_key)
        except ValueError as exc:
            field_name, _, message = str(exc).partition(": ")
            raise SpecError(field_name, message) from None
        except Exception as exc:  # not a torch file, or pickled objects weights_only refuses
            raise SpecError("model.checkpoint", f"{m.checkpoint} cannot be read as a weights-only torch file: "
                            f"{str(exc).splitlines()[0][:200]}") from None
        problem = models.checkpoint_mismatch(model, state)
        if problem:
            raise SpecError("model.checkpoint", f"does not fit {m.source} model {m.name} with {classes} classes: "
                            f"{problem}")
    try:
        import torch

        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape))
    except Exception as exc:  # the model's own complaint, whatever its type
        raise SpecError("model", f"{m.source} model {m.name!r} cannot take this dataset's {in_shape[0]}x"
                        f"{in_shape[1]}x{in_shape[2]} images: {str(exc).splitlines()[0][:200]}") from None
    if spec.structure == STRUCTURED:
        from tune_prune.pruning.structured_vit import SUPPORTED_ATTENTION, unsupported_attention

        problems = unsupported_attention(model)
        if problems:
            raise SpecError("structure", f"structured pruning does not handle {'; '.join(problems)}: it prunes "
                            f"attention heads only in {SUPPORTED_ATTENTION}; use structure: unstructured "
                            "for this model")
    layers = [n for n, mod in model.named_modules() if isinstance(mod, PRUNABLE_TYPES)]
    for which, patterns in (("include", spec.prune_include), ("exclude", spec.prune_exclude)):
        for i, pattern in enumerate(patterns):
            if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
                shown = ", ".join(layers[:12]) + (f" ... ({len(layers)} in all)" if len(layers) > 12 else "")
                raise SpecError(f"prune.{which}[{i}]", f"{pattern!r} matches no Conv2d or Linear layer; "
                                f"layers: {shown}")
    if not select_layers(layers, spec.prune_include, spec.prune_exclude):
        raise SpecError("prune", "include and exclude leave no layer to prune")


def _check_lm(spec: SweepSpec) -> None:
    """A causal LM's spec against its data: the corpus tokenizes (once: the result is cached for
    the trials), the model builds for its vocabulary and reads a block, and the prune patterns
    name Linear layers of it."""
    import torch

    from tune_prune import models
    from tune_prune.data import load_dataset
    from tune_prune.loop import prune_scope
    from tune_prune.pruning.masks import select_layers

    try:
        data = load_dataset(spec.dataset.name, **spec.dataset.load_kwargs())
    except (FileNotFoundError, ValueError) as exc:
        field_name, _, message = str(exc).partition(": ")
        if not field_name.startswith("dataset.") or not message:
            field_name, message = "dataset", str(exc)
        raise SpecError(field_name, message) from None
    m = spec.model
    try:
        model = models.build(m, data.in_shape, data.num_classes, weights=False)
    except (ValueError, TypeError, OSError) as exc:
        field_name, _, message = str(exc).partition(": ")
        if field_name.startswith("model.") and message:
            raise SpecError(field_name, message) from None
        raise SpecError("model", f"huggingface model {m.name!r} cannot be built: {str(exc).splitlines()[0][:300]}") \
            from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and data.in_shape[0] > limit:
        raise SpecError("dataset.block_size", f"{data.in_shape[0]} tokens, but the model reads at most {limit} "
                        "(its max_position_embeddings)")
    with torch.no_grad():
        model.eval()(input_ids=data.labels("val")[:1])
    layers = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for which, patterns in (("include", spec.prune_include), ("exclude", spec.prune_exclude)):
        for i, pattern in enumerate(patterns):
            if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
                shown = ", ".join(layers[:12]) + (f" ... ({len(layers)} in all)" if len(layers) > 12 else "")
                raise SpecError(f"prune.{which}[{i}]", f"{pattern!r} matches no Linear layer; layers: {shown}")
    include, exclude = prune_scope(spec.trials()[0])
    if not select_layers(layers, include, exclude):
        raise SpecError("prune", "include and exclude leave no Linear layer to prune")


def _lr_axis(checked: Any) -> list[float] | None:
    lr = checked.finetune.lr
    return lr if isinstance(lr, list) else None


def _finetune(checked: Any) -> FinetuneSpec:
    """Fine-tuning settings; a list of learning rates becomes the strategies' lr axis, so the
    shared settings keep the first (what dense trials, which do not fine-tune, carry).
    The monitor defaults to the task's validation metric."""
    from tune_prune.metrics import for_task

    given = _given(checked.finetune)
    if isinstance(given.get("lr"), list):
        given["lr"] = given["lr"][0]
    metric = for_task(checked.task)
    monitor = given.get("monitor") or metric.val
    if monitor not in (metric.val, "val_loss"):
        raise SpecError("finetune.monitor", f"{monitor} is not measured by task {checked.task}; accepted: "
                        f"{metric.val}, val_loss")
    given["monitor"] = monitor
    return FinetuneSpec(**given)


#: what each task needs from the dataset and the model sections
_TASK_PARTS = {"causal_lm": ("text", ("huggingface",)),
               "classification": (None, ("builtin", "python", "timm", "torchvision"))}


def _criteria(checked: Any) -> tuple[str, ...]:
    """The criteria a spec names (one, or a list to compare), defaulting by structure."""
    given = checked.criterion
    if given is None:
        return (DEFAULT_CRITERION[checked.structure],)
    if isinstance(given, str):
        return (given,)
    if len(set(given)) != len(given):
        raise SpecError("criterion", f"has duplicates: {list(given)}")
    if len(given) > 1 and checked.search.mode == "adaptive":
        raise SpecError("criterion", "a list of criteria needs search.mode: grid (adaptive search samples one "
                        "criterion's configurations per bracket); give one criterion")
    return tuple(given)


def _check_task(checked: Any) -> None:
    """A causal LM needs a text dataset and a Hugging Face model; a classifier needs neither."""
    from tune_prune.text import TEXT_DATASET

    task = checked.task
    is_text = checked.dataset.name == TEXT_DATASET
    source = checked.model.source or "builtin"
    if task == "causal_lm":
        if not is_text:
            raise SpecError("dataset.name", f"task causal_lm reads a text corpus: use name: {TEXT_DATASET} "
                            f"(files or hf_dataset), not {checked.dataset.name!r}")
        if source != "huggingface":
            raise SpecError("model.source", "task causal_lm trains a Hugging Face causal LM: use source: "
                            f"huggingface (a model directory, hub id or config), not {source}")
        if checked.structure == STRUCTURED:
            raise SpecError("structure", "structured pruning of a Hugging Face transformer (heads, MLP channels) "
                            "is not supported: Torch-Pruning's graph tracing does not follow these models' "
                            "attention reshapes here; use structure: unstructured")
    else:
        if is_text:
            raise SpecError("task", f"dataset {TEXT_DATASET} is a text corpus: set task: causal_lm")
        if source == "huggingface":
            raise SpecError("task", "model.source huggingface is a causal language model: set task: causal_lm")


def _strategies(checked: Any, raw: Mapping[str, Any], lr_axis: list[float] | None = None
                ) -> tuple[StrategySpec, ...]:
    """Each strategy's knobs as grid axes, in the order the spec lists the strategies.

    ``lr_axis`` (finetune.lr given as a list) is every strategy's lr axis unless it sets its own.
    """
    out = []
    for schedule in raw:
        if getattr(checked, schedule) is None:
            continue  # `name: null` leaves a strategy out (how a smoke_test drops one)
        knobs = _given(getattr(checked, schedule))
        knobs.setdefault("patience", None)
        if lr_axis is not None:
            knobs.setdefault("lr", list(lr_axis))
        allowed = SCHEDULE_KNOBS[schedule] + COMMON_STRATEGY_KEYS + EXTRA_STRATEGY_KEYS.get(schedule, ())
        grid = []
        for k in allowed:
            if k not in knobs:
                continue
            v = knobs[k]
            if isinstance(v, Mapping):
                _, integer = schema.knob_kind(k)
                grid.append((k, (Range(low=v["low"], high=v["high"], log=bool(v.get("log", False)),
                                       integer=integer),)))
            else:
                grid.append((k, tuple(v) if isinstance(v, list) else (v,)))
        out.append(StrategySpec(schedule=schedule, grid=tuple(grid)))
    return tuple(out)


def _check_sweep_budget(spec: SweepSpec) -> None:
    plan, limits = spec.planned_cost(), spec.sweep_budget
    if limits.epochs is not None and plan.total_epochs > limits.epochs:
        raise SpecError("budget.sweep_epochs", f"the sweep plans up to {plan.total_epochs} epochs "
                        f"({plan.fixed_epochs} fixed + {plan.patience_cap_epochs} patience cap + "
                        f"{plan.pretrain_epochs} pretraining) but budget.sweep_epochs={limits.epochs}; "
                        f"cut seeds, sparsities or knob values, or lower {_budget_knob(spec)}")
    hours = plan.accelerator_hours
    if limits.accelerator_hours is not None and hours is not None and hours > limits.accelerator_hours:
        raise SpecError("budget.sweep_accelerator_hours",
                        f"the sweep plans up to {hours:.3g} accelerator-hours ({plan.total_epochs} epochs x "
                        f"{plan.epoch_seconds:g} s x {plan.accelerator_share:g} per trial) but the limit is "
                        f"{limits.accelerator_hours:g}; cut seeds, sparsities or knob values, or lower {_budget_knob(spec)}")


def _budget_knob(spec: SweepSpec) -> str:
    return "budget.max_event_epochs" if spec.budget.unbounded else "budget.epochs"


def _check_budget_fits(trials: list[TrialSpec]) -> None:
    """Refuse the sweep if any trial cannot fit its budget; name the worst offender."""
    too_many, too_long = [], []
    for trial in trials:
        if trial.is_dense:
            continue
        try:
            n = len(trial.sparsities)
        except ScheduleError as exc:
            raise SpecError(f"strategies.{trial.schedule}", f"{exc} (target {trial.target:g})") from None
        if trial.budget.unbounded:
            _check_event_cap(trial)
            continue
        if n > trial.budget.epochs:
            too_many.append((n, trial))
        if trial.patience is None and n * trial.epochs_per_event > trial.budget.epochs:
            too_long.append((n * trial.epochs_per_event, n, trial))
    if too_many:
        n, t = max(too_many, key=lambda x: x[0])
        b = t.budget.epochs
        others = f" ({len(too_many) - 1} other configuration(s) too)" if len(too_many) > 1 else ""
        raise SpecError("budget.epochs", f"{t.schedule}({_label(t)}) has {n} prune events but budget.epochs={b}"
                        f"{others}; every event needs at least one fine-tuning epoch. Raise budget.epochs "
                        f"to >= {n} or use fewer events")
    if too_long:
        need, n, t = max(too_long, key=lambda x: x[0])
        e, b = t.epochs_per_event, t.budget.epochs
        raise SpecError(f"strategies.{t.schedule}.epochs_per_event",
                        f"{t.schedule}({_label(t)}) with epochs_per_event={e} needs {n} x {e} = {need} epochs "
                        f"but budget.epochs={b}; lower epochs_per_event to <= {b // n} or raise the budget")


def _check_event_cap(trial: TrialSpec) -> None:
    """Without a per-trial budget the safety cap must leave patience room to act: a cap at or
    below a patience would quietly turn the patience protocol back into fixed epochs."""
    cap, s = trial.budget.max_event_epochs, trial.schedule
    if trial.budget.policy != BudgetSpec.policy:
        raise SpecError(f"strategies.{s}.budget_policy", "has no effect with budget.epochs: null (no per-trial "
                        "budget to share between events); remove it, or give budget.epochs")
    if trial.mode == "fixed":
        if trial.epochs_per_event > cap:
            raise SpecError(f"strategies.{s}.epochs_per_event", f"{trial.epochs_per_event} is above "
                            f"budget.max_event_epochs={cap}; lower it or raise the cap")
        return
    for name, p in (("first_patience", trial.first_patience), ("patience", trial.patience)):
        if p is not None and p >= cap:
            raise SpecError("budget.max_event_epochs", f"{cap} is not above {s}'s {name} {p}: patience could never "
                            f"end an event, so this would be a fixed-epoch study; raise it above {p}")


def _label(trial: TrialSpec) -> str:
    return ", ".join([f"target={trial.target:g}"] + [f"{k}={v:g}" for k, v in trial.knobs])
