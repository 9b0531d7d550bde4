"""The sweep spec as typed pydantic models: one description for checking, errors and JSON Schema.

Every section is a model whose fields carry their help text; the model's and
the dataset's own options are models built from the builder's and the loader's
signatures (tune_prune.fields has the shared types), so ``model: {name: mlp,
hiden: [16]}`` is refused at spec time the same way a top-level typo is.

``validate_raw`` checks a raw mapping (as loaded from YAML) and returns the
validated spec model; a mistake raises ``SchemaError(path, message)`` for the
first problem found, where ``path`` is the dotted field path (``seeds[1]``,
``strategies.geometric.rate0``) and the message says what is accepted.
``json_schema()`` is what ``tune-prune schema`` prints for editors.

Cross-field rules that need the schedules (does every configuration fit its
budget?) live in tune_prune.spec, which turns the validated model into frozen objects.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from tune_prune.fields import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Size,
    custom,
    invalid,
    is_int,
    is_number,
    shown,
)
from tune_prune.frontier import FRONTIER_RULES
from tune_prune.pruning.budget import BUDGET_POLICIES
from tune_prune.pruning.criteria import CRITERIA
from tune_prune.pruning.schedules import SCHEDULE_KNOBS, SCHEDULE_ONE_OF, required_knobs

STRUCTURES = ("structured", "unstructured")
DEFAULT_CRITERION = {"unstructured": "global_magnitude", "structured": "l2_magnitude"}
AMP_CHOICES = ("auto", "bf16", "fp32")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: the fields of a spec, in the order messages list them
TOP_KEYS = ("name", "dataset", "model", "pretrain", "finetune", "budget", "target_sparsities", "seeds",
            "strategies", "resources", "max_failures", "storage_path", "cache_dir", "search", "criterion",
            "structure", "speed", "execution", "prune", "frontier_rule", "task", "tracking", "smoke_test")


class SchemaError(ValueError):
    """The first problem in a spec: ``path`` is the dotted field, ``message`` what is accepted."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")


def _at(path: str, message: str) -> PydanticCustomError:
    """An error raised by a cross-field check, located at an absolute field path."""
    return PydanticCustomError("tune_prune_at", "{message}", {"message": message, "path": path})


class Section(BaseModel):
    """A spec section: typed, strict (no "3" for 3, no true for 1) and closed to unknown keys."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        # pydantic's own extra_forbidden error does not list the accepted names; this one does.
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "tune_prune_unknown", "unknown field; accepted: {accepted}",
                        {"key": str(key), "accepted": ", ".join(cls._field_order())})
        return data

    @classmethod
    def _field_order(cls) -> list[str]:
        """name first, then the fields this class adds, then the ones it inherits."""
        inherited = set()
        for base in cls.__mro__[1:]:
            inherited |= set(getattr(base, "model_fields", {}))
        fields = list(cls.model_fields)
        return sorted(fields, key=lambda f: (f != "name", f in inherited))


# ---------------------------------------------------------------- safe names

NAME_RULE = ("must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..' "
             "(it names directories and the MLflow experiment)")


def is_safe_name(value: Any) -> bool:
    """A name that can become part of a path: letters, digits, '.', '_', '-'; no separator, no '..'."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None and ".." not in value


def check_name(value: Any) -> str:
    if is_safe_name(value):
        return value
    raise invalid(NAME_RULE, value)


SafeName = custom(check_name, {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                               "not": {"pattern": r"\.\."}})


def _path_string(value: Any) -> str:
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return value
    raise invalid("must be a non-empty path", value)


PathString = custom(_path_string, {"type": "string", "minLength": 1})


# ---------------------------------------------------------------- dataset and model

_DATASET_COMMON = ("root", "val_size", "train_subset", "split_seed", "download")
_LOADER_ARGS = ("root", "download", "split_seed")


class DatasetBase(Section):
    root: Optional[PathString] = Field(
        None, description="data directory; default $TUNE_PRUNE_DATA or ~/.cache/tune_prune/data")
    val_size: Size = Field(0.1, description="validation examples held out of training: a count or a fraction")
    train_subset: Optional[PositiveInt] = Field(
        None, description="train on a fixed random subset of this many examples (validation and test are kept)")
    split_seed: NonNegativeInt = Field(0, description="seeds the splits; the same for every trial of a sweep")
    download: bool = Field(False, description="download the data if it is missing (needs internet)")
    channels: Optional[PositiveInt] = Field(
        None, description="repeat a grayscale image's channel this many times (3: for networks that want RGB)")


