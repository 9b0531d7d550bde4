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
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tune_prune.pruning import budget as budget_policies
from tune_prune.pruning.schedules import SCHEDULE_KNOBS, ScheduleError, build_schedule

DENSE = "dense"
UNSTRUCTURED, STRUCTURED = "unstructured", "structured"
STRUCTURES = (STRUCTURED, UNSTRUCTURED)
#: criterion used when a spec names none, per structure
DEFAULT_CRITERION = {UNSTRUCTURED: "global_magnitude", STRUCTURED: "l2_magnitude"}
#: accepted values of execution.amp and execution.channels_last (resolved by loop.FastPath)
AMP_CHOICES = ("auto", "bf16", "fp32")
CHANNELS_LAST_CHOICES = ("auto", True, False)

# Per-strategy keys besides the schedule's own knobs. patience: null means
# fixed-epochs fine-tuning (epochs_per_event epochs per event); an integer
# means patience fine-tuning, with epochs_per_event (optional) as a per-event cap.
COMMON_STRATEGY_KEYS = ("patience", "epochs_per_event", "lr")
EXTRA_STRATEGY_KEYS = {"hybrid": ("first_patience",)}


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

    def load_kwargs(self) -> dict[str, Any]:
        kw = {k: getattr(self, k) for k in ("root", "val_size", "train_subset", "split_seed", "download")}
        kw.update(_thaw(self.options))
        return kw


@dataclass(frozen=True)
class ModelSpec:
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return _thaw(self.options)


@dataclass(frozen=True)
class PretrainSpec:
    epochs: int = 30
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class FinetuneSpec:
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_delta: float = 0.0


@dataclass(frozen=True)
class BudgetSpec:
    epochs: int
    policy: str = "carry_over"


@dataclass(frozen=True)
class SweepBudgetSpec:
    """Limits on the whole sweep's plan (they do not change any trial, so not part of trial keys)."""

    epochs: int | None = None  # total fine-tuning + pretraining epochs
    accelerator_hours: float | None = None  # GPU share x hours (core-hours on CPU)
    epoch_seconds: float | None = None  # the user's estimate of one epoch on one trial's resources


