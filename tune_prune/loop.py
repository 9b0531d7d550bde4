"""Pretraining and the prune -> fine-tune loop of one trial. No Ray, no MLflow.

The trial's task decides what a batch's loss and an evaluation's score are: cross-entropy
and accuracy for an image classifier, next-token loss and perplexity for a causal LM
(data: a ``tune_prune.text.TextBundle``). Records hold the score as ``*_metric`` fields
named by ``metric`` ("accuracy" or "perplexity"); ``record.val_accuracy`` or
``record.val_perplexity`` read them, and ``metrics()`` logs them under those names.

The loop talks to the outside world through two hooks: ``on_epoch(EpochRecord)``
after every fine-tuning epoch and ``on_event(EventRecord, LoopState)`` after every
prune event (the state is what a checkpoint needs to resume at the next event).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from tune_prune.data import Bundle
from tune_prune import lm, models
from tune_prune.pruning import budget as budget_policies
from tune_prune.pruning import criteria, sparsegpt
from tune_prune.pruning.masks import MaskSet
from tune_prune.pruning.patience import Patience
from tune_prune.pruning.structured import ChannelPruner, resize_to_state
from tune_prune.spec import AMP_CHOICES, CHANNELS_LAST_CHOICES, STRUCTURED, PretrainSpec, TrialSpec


class _Named:
    """``val_metric`` read as ``val_<metric>`` (val_accuracy, val_perplexity), the name it is logged under."""

    metric: str

    def __getattr__(self, name: str) -> Any:
        metric = self.__dict__.get("metric", "accuracy")
        for prefix in ("pruned_val_", "val_", "test_"):
            if name == f"{prefix}{metric}":
                return self.__dict__[f"{prefix}metric"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def named(self) -> dict[str, Any]:
        """Fields as logged: ``*_metric`` under the metric's name, the name itself left out."""
        out = {}
        for k, v in self.__dict__.items():
            if k == "metric":
                continue
            out[k.replace("_metric", f"_{self.metric}") if k.endswith("_metric") else k] = v
        return out


@dataclass(frozen=True)
class EpochRecord(_Named):
    event: int  # 1-based prune event this epoch belongs to
    epoch_in_event: int  # 1-based
    global_epoch: int  # fine-tuning epochs spent so far, this one included
    train_loss: float
    val_metric: float  # the task's metric (accuracy or perplexity)
    val_loss: float
    metric: str = "accuracy"


@dataclass(frozen=True)
class EventRecord(_Named):
    event: int  # 1-based
    n_events: int
    scheduled_sparsity: float
    sparsity: float  # measured: exact zeros among prunable weights
    val_metric: float  # of the checkpoint kept (best epoch of this event)
    val_loss: float
    test_metric: float
    test_loss: float
    pruned_val_metric: float  # right after pruning, before fine-tuning
    pruned_val_loss: float
    event_epochs: int  # epochs run in this event
    best_epoch: int  # 0 = the freshly pruned weights were never beaten
    budget_cap: int  # epochs the budget policy allowed this event
    cost_epochs: int  # cumulative fine-tuning epochs of the trial
    wall_seconds: float  # cumulative fine-tuning wall time of the trial
    # measured fractions removed (structured: physically; unstructured: exact zeros)
    param_sparsity: float | None = None
    mac_sparsity: float | None = None  # structured only: dense kernels skip no zero
    channel_sparsity: float | None = None  # structured only
    # patience events only: 1 when the epoch cap (budget policy or epochs_per_event) ended the
    # event while patience was still waiting, 0 when patience ended it; None for fixed epochs
    patience_cut: float | None = None
    metric: str = "accuracy"  # what val_metric/test_metric measure (tune_prune.metrics)

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.named().items() if v is not None}