def _signature_fields(fn: Callable[..., Any], skip: int | tuple[str, ...]) -> dict[str, Any]:
    """The options a builder or loader accepts, as pydantic fields, read from its signature."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())
    params = params[skip:] if isinstance(skip, int) else [p for p in params if p.name not in skip]
    out = {}
    for p in params:
        default = p.default if p.default is not inspect.Parameter.empty else ...
        if isinstance(default, tuple):
            default = list(default)  # the JSON Schema default, as YAML would write it
        out[p.name] = (hints.get(p.name, Any), Field(default))
    return out


def _first_line(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").strip().splitlines()[0] if inspect.getdoc(fn) else ""


def _dataset_models() -> list[type[Section]]:
    from tune_prune.data import DATASETS

    out = []
    for name in DATASETS.names():
        loader = DATASETS.get(name)
        fields = _signature_fields(loader, _LOADER_ARGS)
        out.append(create_model(f"Dataset_{name}", __base__=DatasetBase, __doc__=_first_line(loader),
                                name=(Literal[name], Field(description="the dataset")), **fields))
    return out


MODEL_SOURCES = ("builtin", "huggingface", "python", "timm", "torchvision")


def _normalize(value: Any) -> Any:
    if value in ("data", "imagenet"):
        return value
    if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
        if (isinstance(mean, list) and isinstance(std, list) and mean and len(mean) == len(std)
                and all(is_number(v) for v in mean) and all(is_number(v) and v > 0 for v in std)):
            return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    raise invalid("must be data, imagenet, or {mean: [...], std: [...]} with one positive std per mean", value)


Normalize = custom(_normalize, {"anyOf": [
    {"enum": ["data", "imagenet"]},
    {"type": "object", "additionalProperties": False, "required": ["mean", "std"],
     "properties": {"mean": {"type": "array", "items": {"type": "number"}, "minItems": 1},
                    "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1}}}]})


class ModelCommon(Section):
    """What every model source takes besides its own options."""

    checkpoint: Optional[PathString] = Field(
        None, description="start from these weights instead of training the dense model: a file holding a "
        "state_dict, or a dict holding one (see checkpoint_key); identified by its content hash")
    checkpoint_key: Optional[str] = Field(
        None, description="the key under which the checkpoint dict holds the state_dict (e.g. state_dict, model); "
        "default: found when unambiguous")
    normalize: Optional[Normalize] = Field(
        None, description="input normalisation: data (the training split's statistics), imagenet, or "
        "{mean, std}; default: the library weights' own when they define one, else data")
    input_size: Optional[PositiveInt] = Field(
        None, description="resize each input batch to this many pixels inside the model (bilinear), e.g. 224 "
        "for an ImageNet-pretrained network on 32 px CIFAR images, as the paper did; the data stays small")


def _model_models() -> list[type[Section]]:
    from tune_prune.models import MODELS

    out = []
    for name in MODELS.names():
        builder = MODELS.get(name)
        fields = _signature_fields(builder, 2)  # after (in_shape, num_classes)
        out.append(create_model(f"Model_{name}", __base__=ModelCommon, __doc__=_first_line(builder),
                                name=(Literal[name], Field(description="a built-in model")),
                                source=(Optional[Literal["builtin"]], Field(None, description="built-in (default)")),
                                **fields))
    return out


class TorchvisionModel(ModelCommon):
    """Any classification model of torchvision.models, optionally with its library weights."""

    source: Literal["torchvision"]
    name: str = Field(description="a name from torchvision.models.list_models(), e.g. resnet18")
    weights: Optional[str] = Field(None, description="a weights enum name, e.g. IMAGENET1K_V1 or DEFAULT "
                                   "(downloaded where there is internet)")
    num_classes: Optional[PositiveInt] = Field(
        None, description="the classes the model predicts; default and required value: the dataset's. The "
        "library weights' head is replaced when it differs")
    kwargs: dict[str, Any] = Field({}, description="more keyword arguments for the model builder")

    @model_validator(mode="after")
    def _known_to_torchvision(self) -> "TorchvisionModel":
        from tune_prune._torchvision import import_torchvision

        tv = import_torchvision()
        names = tv.models.list_models(module=tv.models)
        if self.name not in names:
            raise _at("model.name", f"torchvision has no classification model {self.name!r}; accepted: "
                      f"{', '.join(names)}")
        if self.weights is not None:
            enum = tv.models.get_model_weights(self.name)
            if self.weights not in enum.__members__:
                raise _at("model.weights", f"{self.name} has no weights {self.weights!r}; accepted: "
                          f"{', '.join(enum.__members__)}")
        return self


class TimmModel(ModelCommon):
    """Any timm.create_model name, optionally with its pretrained weights."""

    source: Literal["timm"]
    name: str = Field(description="a timm model name, e.g. vit_small_patch16_224 (a pretrained tag may follow a dot)")
    pretrained: bool = Field(False, description="start from timm's pretrained weights (downloaded from the "
                             "Hugging Face hub where there is internet)")
    num_classes: Optional[PositiveInt] = Field(None, description="default and required value: the dataset's")
    kwargs: dict[str, Any] = Field({}, description="more keyword arguments for timm.create_model, e.g. img_size")

    @model_validator(mode="after")
    def _known_to_timm(self) -> "TimmModel":
        from tune_prune.models import import_timm

        timm = import_timm()
        if not timm.is_model(self.name):
            close = [n for n in timm.list_models(f"*{self.name.split('.')[0][:6]}*")][:8]
            raise _at("model.name", f"timm has no model {self.name!r}"
                      + (f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"))
        return self


class PythonModel(ModelCommon):
    """Your own architecture: a function that returns an nn.Module."""

    source: Literal["python"]
    name: str = Field(description="module:function, importable on every Ray worker (the working directory "
                      "or an installed package); called as function(**kwargs), with num_classes when it takes it")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments for the function")

    @model_validator(mode="after")
    def _module_colon_function(self) -> "PythonModel":
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.name):
            raise _at("model.name", f"must be module:function (e.g. my_package.nets:build), got {self.name!r}")
        return self


class TextDataset(Section):
    """A text corpus for task: causal_lm: tokenized once, packed into blocks, split by a seed, cached."""

    name: Literal["text"] = Field(description="a text corpus (task: causal_lm)")
    files: Optional[Annotated[list[PathString], Field(min_length=1)]] = Field(  # type: ignore[valid-type]
        None, description="UTF-8 text files or globs, read in sorted order (give this or hf_dataset)")
    hf_dataset: Optional[PathString] = Field(
        None, description="a Hugging Face dataset: a directory written by save_to_disk, or a hub id (needs "
        "network access where it runs)")
    hf_split: Optional[str] = Field(None, description="the split of hf_dataset to read (a DatasetDict's, or "
                                    "the hub's; default train)")
    hf_revision: Optional[str] = Field(None, description="hub datasets: the revision (commit or tag) to read")
    text_column: str = Field("text", description="hf_dataset: the column holding the text")
    tokenizer: Optional[PathString] = Field(
        None, description="a tokenizer directory (AutoTokenizer; the model's own); default: the model's own "
        "when model.name is a local directory holding one, else a byte-level BPE of vocab_size tokens trained "
        "on the corpus")
    vocab_size: PositiveInt = Field(2048, description="the trained tokenizer's vocabulary")
    block_size: Annotated[int, Field(ge=2)] = Field(128, description="tokens per training block (sequence length)")
    val_size: Size = Field(0.1, description="validation blocks: a count or a fraction")
    test_size: Size = Field(0.1, description="test blocks: a count or a fraction")
    train_subset: Optional[PositiveInt] = Field(None, description="train on a fixed random subset of this many "
                                                "blocks (validation and test are kept)")
    split_seed: NonNegativeInt = Field(0, description="seeds the split of blocks; the same for every trial")
    root: Optional[PathString] = Field(None, description="where the tokenized cache lives; default "
                                       "$TUNE_PRUNE_DATA or ~/.cache/tune_prune/data")
    download: bool = Field(False, description="unused for text (a hub id is fetched when given)")

    @model_validator(mode="after")
    def _one_source(self) -> "TextDataset":
        if (self.files is None) == (self.hf_dataset is None):
            raise _at("dataset.files", "give exactly one of files (text files) and hf_dataset (a saved dataset "
                      "directory or a hub id)")
        return self


class HuggingFaceModel(ModelCommon):
    """A Hugging Face causal language model (AutoModelForCausalLM), for task: causal_lm."""

    source: Literal["huggingface"]
    name: Optional[str] = Field(None, description="a local model directory or a hub id (needs network access "
                                "where it runs); or leave it out and give config")
    config: Optional[dict[str, Any]] = Field(
        None, description="build a fresh model from this config instead (AutoConfig.for_model(model_type, "
        "**config)); vocab_size defaults to the tokenizer's")
    model_type: str = Field("gpt_neo", description="with config: the architecture (a transformers model type)")
    revision: Optional[str] = Field(None, description="hub models: the revision (commit or tag)")

    @model_validator(mode="after")
    def _name_or_config(self) -> "HuggingFaceModel":
        if (self.name is None) == (self.config is None):
            raise _at("model.name", "give exactly one of name (a local directory or hub id) and config")
        if self.checkpoint is not None and self.name is None:
            raise _at("model.checkpoint", "a checkpoint for a model built from config: save it as a model "
                      "directory (save_pretrained) and give that as model.name instead")
        for f in ("normalize", "input_size"):
            if getattr(self, f) is not None:
                raise _at(f"model.{f}", "applies to image models only")
        return self


def model_tag(value: Any) -> str | None:
    """Which model schema a raw model section is: a source, or builtin:<name>."""
    if not isinstance(value, Mapping):
        return None
    source = value.get("source")
    if source is None or source == "builtin":
        return f"builtin:{value.get('name')}"
    return str(source)


def _tagged(models: list[type[Section]]) -> Any:
    return Annotated[Union[tuple(models)], Field(discriminator="name")]


def _model_union() -> Any:
    from pydantic import Discriminator, Tag

    members = [Annotated[m, Tag(f"builtin:{m.model_fields['name'].annotation.__args__[0]}")]
               for m in _model_models()]
    members += [Annotated[TorchvisionModel, Tag("torchvision")], Annotated[TimmModel, Tag("timm")],
                Annotated[PythonModel, Tag("python")], Annotated[HuggingFaceModel, Tag("huggingface")]]
    return Annotated[Union[tuple(members)], Discriminator(model_tag)]


# ---------------------------------------------------------------- training sections

class PretrainSection(Section):
    """Training of the dense model, once per (model, dataset, seed) and cached."""

    epochs: NonNegativeInt = Field(30, description="epochs of dense training; 0: use the starting weights as "
                                   "they are (the default when model.checkpoint is given)")
    lr: PositiveFloat = Field(0.1, description="SGD learning rate (cosine-annealed)")
    batch_size: PositiveInt = 128
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    optimizer: Literal["adamw", "sgd"] = Field(
        "sgd", description="sgd (momentum, the paper's image setup) or adamw (the authors' language-model setup)")


def _learning_rates(value: Any) -> Any:
    if is_number(value) and value > 0:
        return float(value)
    if isinstance(value, list) and value and all(is_number(v) and v > 0 for v in value):
        if len(set(value)) != len(value):
            raise invalid("must not repeat a value", value)
        return [float(v) for v in value]
    raise invalid("must be a number > 0, or a non-empty list of them (a grid axis of every strategy)", value)


LearningRates = custom(_learning_rates, {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                   {"type": "array", "minItems": 1,
                                                    "items": {"type": "number", "exclusiveMinimum": 0}}]})


class PruneSection(Section):
    """Which layers are pruned: every Conv2d and Linear (weights and biases) unless narrowed here."""

    include: list[str] = Field([], description="glob patterns on module names; only matching Conv2d/Linear "
                               "layers are pruned (default: all)")
    exclude: list[str] = Field([], description="glob patterns on module names kept dense, e.g. [conv1, fc]")


class FinetuneSection(Section):
    """Fine-tuning after every prune event: a fresh SGD optimizer, constant LR."""

    lr: LearningRates = Field(0.01, description="constant learning rate; a list is a grid axis of every strategy "
                              "that does not set its own lr (so best-of-sweep never mixes schedule with lr)")
    batch_size: PositiveInt = 128
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    min_delta: NonNegativeFloat = Field(0.0, description="patience: an improvement of the monitored metric "
                                        "must exceed this")
    monitor: Optional[Literal["val_accuracy", "val_loss", "val_perplexity"]] = Field(
        None, description="what patience watches; default the task's metric (val_accuracy, val_perplexity). The "
        "kept checkpoint is always the best val metric (val_loss with min_delta 0 is the authors' main branch; "
        "val_accuracy with 1e-4 their refactor branch)")
    optimizer: Literal["adamw", "sgd"] = Field(
        "sgd", description="a fresh optimizer per prune event: sgd (momentum) or adamw (the authors' "
        "language-model setup: lr 1e-3, weight decay 0.01)")
    batches_per_epoch: Optional[PositiveInt] = Field(
        None, description="an epoch (the unit of patience, validation and cost) is this many training batches "
        "instead of a full pass: for corpora too large to pass over between validations (the authors' "
        "language-model runs validate every few batches)")


PolicyName = Literal[tuple(sorted(BUDGET_POLICIES))]  # type: ignore[valid-type]


class BudgetSection(Section):
    """Per-trial budget (part of every trial's key) and optional limits on the whole sweep."""

    epochs: Optional[PositiveInt] = Field(
        description="the most fine-tuning epochs one trial may spend, all events together; null: no per-trial "
        "budget (the paper's patience protocol: patience alone ends each event, up to max_event_epochs)")
    policy: PolicyName = Field(
        "carry_over", description="how the trial's epochs are shared between its events")
    max_event_epochs: Optional[PositiveInt] = Field(
        None, description="the most epochs one prune event may run: a safety cap, required with epochs: null "
        "(it must be above every patience); with a budget it caps each event's share too")
    sweep_epochs: Optional[PositiveInt] = Field(
        None, description="refuse the sweep if its planned epochs (pretraining included) exceed this")
    sweep_accelerator_hours: Optional[PositiveFloat] = Field(
        None, description="refuse the sweep if its planned GPU share x hours exceed this (needs epoch_seconds)")
    epoch_seconds: Optional[PositiveFloat] = Field(
        None, description="seconds one epoch takes on one trial's resources (time a --smoke-test run)")

    @model_validator(mode="after")
    def _unbounded_needs_a_cap(self) -> "BudgetSection":
        if self.epochs is None and self.max_event_epochs is None:
            raise _at("budget.max_event_epochs", "is required with budget.epochs: null (no per-trial budget): the "
                      "most epochs one prune event may run, a safety cap above every patience (e.g. 1000)")
        if self.epochs is None and "policy" in self.model_fields_set:
            raise _at("budget.policy", "has no effect with budget.epochs: null (no per-trial budget to share "
                      "between events); remove it, or give budget.epochs")
        return self

    @model_validator(mode="after")
    def _hours_need_epoch_time(self) -> "BudgetSection":
        if self.sweep_accelerator_hours is not None and self.epoch_seconds is None:
            raise _at("budget.epoch_seconds", "is required with budget.sweep_accelerator_hours: the seconds one "
                      "epoch takes on one trial's resources (time a --smoke-test run to measure it)")
        return self


class SearchSection(Section):
    """grid: every combination. adaptive: Optuna samples per (strategy, target), ASHA stops the weak."""

    mode: Literal["adaptive", "grid"] = "grid"
    num_samples: PositiveInt = Field(8, description="adaptive: configurations sampled per (strategy, target)")
    confirm_top: PositiveInt = Field(1, description="adaptive: best configurations re-run on every other seed")
    grace_period: PositiveFloat = Field(1.0, description="adaptive: ASHA grace, in compression doublings")
    reduction_factor: Annotated[int, Field(ge=2)] = 2


def _channels_last(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise invalid("must be auto, true or false", value)


ChannelsLast = custom(_channels_last, {"enum": ["auto", True, False]})
AmpName = Literal[AMP_CHOICES]  # type: ignore[valid-type]


class ExecutionSection(Section):
    """Speed choices, resolved per device; not part of trial keys."""

    amp: AmpName = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: ChannelsLast = Field(
        "auto", description="auto: NHWC for conv models on CUDA")


class TrackingSection(Section):
    """What each trial records in MLflow beyond its metrics; not part of trial keys."""

    log_models: bool = Field(
        True, description="log each trial's final model as an MLflow logged model (the Models column, "
        "load_final_model); false for studies of thousands of tiny trials, where saving a model is about a "
        "third of each trial's cost")


class SpeedSection(Section):
    """How each trial's final model is timed against the dense one."""

    enabled: bool = True
    batch_size: PositiveInt = Field(256, description="the throughput batch; latency is always batch 1")
    warmup: NonNegativeInt = 3
    repeats: PositiveInt = 15


class ResourcesSection(Section):
    """Ray resources of each trial."""

    cpu: PositiveFloat = 1.0
    gpu: NonNegativeFloat = Field(0.0, description="a fraction packs trials on one GPU (0.25: four)")

    @model_validator(mode="after")
    def _whole_or_fraction(self) -> "ResourcesSection":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise _at("resources.gpu", f"must be a fraction <= 1 (0.25 packs 4 trials on a GPU) or a whole "
                      f"number of GPUs, got {self.gpu}")
        return self


# ---------------------------------------------------------------- strategies

def _fraction(v: Any) -> Any:
    if is_number(v) and 0 < v < 1:
        return v
    raise invalid("must be a number in (0, 1)", v)


def _positive(v: Any) -> Any:
    if is_number(v) and v > 0:
        return v
    raise invalid("must be a number > 0", v)


def _patience(v: Any) -> Any:
    if v is None or (is_int(v) and v >= 0):
        return v
    raise invalid("must be an integer >= 0 (epochs without improvement), or null for fixed epochs", v)


def _epochs(v: Any) -> Any:
    if is_int(v) and v >= 1:
        return v
    raise invalid("must be an integer >= 1", v)


#: kind of knob -> (check of one value, its JSON Schema, integer?)
def _policy(v: Any) -> Any:
    if v in BUDGET_POLICIES:
        return v
    raise invalid(f"must be a budget policy ({', '.join(sorted(BUDGET_POLICIES))})", v)


_KNOB_KINDS: dict[str, tuple[Callable[[Any], Any], dict[str, Any], bool]] = {
    "policy": (_policy, {"enum": sorted(BUDGET_POLICIES)}, False),
    "fraction": (_fraction, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, False),
    "positive": (_positive, {"type": "number", "exclusiveMinimum": 0}, False),
    "patience": (_patience, {"type": ["integer", "null"], "minimum": 0}, True),
    "epochs": (_epochs, {"type": "integer", "minimum": 1}, True),
}
_KNOB_HELP = {
    "step": ("fraction", "constant: sparsity removed per event, as a share of the original weights"),
    "rate0": ("fraction", "geometric/hybrid: the nominal per-event rate; the exact rate lands on the target"),
    "first_fraction": ("fraction", "hybrid: the first event reaches this fraction of the target"),
    "first_sparsity": ("fraction", "hybrid: the first event reaches this sparsity (absolute, as in the paper's "
                       "Tables 3-4); grid points at targets not above it are left out"),
    "patience": ("patience", "epochs without val improvement before the next event; null: fixed epochs"),
    "first_patience": ("patience", "hybrid: patience after the first (large) event"),
    "epochs_per_event": ("epochs", "fixed epochs per event, or the per-event cap with patience"),
    "lr": ("positive", "fine-tuning learning rate for this strategy (overrides finetune.lr)"),
    "budget_policy": ("policy", "how this strategy's trials share their epochs between events (overrides "
                      "budget.policy; the hybrid's long first patience wants front_loaded)"),
}
COMMON_STRATEGY_KEYS = ("patience", "epochs_per_event", "lr", "budget_policy")
EXTRA_STRATEGY_KEYS = {"hybrid": ("first_patience",)}
RANGE_KEYS = ("low", "high", "log")


def knob_kind(key: str) -> tuple[Callable[[Any], Any], bool]:
    check, _, integer = _KNOB_KINDS[_KNOB_HELP[key][0]]
    return check, integer


def _knob_type(key: str) -> Any:
    check, schema, integer = _KNOB_KINDS[_KNOB_HELP[key][0]]

    def validate(value: Any) -> Any:
        if isinstance(value, Mapping):
            return _validate_range(value, check, integer, key)
        if isinstance(value, list):
            if not value:
                raise invalid("must not be an empty list", value)
            for v in value:
                check(v)
            return value
        return check(value)

    rng = {"type": "object", "additionalProperties": False, "required": ["low", "high"],
           "properties": {"low": schema, "high": schema, "log": {"type": "boolean"}},
           "description": "adaptive search only: a range to sample from"}
    return custom(validate, {"anyOf": [schema, {"type": "array", "items": schema, "minItems": 1}, rng]})


def _validate_range(value: Mapping[str, Any], check: Callable[[Any], Any], integer: bool, key: str) -> dict:
    unknown = [k for k in value if k not in RANGE_KEYS]
    if unknown:
        raise invalid(f"a range takes low, high and log only (unknown: {', '.join(map(str, unknown))})", dict(value))
    if "low" not in value or "high" not in value:
        raise invalid("a range needs low and high, e.g. {low: 0.05, high: 0.3}", dict(value))
    low, high = check(value["low"]), check(value["high"])
    if integer and not (is_int(low) and is_int(high)):
        raise invalid(f"{key} ranges take integers", f"{low!r}..{high!r}")
    if low is None or high is None or not low < high:
        raise invalid("a range needs low < high", f"{low!r}..{high!r}")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise invalid("range log must be true or false", log)
    if log and low <= 0:
        raise invalid("a log range needs low > 0", low)
    return dict(value)


def _strategy_model(schedule: str) -> type[Section]:
    keys = SCHEDULE_KNOBS[schedule] + COMMON_STRATEGY_KEYS + EXTRA_STRATEGY_KEYS.get(schedule, ())
    fields = {}
    for k in keys:
        required = k in required_knobs(schedule)
        fields[k] = (_knob_type(k), Field(... if required else None, description=_KNOB_HELP[k][1]
                                          + " (a value, a list of values for the grid, or {low, high, log})"))
    doc = f"The {schedule} schedule's knobs and fine-tuning settings; lists are grid axes."
    return create_model(f"Strategy_{schedule}", __base__=Section, __doc__=doc, **fields)


def _strategies_model() -> type[Section]:
    fields = {name: (Optional[_strategy_model(name)], None) for name in sorted(SCHEDULE_KNOBS)}
    model = create_model("Strategies", __base__=Section,
                         __doc__="Schedules to compare, each with its knobs (lists are grid axes).", **fields)
    return model


# ---------------------------------------------------------------- the whole spec

def _sparsity(v: Any) -> float:
    if not is_number(v) or not 0.0 <= v < 1.0:
        raise invalid("must be a sparsity in [0, 1)", v)
    if v == 0:
        raise invalid("0 is the dense baseline, which every sweep runs already; list sparsities in (0, 1)", v)
    return float(v)


def _criteria(value: Any) -> Any:
    names = ", ".join(sorted(CRITERIA))
    if isinstance(value, str) and value in CRITERIA:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v in CRITERIA for v in value):
        return value
    if isinstance(value, list) and not value:
        raise invalid(f"must be a criterion ({names}) or a non-empty list of them", value)
    bad = next((v for v in value if v not in CRITERIA), value) if isinstance(value, list) else value
    raise PydanticCustomError("tune_prune", "unknown value {got}; accepted: {names}, or a list of them",
                              {"got": shown(bad), "names": names})


Criteria = custom(_criteria, {"anyOf": [{"enum": sorted(CRITERIA)},
                                        {"type": "array", "minItems": 1, "items": {"enum": sorted(CRITERIA)}}]})


def _build_spec_model() -> type[Section]:
    top_keys = tuple(k for k in TOP_KEYS if k != "smoke_test")

    class SpecBase(Section):
        @model_validator(mode="after")
        def _cross_checks(self) -> Any:
            if len(set(self.target_sparsities)) != len(self.target_sparsities):
                raise _at("target_sparsities", f"has duplicates: {list(self.target_sparsities)}")
            if len(set(self.seeds)) != len(self.seeds):
                raise _at("seeds", f"has duplicates: {list(self.seeds)}")
            chosen = {k: v for k, v in self.strategies if v is not None}
            if not chosen:
                raise _at("strategies", f"must map schedule names ({', '.join(sorted(SCHEDULE_KNOBS))}) "
                          "to their knobs")
            adaptive = self.search.mode == "adaptive"
            for schedule, strat in chosen.items():
                for group in SCHEDULE_ONE_OF.get(schedule, ()):
                    given = [k for k in group if getattr(strat, k) is not None]
                    if len(given) != 1:
                        raise _at(f"strategies.{schedule}.{group[0]}", f"give exactly one of {' and '.join(group)}"
                                  + (", not both" if given else ""))
                for key, value in strat:
                    if isinstance(value, Mapping) and not adaptive:
                        raise _at(f"strategies.{schedule}.{key}", "ranges ({low, high}) need search.mode: "
                                  "adaptive; in a grid give a list of values")
                patience = strat.patience if isinstance(strat.patience, list) else [strat.patience]
                if None in patience and strat.epochs_per_event is None:
                    raise _at(f"strategies.{schedule}.epochs_per_event", "is required for fixed-epoch "
                              "fine-tuning (patience: null); or give an integer patience")
            return self

    smoke_schema = {"type": "object", "propertyNames": {"enum": list(top_keys)},
                    "description": "overrides applied by --smoke-test (a tiny run of the same code path)"}
    fields: dict[str, Any] = {
        "name": (SafeName, Field(description="the sweep's name: MLflow experiment and run directory names")),
        "dataset": (_tagged([*_dataset_models(), TextDataset]), Field(description="the data; its own options beside name")),
        "model": (_model_union(), Field(description="the network: a built-in name with its options, or "
                                        "source: torchvision, timm, python or huggingface")),
        "pretrain": (PretrainSection, PretrainSection()),
        "finetune": (FinetuneSection, FinetuneSection()),
        "budget": (BudgetSection, ...),
        "target_sparsities": (Annotated[list[custom(_sparsity, {"type": "number", "exclusiveMinimum": 0,  # type: ignore[valid-type]
                                                                   "exclusiveMaximum": 1})],
                                        Field(min_length=1)],
                              Field(description="sparsities to compare at, each in (0, 1)")),
        "seeds": (Annotated[list[NonNegativeInt], Field(min_length=1)], Field([0], description="one trial per seed")),
        "strategies": (_strategies_model(), ...),
        "resources": (ResourcesSection, ResourcesSection()),
        "prune": (PruneSection, PruneSection()),
        "frontier_rule": (Literal[FRONTIER_RULES], Field(  # type: ignore[valid-type]
            "all_events", description="which events are frontier points: all_events (an iterative run counts at "
            "every level it passes) or final_only (the authors' rule: geometric and hybrid runs only with their "
            "final event at their target, one-shot and constant events where they hit a level exactly)")),
        "max_failures": (NonNegativeInt, Field(0, description="retries of a failed trial from its last checkpoint "
                                               "(Ray's -1, retry forever, is not accepted)")),
        "storage_path": (PathString, Field("tune_prune_runs", description="Ray Tune results and checkpoints")),
        "cache_dir": (PathString, Field(".tune_prune_cache", description="dense models and trial state")),
        "search": (SearchSection, SearchSection()),
        "criterion": (Optional[Criteria],
                      Field(None, description="weight or channel importance; default global_magnitude "
                            "(unstructured) or l2_magnitude (structured). A list compares criteria in one "
                            "sweep: each schedule runs with each, as strategies named schedule+criterion "
                            "(grid search only)")),
        "structure": (Literal[STRUCTURES], Field("unstructured", description="unstructured: masks; "  # type: ignore[valid-type]
                      "structured: whole channels removed")),
        "speed": (SpeedSection, SpeedSection()),
        "execution": (ExecutionSection, ExecutionSection()),
        "task": (Literal["causal_lm", "classification"], Field(  # type: ignore[valid-type]
            "classification", description="classification (scored by accuracy, higher is better) or causal_lm "
            "(a Hugging Face language model on a text dataset, scored by perplexity, lower is better)")),
        "tracking": (TrackingSection, TrackingSection()),
        "smoke_test": (Optional[dict[str, Any]], Field(None, json_schema_extra=smoke_schema)),
    }
    return create_model("SweepSpecFile", __base__=SpecBase,
                        __doc__="A tune_prune sweep spec: what to prune, how, under which budget.", **fields)


_SPEC_MODEL: type[Section] | None = None


def spec_model() -> type[Section]:
    """The spec's pydantic model (built once: it reads the model and dataset registries)."""
    global _SPEC_MODEL
    if _SPEC_MODEL is None:
        _SPEC_MODEL = _build_spec_model()
    return _SPEC_MODEL



def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema, for editors and other tools.

    Declared as draft-07, which every YAML editor plugin reads: what pydantic writes
    here ($defs with JSON-pointer $refs, const, anyOf/oneOf) means the same there.
    Cross-field rules (does a schedule fit its budget, are the data files there)
    are beyond a schema: ``tune-prune validate`` checks those.
    """
    schema = spec_model().model_json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "tune_prune sweep spec"
    return schema


# ---------------------------------------------------------------- errors

def _path(loc: tuple[Any, ...], raw: Any) -> str:
    parts: list[str] = []
    node = raw
    for i, item in enumerate(loc):
        # a tagged union puts the tag (the model's or dataset's name) into the location: drop it
        if i == 1 and loc[0] == "dataset" and isinstance(node, Mapping) and item == node.get("name"):
            continue
        if i == 1 and loc[0] == "model" and item == model_tag(node):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
        if isinstance(node, Mapping):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
        else:
            node = None
    return "".join(parts) or "spec"


_PLAIN = {
    "int_type": "must be an integer", "int_from_float": "must be an integer", "int_parsing": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "bool_type": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list",
    "dict_type": "must be a mapping", "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
}


def explain(err: Mapping[str, Any], raw: Any) -> SchemaError:
    """One pydantic error as a SchemaError with our field path and wording."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "tune_prune_at":
        return SchemaError(ctx["path"], ctx["message"])
    path = _path(tuple(err["loc"]), raw)
    if kind == "tune_prune_unknown":
        accepted = ctx["accepted"]
        return SchemaError(f"{path}.{ctx['key']}" if path != "spec" else ctx["key"], f"unknown field; accepted: {accepted}")
    if kind == "missing":
        return SchemaError(path, "is required")
    if kind == "union_tag_invalid" and path == "model":
        tag = str(ctx.get("tag"))
        if tag == "builtin:None":
            return SchemaError("model.name", "is required")
        if tag.startswith("builtin:"):
            from tune_prune.models import MODELS

            return SchemaError("model.name", f"unknown model {shown(tag[8:])}; accepted: {', '.join(MODELS.names())}"
                               f" (built in), or set model.source: torchvision, timm, python or huggingface")
        return SchemaError("model.source", f"unknown value {shown(tag)}; accepted: {', '.join(MODEL_SOURCES)}")
    if kind == "union_tag_not_found" and path == "model":
        return SchemaError("model", f"must be a mapping, got {type(value).__name__} {shown(value)}")
    if kind == "union_tag_invalid":
        what = path.split(".")[0]
        accepted = ", ".join(sorted(t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")))
        return SchemaError(f"{path}.name", f"unknown {what} {shown(ctx.get('tag'))}; accepted: {accepted}")
    if kind == "union_tag_not_found":
        return SchemaError(f"{path}.name", "is required")
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return SchemaError(path, f"unknown value {shown(value)}; accepted: {expected.replace(chr(39), '')}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if is_number(bound) else bound
        what = "an integer" if is_int(next(iter(ctx.values()))) and is_int(value) else "a number"
        return SchemaError(path, f"must be {what} {op} {bound}, got {shown(value)}")
    if kind == "too_short":
        return SchemaError(path, "must not be empty")
    if kind in _PLAIN:
        return SchemaError(path, f"{_PLAIN[kind]}, got {type(value).__name__} {shown(value)}"
                           if kind.startswith(("dict", "model")) else f"{_PLAIN[kind]}, got {shown(value)}")
    msg = str(err.get("msg", kind))
    return SchemaError(path, msg.removeprefix("Value error, "))


def validate_raw(raw: Any) -> Section:
    """Validate a raw spec mapping; raise SchemaError for the first problem."""
    if not isinstance(raw, Mapping):
        raise SchemaError("spec", f"must be a mapping of fields ({', '.join(TOP_KEYS)}), got {type(raw).__name__}")
    try:
        return spec_model().model_validate(dict(raw))
    except ValidationError as exc:
        raise explain(exc.errors(include_url=False)[0], raw) from None