@dataclass(frozen=True)
class PlannedCost:
    """What a sweep would spend at most: fixed-epoch trials exactly, patience trials at their cap."""

    fixed_epochs: int
    patience_cap_epochs: int
    pretrain_epochs: int
    accelerator_share: float  # per trial: GPU fraction, or cores on CPU
    epoch_seconds: float | None

    @property
    def total_epochs(self) -> int:
        return self.fixed_epochs + self.patience_cap_epochs + self.pretrain_epochs

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _keyed(self) -> dict[str, Any]:
        # Fields added after keys were first published are left out at their
        # default value, so trials of older sweeps keep their keys (and resume).
        d = self.to_dict()
        if d["structure"] == UNSTRUCTURED:
            d.pop("structure")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        def tup(v: Any) -> Any:
            return tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v

        d = dict(d)
        d["dataset"] = DatasetSpec(**{**d["dataset"], "options": tup(d["dataset"].get("options", []))})
        d["model"] = ModelSpec(name=d["model"]["name"], options=tup(d["model"].get("options", [])))
        d["pretrain"] = PretrainSpec(**d["pretrain"])
        d["finetune"] = FinetuneSpec(**d["finetune"])
        d["budget"] = BudgetSpec(**d["budget"])
        d["knobs"] = tup(d.get("knobs", []))
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
        return _hash({"model": asdict(self.model), "dataset": asdict(self.dataset),
                      "seed": self.seed, "pretrain": asdict(self.pretrain)})

    @property
    def name(self) -> str:
        return f"{self.schedule}-s{self.target:g}-{self.key}"

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
    resolved: tuple[tuple[str, Any], ...] = ()  # the merged raw mapping, for the record

    def base(self) -> dict[str, Any]:
        """The settings every trial of this sweep shares."""
        return dict(dataset=self.dataset, model=self.model, pretrain=self.pretrain,
                    finetune=self.finetune, budget=self.budget, criterion=self.criterion,
                    structure=self.structure)

    def dense_trials(self) -> list[TrialSpec]:
        return [TrialSpec(**self.base(), schedule=DENSE, target=0.0, seed=s) for s in self.seeds]

    def planned_cost(self) -> PlannedCost:
        """Upper bound of the sweep's cost; pretraining counted as if no dense model were cached."""
        fixed = cap = 0
        if self.search.mode == "adaptive":
            # every sample may run to the cap; confirmations re-run the best on the other seeds
            brackets = len(self.strategies) * len(self.target_sparsities)
            runs = brackets * (self.search.num_samples + self.search.confirm_top * (len(self.seeds) - 1))
            cap = runs * self.budget.epochs
        for t in self.trials():
            if t.is_dense:
                continue
            if t.mode == "fixed":
                fixed += len(t.sparsities) * t.epochs_per_event
            else:
                cap += t.budget.epochs
        share = self.resources.gpu if self.resources.gpu > 0 else self.resources.cpu
        return PlannedCost(fixed, cap, self.pretrain.epochs * len(self.seeds), share,
                           self.sweep_budget.epoch_seconds)

    def resolved_dict(self) -> dict[str, Any]:
        return _thaw(self.resolved)

    def trials(self) -> list[TrialSpec]:
        """Grid mode: dense baselines first (one per seed), then every strategy point, in spec order.

        Adaptive mode: the dense baselines only; the driver samples the rest.
        """
        out = self.dense_trials()
        if self.search.mode == "adaptive":
            return out
        for strat in self.strategies:
            for point in strat.points():
                for target in self.target_sparsities:
                    for seed in self.seeds:
                        out.append(make_trial(self.base(), strat.schedule, point, target, seed))
        return out

    def corner_trials(self) -> list[TrialSpec]:
        """The extreme configurations of every strategy (equal to trials() in grid mode)."""
        out = []
        for strat in self.strategies:
            for point in strat.corners():
                for target in self.target_sparsities:
                    out.append(make_trial(self.base(), strat.schedule, point, target, self.seeds[0]))
        return out


def make_trial(base: dict[str, Any], schedule: str, point: dict[str, Any], target: float, seed: int) -> TrialSpec:
    """One trial from shared settings, a strategy point (knob -> value), a target and a seed."""
    point = dict(point)
    finetune = base["finetune"]
    if "lr" in point:
        finetune = replace(finetune, lr=point.pop("lr"))
    extras = {k: point.pop(k, None) for k in ("patience", "first_patience", "epochs_per_event")}
    knobs = tuple(sorted((k, float(v)) for k, v in point.items()))
    if extras["patience"] is not None:
        extras["patience"] = int(extras["patience"])
    if extras["first_patience"] is not None:
        extras["first_patience"] = int(extras["first_patience"])
    if extras["epochs_per_event"] is not None:
        extras["epochs_per_event"] = int(extras["epochs_per_event"])
    return TrialSpec(**{**base, "finetune": finetune}, schedule=schedule, target=float(target),
                     seed=int(seed), knobs=knobs, **extras)


# ---------------------------------------------------------------- parsing

_TOP_KEYS = ("name", "dataset", "model", "pretrain", "finetune", "budget", "target_sparsities",
             "seeds", "strategies", "resources", "max_failures", "storage_path", "cache_dir",
             "search", "criterion", "structure", "speed", "execution", "smoke_test")