@dataclass
class LoopState:
    """What resuming at event ``next_event`` (0-based) needs."""

    next_event: int
    cost_epochs: int
    wall_seconds: float
    model_state: dict[str, torch.Tensor]
    mask_state: dict[str, torch.Tensor]

    def to_payload(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "LoopState":
        return cls(**payload)


@dataclass
class Hooks:
    on_epoch: Callable[[EpochRecord], None] = lambda record: None
    on_event: Callable[[EventRecord, LoopState], None] = lambda record, state: None
    #: called once with the final model (last event's kept checkpoint), in eval mode
    on_final: Callable[[nn.Module], None] = lambda model: None
    #: called once the pruner exists, with the number of prunable weights the sparsities count
    on_prunable: Callable[[int], None] = lambda count: None
    #: called before on_final with the per-layer report (masks: params, sparsity; channels: widths)
    on_layers: Callable[[dict[str, dict[str, float]]], None] = lambda report: None


@dataclass(frozen=True)
class Evaluation:
    score: float  # the task's metric: accuracy (higher is better) or perplexity (lower)
    loss: float  # mean cross-entropy (per example, or per predicted token)
    metric: str = "accuracy"

    @property
    def accuracy(self) -> float:
        if self.metric != "accuracy":
            raise AttributeError(f"an evaluation of {self.metric} has no accuracy")
        return self.score


@dataclass(frozen=True)
class PretrainResult:
    """The dense model's training; ``val_score``/``test_score`` are its task's metric (``metric``)."""

    epochs: int
    wall_seconds: float
    val_score: float
    test_score: float
    best_epoch: int
    extra: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainResult":
        """From its JSON form, including the accuracy-named one of caches written before tasks existed."""
        d = dict(d)
        for split in ("val", "test"):
            if f"{split}_accuracy" in d:
                d[f"{split}_score"] = d.pop(f"{split}_accuracy")
        return cls(**d)


@dataclass(frozen=True)
class FastPath:
    """Execution choices that change speed, not the experiment: bf16 autocast and channels_last.

    ``auto`` turns each on where it helps: bf16 autocast on a CUDA device that
    supports bf16 (tensor cores; master weights and the optimizer stay fp32), and
    channels_last for models with convolutions on CUDA (cuDNN's fast NHWC
    kernels). On CPU ``auto`` leaves both off: bf16 is slower there on most
    chips without AMX, and NHWC buys nothing for our models.
    """

    amp: bool = False
    channels_last: bool = False

    @classmethod
    def resolve(cls, amp: str, channels_last: str | bool, device: torch.device, model: nn.Module) -> "FastPath":
        if amp not in AMP_CHOICES:
            raise ValueError(f"execution.amp: unknown value {amp!r}; accepted: {', '.join(AMP_CHOICES)}")
        if channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"execution.channels_last: must be auto, true or false, got {channels_last!r}")
        cuda = device.type == "cuda"
        use_amp = amp == "bf16" or (amp == "auto" and cuda and torch.cuda.is_bf16_supported())
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        use_cl = channels_last is True or (channels_last == "auto" and cuda and has_conv)
        return cls(amp=use_amp, channels_last=use_cl)

    def model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp)


FP32 = FastPath()


def fast_path_for(trial: TrialSpec, data: Bundle, device: torch.device,
                  execution: dict[str, Any] | None) -> FastPath:
    """Resolve a spec's ``execution`` section for ``trial``'s model on ``device``."""
    execution = execution or {}
    probe = models.build(trial.model, data.in_shape, data.num_classes)  # conv or not
    return FastPath.resolve(execution.get("amp", "auto"), execution.get("channels_last", "auto"), device, probe)


def model_view(trial: TrialSpec, data: Bundle) -> Bundle:
    """``data`` normalised the way ``trial``'s model expects: its weights' own statistics when
    they define them (or model.normalize says so), else the training split's."""
    norm = models.preferred_normalize(trial.model)
    if norm is None:
        return data
    mean, std = norm
    channels = data.in_shape[0]
    if len(mean) != channels:
        if channels != 1:
            raise ValueError(f"model.normalize: {len(mean)} channel statistics for {channels}-channel images")
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return data.with_normalization(mean, std)


def pick_device(gpu_share: float) -> torch.device:
    """CUDA when the trial was given GPU resources and one is visible, else CPU."""
    if gpu_share > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def is_lm(data: Any) -> bool:
    """Whether ``data`` is a causal-LM corpus (token blocks) rather than labelled images."""
    return getattr(data, "task", "classification") == "causal_lm"


def batch_loss(model: nn.Module, data: Any, xb: torch.Tensor, yb: torch.Tensor, fast: FastPath = FP32) -> torch.Tensor:
    """The training loss of one prepared batch: cross-entropy on labels, or next-token loss on blocks."""
    with fast.autocast(xb.device):
        if is_lm(data):
            return lm.lm_loss(model, xb)
        return F.cross_entropy(model(xb).float(), yb)


@torch.no_grad()
def evaluate(model: nn.Module, data: Bundle, split: str, batch_size: int = 1024,
             fast: FastPath = FP32) -> Evaluation:
    """The task's metric and mean loss of ``model`` on ``split`` ('val' or 'test'): accuracy and
    cross-entropy for a classifier; perplexity and next-token loss (nats per predicted token),
    over every predicted token of the split, for a causal LM."""
    if is_lm(data):
        return _evaluate_lm(model, data, split, fast)
    y = data.labels(split)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    for xb, yb in data.batches(split, batch_size):
        with fast.autocast(y.device):
            logits = model(fast.batch(data.prepare(xb, train=False)))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    # one device sync per evaluation, not two per batch
    return Evaluation(score=int(correct) / len(y), loss=float(loss_sum) / len(y))


#: blocks per evaluation batch of a causal LM (its logits are blocks x tokens x vocabulary)
LM_EVAL_BATCH = 16