def load_spec(path: str | Path, smoke_test: bool = False) -> SweepSpec:
    """Read and validate a sweep spec file; ``smoke_test`` applies its ``smoke_test:`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("spec", f"no such file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise SpecError("spec", f"{path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(raw, smoke_test=smoke_test)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_spec(raw: Any, smoke_test: bool = False) -> SweepSpec:
    """Validate a raw mapping (as loaded from YAML) into a SweepSpec."""
    if not isinstance(raw, Mapping):
        raise SpecError("spec", f"must be a mapping of fields ({', '.join(_TOP_KEYS)}), got {type(raw).__name__}")
    _no_unknown(raw, _TOP_KEYS, "spec")
    raw = dict(raw)
    smoke = raw.pop("smoke_test", None)
    if smoke is not None and not isinstance(smoke, Mapping):
        raise SpecError("smoke_test", "must be a mapping of overrides")
    if smoke_test and smoke:
        _no_unknown(smoke, _TOP_KEYS, "smoke_test")
        raw = _merge(raw, smoke)

    name = _str(raw, "name", "spec")
    dataset = _dataset(_section(raw, "dataset", required=True))
    model = _model(_section(raw, "model", required=True))
    pretrain = _dataclass(PretrainSpec, _section(raw, "pretrain"), "pretrain")
    finetune = _dataclass(FinetuneSpec, _section(raw, "finetune"), "finetune")
    budget_raw = _section(raw, "budget", required=True)
    sweep_budget = _sweep_budget(budget_raw)
    budget = _budget(budget_raw)
    targets = _targets(raw.get("target_sparsities"))
    seeds = _seeds(raw.get("seeds", [0]))
    search = _search(_section(raw, "search"))
    structure = raw.get("structure", UNSTRUCTURED)
    if structure not in STRUCTURES:
        raise SpecError("structure", f"unknown structure {structure!r}; accepted: {', '.join(STRUCTURES)}")
    criterion = _criterion(raw.get("criterion", DEFAULT_CRITERION[structure]))
    strategies = _strategies(raw.get("strategies"), adaptive=search.mode == "adaptive")
    resources = _dataclass(ResourcesSpec, _section(raw, "resources"), "resources")
    speed = _dataclass(SpeedSpec, _section(raw, "speed"), "speed")
    if resources.cpu <= 0:
        raise SpecError("resources.cpu", f"must be > 0, got {resources.cpu}")
    if resources.gpu < 0:
        raise SpecError("resources.gpu", f"must be >= 0 (fractions share a GPU), got {resources.gpu}")
    if resources.gpu > 1 and resources.gpu != int(resources.gpu):
        raise SpecError("resources.gpu", f"must be a fraction <= 1 (0.25 packs 4 trials on a GPU) or a whole "
                        f"number of GPUs, got {resources.gpu}")
    execution = _execution(_section(raw, "execution"))
    max_failures = _int(raw.get("max_failures", 0), "max_failures", minimum=-1)
    spec = SweepSpec(
        name=name, dataset=dataset, model=model, pretrain=pretrain, finetune=finetune,
        budget=budget, target_sparsities=targets, seeds=seeds, strategies=strategies,
        resources=resources, max_failures=max_failures, sweep_budget=sweep_budget, search=search,
        criterion=criterion, structure=structure, speed=speed, execution=execution,
        storage_path=str(raw.get("storage_path", "tune_prune_runs")),
        cache_dir=str(raw.get("cache_dir", ".tune_prune_cache")),
        resolved=_frozen(raw),
    )
    _check_budget_fits(spec.corner_trials())
    _check_sweep_budget(spec)
    return spec


def _execution(d: dict[str, Any]) -> ExecutionSpec:
    _no_unknown(d, ("amp", "channels_last"), "execution")
    amp = d.get("amp", "auto")
    if amp not in AMP_CHOICES:
        raise SpecError("execution.amp", f"unknown value {amp!r}; accepted: {', '.join(AMP_CHOICES)}")
    cl = d.get("channels_last", "auto")
    if cl not in CHANNELS_LAST_CHOICES or (cl in (0, 1) and not isinstance(cl, bool)):
        raise SpecError("execution.channels_last", f"must be auto, true or false, got {cl!r}")
    return ExecutionSpec(amp=amp, channels_last=cl)


def _criterion(name: Any) -> str:
    from tune_prune.pruning.criteria import CRITERIA

    accepted = sorted(CRITERIA)  # the same names score weights (unstructured) or channels (structured)
    if name not in accepted:
        raise SpecError("criterion", f"unknown criterion {name!r}; accepted: {', '.join(accepted)}")
    return name


def _no_unknown(d: Mapping[str, Any], accepted: Iterable[str], where: str) -> None:
    accepted = tuple(accepted)
    for key in d:
        if key not in accepted:
            raise SpecError(f"{where}.{key}" if where != "spec" else str(key),
                            f"unknown field; accepted: {', '.join(accepted)}")


def _section(raw: Mapping[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise SpecError(key, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(key, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _str(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(key if where == "spec" else f"{where}.{key}", "is required and must be a non-empty string")
    return value


def _int(value: Any, field_name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field_name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(field_name, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field_name, f"must be a number, got {value!r}")
    return float(value)


def _dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    accepted = [f.name for f in fields(cls)]
    _no_unknown(values, accepted, where)
    out = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        fname = f"{where}.{f.name}"
        if f.type in ("bool", bool):
            if not isinstance(v, bool):
                raise SpecError(fname, f"must be true or false, got {v!r}")
            out[f.name] = v
        elif f.type in ("int", int):
            out[f.name] = _int(v, fname, minimum=1 if f.name in ("epochs", "batch_size", "repeats") else 0)
        elif f.type in ("float", float):
            out[f.name] = _number(v, fname)
            if out[f.name] < 0:
                raise SpecError(fname, f"must be >= 0, got {v}")
        else:
            out[f.name] = v
    if "lr" in out and out["lr"] <= 0:
        raise SpecError(f"{where}.lr", f"must be > 0, got {out['lr']}")
    return cls(**out)


def _dataset(d: dict[str, Any]) -> DatasetSpec:
    from tune_prune.data import DATASETS

    name = _str(d, "name", "dataset")
    if name not in DATASETS:
        raise SpecError("dataset.name", f"unknown dataset '{name}'; accepted: {', '.join(DATASETS.names())}")
    known = ("name", "root", "val_size", "train_subset", "split_seed", "download")
    kw = {k: d.pop(k) for k in known if k in d}
    if "val_size" in kw:
        v = kw["val_size"]
        ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, float) and 0 < v < 1)
        if not ok:
            raise SpecError("dataset.val_size", f"must be an int >= 1 or a float in (0, 1), got {v!r}")
    if kw.get("train_subset") is not None:
        _int(kw["train_subset"], "dataset.train_subset", minimum=1)
    if "split_seed" in kw:
        _int(kw["split_seed"], "dataset.split_seed", minimum=0)
    if "root" in kw and kw["root"] is not None:
        kw["root"] = str(kw["root"])
    return DatasetSpec(**kw, options=_frozen(d))


def _model(d: dict[str, Any]) -> ModelSpec:
    from tune_prune.models import MODELS

    name = _str(d, "name", "model")
    if name not in MODELS:
        raise SpecError("model.name", f"unknown model '{name}'; accepted: {', '.join(MODELS.names())}")
    d.pop("name")
    return ModelSpec(name=name, options=_frozen(d))


_SWEEP_BUDGET_KEYS = ("sweep_epochs", "sweep_accelerator_hours", "epoch_seconds")


def _sweep_budget(d: dict[str, Any]) -> SweepBudgetSpec:
    values = {k: d.pop(k) for k in _SWEEP_BUDGET_KEYS if k in d}
    if "sweep_epochs" in values:
        _int(values["sweep_epochs"], "budget.sweep_epochs", minimum=1)
    for k in ("sweep_accelerator_hours", "epoch_seconds"):
        if k in values and _number(values[k], f"budget.{k}") <= 0:
            raise SpecError(f"budget.{k}", f"must be > 0, got {values[k]}")
    if "sweep_accelerator_hours" in values and "epoch_seconds" not in values:
        raise SpecError("budget.epoch_seconds", "is required with budget.sweep_accelerator_hours: the seconds "
                        "one epoch takes on one trial's resources (time a --smoke-test run to measure it)")
    return SweepBudgetSpec(epochs=values.get("sweep_epochs"),
                           accelerator_hours=values.get("sweep_accelerator_hours"),
                           epoch_seconds=values.get("epoch_seconds"))


def _check_sweep_budget(spec: SweepSpec) -> None:
    plan, limits = spec.planned_cost(), spec.sweep_budget
    if limits.epochs is not None and plan.total_epochs > limits.epochs:
        raise SpecError("budget.sweep_epochs", f"the sweep plans up to {plan.total_epochs} epochs "
                        f"({plan.fixed_epochs} fixed + {plan.patience_cap_epochs} patience cap + "
                        f"{plan.pretrain_epochs} pretraining) but budget.sweep_epochs={limits.epochs}; "
                        "cut seeds, sparsities or knob values, or lower budget.epochs")
    hours = plan.accelerator_hours
    if limits.accelerator_hours is not None and hours is not None and hours > limits.accelerator_hours:
        raise SpecError("budget.sweep_accelerator_hours",
                        f"the sweep plans up to {hours:.3g} accelerator-hours ({plan.total_epochs} epochs x "
                        f"{plan.epoch_seconds:g} s x {plan.accelerator_share:g} per trial) but the limit is "
                        f"{limits.accelerator_hours:g}; cut seeds, sparsities or knob values, or lower budget.epochs")


def _budget(d: dict[str, Any]) -> BudgetSpec:
    _no_unknown(d, ("epochs", "policy") + _SWEEP_BUDGET_KEYS, "budget")
    if "epochs" not in d:
        raise SpecError("budget.epochs", "is required: the most fine-tuning epochs one trial may spend")
    epochs = d["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise SpecError("budget.epochs", f"must be a positive integer, got {epochs!r}")
    policy = d.get("policy", "carry_over")
    if policy not in budget_policies.BUDGET_POLICIES:
        raise SpecError("budget.policy", f"unknown policy '{policy}'; accepted: "
                        f"{', '.join(sorted(budget_policies.BUDGET_POLICIES))}")
    return BudgetSpec(epochs=epochs, policy=policy)


def _targets(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError("target_sparsities", "must be a non-empty list of numbers in (0, 1)")
    out = []
    for i, v in enumerate(value):
        f = _number(v, f"target_sparsities[{i}]")
        if not 0.0 <= f < 1.0:
            raise SpecError(f"target_sparsities[{i}]", f"must be in [0, 1), got {v}")
        if f == 0.0:
            raise SpecError(f"target_sparsities[{i}]", "0 is the dense baseline, which every sweep "
                            "runs already; list sparsities in (0, 1)")
        out.append(f)
    if len(set(out)) != len(out):
        raise SpecError("target_sparsities", f"has duplicates: {value}")
    return tuple(sorted(out))


def _seeds(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError("seeds", "must be a non-empty list of integers")
    seeds = tuple(_int(v, f"seeds[{i}]", minimum=0) for i, v in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise SpecError("seeds", f"has duplicates: {value}")
    return seeds


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _search(d: dict[str, Any]) -> SearchSpec:
    accepted = [f.name for f in fields(SearchSpec)]
    _no_unknown(d, accepted, "search")
    mode = d.get("mode", "grid")
    if mode not in ("grid", "adaptive"):
        raise SpecError("search.mode", f"unknown mode '{mode}'; accepted: adaptive, grid")
    values: dict[str, Any] = {k: _int(d[k], f"search.{k}", minimum=2 if k == "reduction_factor" else 1)
                              for k in ("num_samples", "confirm_top", "reduction_factor") if k in d}
    if "grace_period" in d:
        values["grace_period"] = _number(d["grace_period"], "search.grace_period")
        if values["grace_period"] <= 0:
            raise SpecError("search.grace_period", f"must be > 0 (compression doublings), got {d['grace_period']}")
    return SearchSpec(mode=mode, **values)


def _range(value: Mapping[str, Any], field_name: str, key: str) -> Range:
    _no_unknown(value, ("low", "high", "log"), field_name)
    if "low" not in value or "high" not in value:
        raise SpecError(field_name, "a range needs low and high, e.g. {low: 0.05, high: 0.3}")
    low, high = value["low"], value["high"]
    integer = key in ("patience", "first_patience", "epochs_per_event")
    for bound in (low, high):
        _check_knob(field_name, key, bound)
    if integer and not (isinstance(low, int) and isinstance(high, int)):
        raise SpecError(field_name, f"{key} ranges take integers, got {low!r}..{high!r}")
    if not low < high:
        raise SpecError(field_name, f"low must be < high, got {low!r}..{high!r}")
    log = bool(value.get("log", False))
    if log and low <= 0:
        raise SpecError(field_name, "a log range needs low > 0")
    return Range(low=low, high=high, log=log, integer=integer)


def _strategies(value: Any, adaptive: bool = False) -> tuple[StrategySpec, ...]:
    accepted = ", ".join(sorted(SCHEDULE_KNOBS))
    if not isinstance(value, Mapping) or not value:
        raise SpecError("strategies", f"must map schedule names ({accepted}) to their knobs")
    out = []
    for schedule, knobs in value.items():
        where = f"strategies.{schedule}"
        if schedule not in SCHEDULE_KNOBS:
            raise SpecError(where, f"unknown schedule '{schedule}'; accepted: {accepted}")
        knobs = dict(knobs or {})
        allowed = SCHEDULE_KNOBS[schedule] + COMMON_STRATEGY_KEYS + EXTRA_STRATEGY_KEYS.get(schedule, ())
        _no_unknown(knobs, allowed, where)
        for k in SCHEDULE_KNOBS[schedule]:
            if k not in knobs:
                raise SpecError(f"{where}.{k}", f"is required by the {schedule} schedule")
        knobs.setdefault("patience", None)
        grid = []
        for k in allowed:
            if k not in knobs:
                continue
            if isinstance(knobs[k], Mapping):
                if not adaptive:
                    raise SpecError(f"{where}.{k}", "ranges ({low, high}) need search.mode: adaptive; "
                                    "in a grid give a list of values")
                grid.append((k, (_range(knobs[k], f"{where}.{k}", k),)))
                continue
            values = _as_list(knobs[k])
            if not values:
                raise SpecError(f"{where}.{k}", "must not be an empty list")
            for v in values:
                _check_knob(f"{where}.{k}", k, v)
            grid.append((k, tuple(values)))
        out.append(StrategySpec(schedule=schedule, grid=tuple(grid)))
        if None in dict(grid)["patience"] and "epochs_per_event" not in knobs:
            raise SpecError(f"{where}.epochs_per_event", "is required for fixed-epoch fine-tuning "
                            "(patience: null); or give an integer patience")
    return tuple(out)


def _check_knob(field_name: str, key: str, v: Any) -> None:
    if key in ("patience", "first_patience"):
        if v is not None:
            _int(v, field_name, minimum=0)
    elif key == "epochs_per_event":
        _int(v, field_name, minimum=1)
    else:
        f = _number(v, field_name)
        if f <= 0:
            raise SpecError(field_name, f"must be > 0, got {v}")


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


def _label(trial: TrialSpec) -> str:
    return ", ".join([f"target={trial.target:g}"] + [f"{k}={v:g}" for k, v in trial.knobs])