def _evaluate_lm(model: nn.Module, data: Any, split: str, fast: FastPath) -> Evaluation:
    blocks = data.labels(split)
    ev = lm.evaluate_lm(model, blocks, LM_EVAL_BATCH, autocast=lambda: fast.autocast(blocks.device))
    model.eval()
    return Evaluation(score=ev.perplexity, loss=ev.loss, metric="perplexity")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Bundle,
    batch_size: int,
    generator: torch.Generator,
    masks: MaskSet | ChannelPruner | None = None,
    fast: FastPath = FP32,
    max_batches: int | None = None,
) -> float:
    """One pass over the training split in a seeded random order (or its first ``max_batches``
    batches: a shorter "epoch" for a large corpus); returns mean loss.

    The order is a permutation drawn from ``generator``, then each batch's augmentation
    is drawn from it in turn: the same seed replays the same batches, resident or streamed.
    """
    model.train()
    total, seen = 0.0, 0
    for xb, yb in data.batches("train", batch_size, generator, max_batches=max_batches):
        xb = fast.batch(data.prepare(xb, train=True, generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, data, xb, yb, fast)
        loss.backward()
        optimizer.step()
        if masks is not None:
            masks.apply_()
        total += loss.detach() * len(yb)
        seen += len(yb)
    return float(total) / seen


#: Training batches whose gradients feed a gradient-based criterion before each prune event.
GRADIENT_BATCHES = 16


def gradient_statistics(
    model: nn.Module, masks: MaskSet, data: Bundle, batch_size: int, generator: torch.Generator,
    batches: int = GRADIENT_BATCHES,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mean gradient and mean squared gradient of every prunable tensor over training batches.

    Computed in eval mode so BatchNorm running statistics are not disturbed; the
    weights do not change.
    """
    model.eval()
    mean = {n: torch.zeros_like(p) for n, p in masks.params.items()}
    sq = {n: torch.zeros_like(p) for n, p in masks.params.items()}
    seen = 0
    for xb, yb in data.batches("train", batch_size, generator, max_batches=batches):
        model.zero_grad(set_to_none=True)
        batch_loss(model, data, data.prepare(xb, train=False), yb).backward()
        for n, p in masks.params.items():
            mean[n] += p.grad
            sq[n] += p.grad.pow(2)
        seen += 1
    model.zero_grad(set_to_none=True)
    return {n: v / seen for n, v in mean.items()}, {n: v / seen for n, v in sq.items()}


def activation_statistics(
    model: nn.Module, masks: MaskSet, data: Bundle, batch_size: int, generator: torch.Generator,
    batches: int = GRADIENT_BATCHES,
) -> dict[str, torch.Tensor]:
    """Per prunable Linear weight, the summed squared input activations over training batches
    (Wanda's calibration), in eval mode like ``gradient_statistics``."""
    return criteria.activation_sq_sums(model, masks.params, _calibration(model, data, batch_size, generator, batches))


def input_statistics(
    model: nn.Module, masks: MaskSet, data: Bundle, batch_size: int, generator: torch.Generator,
    batches: int = GRADIENT_BATCHES,
) -> dict[str, torch.Tensor]:
    """Per prunable Linear weight, the mean x x^T of its inputs over training batches (SparseGPT's
    calibration), in eval mode like ``activation_statistics``."""
    return sparsegpt.input_hessians(model, masks.params, _calibration(model, data, batch_size, generator, batches))


def _calibration(model: nn.Module, data: Bundle, batch_size: int, generator: torch.Generator,
                 batches: int) -> Callable[[], None]:
    """What Wanda's and SparseGPT's hooks watch: forward passes over training batches, in eval mode."""
    model.eval()

    def run() -> None:
        for xb, _ in data.batches("train", batch_size, generator, max_batches=batches):
            model(data.prepare(xb, train=False))

    return run


def _generator(device: torch.device, *seed_parts: int) -> torch.Generator:
    # Seeded from (trial seed, epoch counter) so a resumed trial replays the
    # same batches as an uninterrupted one.
    g = torch.Generator(device=device)
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    g.manual_seed(seed)
    return g


def _optimizer(model: nn.Module, cfg: PretrainSpec | FinetuneSpec) -> torch.optim.Optimizer:
    """A fresh optimizer for ``cfg``: SGD with momentum, or AdamW (default betas)."""
    if getattr(cfg, "optimizer", "sgd") == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def new_model(trial: TrialSpec, data: Bundle, seed: int, weights: bool = False) -> nn.Module:
    """``trial``'s network for ``data``: a seeded random init, or (``weights``) its starting weights."""
    torch.manual_seed(seed)
    return models.build(trial.model, data.in_shape, data.num_classes, weights=weights)


def pretrain_dense(
    trial: TrialSpec,
    data: Bundle,
    device: torch.device,
    progress: Callable[[int, Evaluation], None] | None = None,
    fast: FastPath = FP32,
) -> tuple[dict[str, torch.Tensor], PretrainResult]:
    """Train the dense model for ``trial.pretrain``; keep the best epoch by the task's val metric.

    SGD with momentum (or AdamW) and a cosine learning-rate decay over the pretraining epochs.
    """
    cfg: PretrainSpec = trial.pretrain
    model = fast.model(new_model(trial, data, trial.seed, weights=True).to(device))
    if cfg.epochs == 0:
        return _as_is(model, data, fast)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    start = time.perf_counter()
    tracker = Patience(patience=cfg.epochs, mode=trial.metric.mode)
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        train_epoch(model, opt, data, cfg.batch_size, _generator(device, trial.seed, -1, epoch), fast=fast)
        sched.step()
        ev = evaluate(model, data, "val", fast=fast)
        if tracker.update(ev.score, epoch):
            best_state = copy.deepcopy(model.state_dict())
        if progress is not None:
            progress(epoch, ev)
    model.load_state_dict(best_state)
    result = PretrainResult(
        epochs=cfg.epochs,
        wall_seconds=time.perf_counter() - start,
        val_score=evaluate(model, data, "val", fast=fast).score,
        test_score=evaluate(model, data, "test", fast=fast).score,
        best_epoch=tracker.best_epoch,
        metric=trial.metric.name,
    )
    # contiguous: the cache holds one layout whatever the device preferred
    return {k: v.detach().cpu().contiguous() for k, v in best_state.items()}, result


def _as_is(model: nn.Module, data: Bundle, fast: FastPath) -> tuple[dict[str, torch.Tensor], PretrainResult]:
    """The starting weights taken as the dense model (pretrain.epochs: 0): evaluated once, not trained."""
    start = time.perf_counter()
    val, test = evaluate(model, data, "val", fast=fast), evaluate(model, data, "test", fast=fast)
    result = PretrainResult(epochs=0, wall_seconds=time.perf_counter() - start, val_score=val.score,
                            test_score=test.score, best_epoch=0, metric=val.metric)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, result


def run_trial(
    trial: TrialSpec,
    data: Bundle,
    dense_state: dict[str, torch.Tensor],
    device: torch.device,
    hooks: Hooks | None = None,
    resume: LoopState | None = None,
    fast: FastPath = FP32,
) -> list[EventRecord]:
    """Prune ``trial``'s dense model along its schedule, fine-tuning after every event.

    Every event starts from the best checkpoint of the previous one (no weight or
    learning-rate rewinding), builds a fresh SGD optimizer, and runs up to the
    budget policy's cap: a fixed ``epochs_per_event`` or until patience runs out.
    Checkpoint choice and patience use the validation split; test accuracy is
    only measured, once per event, on the kept checkpoint.
    """
    hooks = hooks or Hooks()
    metric = trial.metric
    schedule = trial.sparsities
    n_events = len(schedule)
    ft = trial.finetune

    model = new_model(trial, data, trial.seed).to(device)
    model.load_state_dict(dense_state)
    start_event, cost, wall, pruner_state = 0, 0, 0.0, None
    if resume is not None:
        if trial.structure == STRUCTURED:
            resize_to_state(model, resume.model_state)
        model.load_state_dict(resume.model_state)
        start_event, cost, wall = resume.next_event, resume.cost_epochs, resume.wall_seconds
        pruner_state = resume.mask_state
    # layout first: a layout change swaps parameter storage, and masks keep references to it
    fast.model(model)
    masks = _pruner(trial, model, data, device, pruner_state)
    hooks.on_prunable(masks.dense_params if isinstance(masks, ChannelPruner) else masks.total)

    records = []
    for i in range(start_event, n_events):
        t0 = time.perf_counter()
        g = g2 = acts = None
        crit = criteria.get(trial.criterion)
        if crit.needs_gradients:
            # recomputed from training-set gradients before every prune event
            g, g2 = gradient_statistics(model, masks, data, ft.batch_size, _generator(device, trial.seed, -2, i))
        if crit.needs_activations:
            # Wanda's calibration, inside the event's timed cost like the gradients above
            acts = activation_statistics(model, masks, data, ft.batch_size, _generator(device, trial.seed, -3, i))
        if crit.solver:
            # SparseGPT: every layer to the event's sparsity, its kept weights refitted to its
            # calibration inputs; the masks it returns are supersets of the current ones
            hessians = input_statistics(model, masks, data, ft.batch_size, _generator(device, trial.seed, -3, i))
            masks.set_masks(sparsegpt.prune_model_(masks.params, hessians, schedule[i], masks.masks))
        elif isinstance(masks, ChannelPruner):
            masks.prune_to(schedule[i], trial.criterion, g, g2)
            fast.model(model)  # the surgery builds new, contiguous parameters
        else:
            masks.prune_to(schedule[i], scores=criteria.scores(trial.criterion, masks.params, g, g2, activations=acts))
        b = trial.budget
        cap = budget_policies.event_cap(b.epochs, b.policy, cost, i, n_events, b.max_event_epochs)
        if trial.mode == "fixed":
            epochs = min(trial.epochs_per_event, cap)
            patience = None
        else:
            epochs = cap if trial.epochs_per_event is None else min(cap, trial.epochs_per_event)
            patience = trial.event_patience(i)

        pruned_eval = evaluate(model, data, "val", fast=fast)
        wait = patience if patience is not None else epochs
        # The kept checkpoint is always the best val metric (in its direction: accuracy up,
        # perplexity down); what patience watches is finetune.monitor (val_loss: as the
        # authors' main branch, which stops on the loss while keeping the best top-1).
        on_loss = ft.monitor == "val_loss"
        tracker = Patience(patience=wait, min_delta=0.0 if on_loss else ft.min_delta, mode=metric.mode)
        stopper = Patience(patience=wait, min_delta=ft.min_delta, mode="min") if on_loss else tracker
        tracker.update(pruned_eval.score, 0)
        if on_loss:
            stopper.update(pruned_eval.loss, 0)
        best_state = copy.deepcopy(model.state_dict())
        best_eval = pruned_eval
        opt = _optimizer(model, ft)
        ran, stopped = 0, False
        for e in range(1, epochs + 1):
            loss = train_epoch(model, opt, data, ft.batch_size, _generator(device, trial.seed, cost + 1), masks, fast,
                               max_batches=ft.batches_per_epoch)
            cost += 1
            ran += 1
            ev = evaluate(model, data, "val", fast=fast)
            hooks.on_epoch(EpochRecord(i + 1, e, cost, loss, ev.score, ev.loss, metric.name))
            if tracker.update(ev.score, e):
                best_state = copy.deepcopy(model.state_dict())
                best_eval = ev
            if on_loss:
                stopper.update(ev.loss, e)
            if patience is not None and stopper.should_stop:
                stopped = True
                break
        model.load_state_dict(best_state)
        test_eval = evaluate(model, data, "test", fast=fast)
        wall += time.perf_counter() - t0
        record = EventRecord(
            event=i + 1,
            n_events=n_events,
            scheduled_sparsity=schedule[i],
            sparsity=masks.measured_sparsity(),
            val_metric=best_eval.score,
            val_loss=best_eval.loss,
            test_metric=test_eval.score,
            test_loss=test_eval.loss,
            pruned_val_metric=pruned_eval.score,
            pruned_val_loss=pruned_eval.loss,
            event_epochs=ran,
            best_epoch=tracker.best_epoch,
            budget_cap=cap,
            cost_epochs=cost,
            wall_seconds=wall,
            patience_cut=None if patience is None else float(not stopped),
            metric=metric.name,
            **_reached(masks),
        )
        records.append(record)
        state = LoopState(
            next_event=i + 1,
            cost_epochs=cost,
            wall_seconds=wall,
            # copy=True: on CPU .cpu() would alias the live weights that later events keep training
            model_state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            mask_state=masks.state_dict(),
        )
        hooks.on_event(record, state)
    model.eval()
    hooks.on_layers(masks.layer_report())
    hooks.on_final(model)
    return records


def _pruner(trial: TrialSpec, model: nn.Module, data: Bundle, device: torch.device,
            state: dict[str, Any] | None = None) -> MaskSet | ChannelPruner:
    """Masks (unstructured) or a channel pruner (structured) for ``model``, restored from ``state``.

    Structured: a timm ViT gets the pruner that cuts its heads and MLP channels, any
    other model the one that cuts channel groups.
    """
    if trial.structure == STRUCTURED:
        from tune_prune.pruning.structured_vit import ViTPruner, vit_attention

        kind = ViTPruner if vit_attention(model) else ChannelPruner
        return kind(model, torch.zeros(1, *data.in_shape, device=device), state,
                    include=trial.prune_include, exclude=trial.prune_exclude)
    include, exclude = prune_scope(trial)
    masks = MaskSet(model, include, exclude, weights_only=trial.task == "causal_lm")
    if state is not None:
        masks.load_state_dict(state)
    return masks


def prune_scope(trial: TrialSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(include, exclude) module globs of what gets pruned. A causal LM prunes the Linear
    layers of its attention and MLP blocks: embeddings and the LM head (tied to the token
    embedding in most models) stay dense unless prune.include names them."""
    if trial.task != "causal_lm" or trial.prune_include:
        return trial.prune_include, trial.prune_exclude
    return (), tuple(dict.fromkeys(trial.prune_exclude + lm.LM_DENSE_BY_DEFAULT))


def _reached(pruner: MaskSet | ChannelPruner) -> dict[str, float]:
    if isinstance(pruner, ChannelPruner):
        return pruner.reached()
    return {"param_sparsity": pruner.measured_sparsity()}
