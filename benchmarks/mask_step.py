"""Time one training step of a pruned model three ways: dense, our MaskSet, torch.nn.utils.prune.

What is measured: the wall time of one training step -- forward, cross-entropy
backward, and an SGD step (momentum 0.9, weight decay 5e-4) -- for

1. ``dense``: the plain model, no masks at all (the reference);
2. ``ours``: the same model pruned with :class:`tune_prune.pruning.masks.MaskSet`,
   calling ``masks.apply_()`` after every ``optimizer.step()``, exactly as
   ``tune_prune.loop.train_epoch`` does to keep the masks exact;
3. ``torch.prune``: the same model pruned with
   ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` over the same
   tensors, which keeps ``weight_orig`` as the parameter and recomputes
   ``weight = weight_orig * weight_mask`` in a forward pre-hook.

Why: unstructured masks on dense kernels make no step faster -- a zero costs
as much as any other number in a dense matmul or convolution -- so neither
pruned variant can beat ``dense``. What we want to know is what each way of
*keeping* the masks exact costs. ``MaskSet`` pays one fused ``_foreach_mul_``
over the prunable tensors per step and leaves forward and backward untouched;
the hook approach adds an elementwise multiply (and an autograd node) for every
pruned tensor in every forward, and its gradient in every backward. The goal
printed beside the figures is that ours stays within 1.10x of dense.

The three variants start from the same weights (deep copies of one model), see
the same synthetic batch, and are interleaved within every repeat (dense, ours,
torch.prune, dense, ...) so that drifting machine load hits all three alike.
The reported figure is the median over repeats of the mean per-step time of
each timed block. Synthetic data is enough: the timing of a step does not
depend on what the pixels are.

Run::

    .venv/bin/python benchmarks/mask_step.py                 # default models, CPU, 2 threads
    .venv/bin/python benchmarks/mask_step.py --smoke-test    # a few seconds, lenet only
    .venv/bin/python benchmarks/mask_step.py --device cuda --models resnet18:3x32x32:256
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from tune_prune.models import build_model
from tune_prune.pruning.masks import PRUNABLE_TYPES, MaskSet

GOAL_RATIO = 1.10  # ours/dense must stay at or below this
SPARSITY_TOLERANCE = 1e-4  # 0.01 percentage point, as in the pruning spec
NUM_CLASSES = 10
LEARNING_RATE = 0.01  # any small constant; the step's cost does not depend on it

# Input shape used when --models names a model without one.
DEFAULT_SHAPES: dict[str, tuple[int, int, int]] = {
    "mlp": (1, 28, 28),
    "lenet_300_100": (1, 28, 28),
    "small_cnn": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "resnet18": (3, 32, 32),
}
DEFAULT_BATCH = 128
DEFAULT_MODELS = ("lenet_300_100:1x28x28:128", "small_cnn:1x28x28:128", "resnet20:3x32x32:128")


@dataclass(frozen=True)
class Case:
    """One model to benchmark: registry name, input shape (C, H, W) and batch size."""

    name: str
    in_shape: tuple[int, int, int]
    batch: int


@dataclass
class Variant:
    """A model copy, its optimizer, and what must run after each optimizer step.

    For ``ours``, ``after_step`` is ``MaskSet.apply_``.
    """

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: Callable[[], None] | None = None


@dataclass(frozen=True)
class Result:
    """Median per-step milliseconds for each variant, plus the sparsities measured afterwards."""

    case: Case
    ms: dict[str, float]
    spread: dict[str, tuple[float, float]]  # (min, max) per-step ms over the repeats
    ours_sparsity: float
    prune_sparsity: float
    apply_ms: float  # MaskSet.apply_() timed on its own, median over repeats


def parse_case(text: str) -> Case:
    """Parse ``name[:CxHxW[:batch]]``, e.g. ``resnet20:3x32x32:128`` or just ``small_cnn``."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected name[:CxHxW[:batch]], got {text!r}")
    name = parts[0]
    if len(parts) >= 2:
        try:
            dims = tuple(int(d) for d in parts[1].lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: shape must look like 3x32x32")
        shape: tuple[int, int, int] = dims  # type: ignore[assignment]
    elif name in DEFAULT_SHAPES:
        shape = DEFAULT_SHAPES[name]
    else:
        raise argparse.ArgumentTypeError(
            f"{text!r}: no default input shape for {name!r}; give one, e.g. {name}:3x32x32:128"
        )
    batch = int(parts[2]) if len(parts) == 3 else DEFAULT_BATCH
    if batch < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch must be >= 1")
    return Case(name, shape, batch)


def _sgd(model: nn.Module) -> torch.optim.SGD:
    # Same optimizer settings as the fine-tuning phase of the spec.
    return torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)


def _hooked_tensors(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, name) for every weight and bias of every Conv2d/Linear: MaskSet's tensors."""
    return [
        (module, pname)
        for module in model.modules()
        if isinstance(module, PRUNABLE_TYPES)
        for pname, _ in module.named_parameters(recurse=False)
    ]


def build_variants(case: Case, sparsity: float, device: torch.device) -> list[Variant]:
    """Three copies of one freshly initialised model: dense, MaskSet-pruned, hook-pruned."""
    torch.manual_seed(0)
    base = build_model(case.name, case.in_shape, NUM_CLASSES).to(device).train()

    dense = copy.deepcopy(base)

    ours = copy.deepcopy(base)
    masks = MaskSet(ours)
    masks.prune_to(sparsity)

    hooked = copy.deepcopy(base)
    # A float amount is a share of what is still unpruned; on a fresh model that
    # is the whole original count, so it equals our share of W here.
    prune.global_unstructured(
        _hooked_tensors(hooked), pruning_method=prune.L1Unstructured, amount=sparsity
    )

    # Optimizers are built after pruning so that the hooked model's optimizer
    # holds weight_orig, the tensor torch.nn.utils.prune trains.
    return [
        Variant("dense", dense, _sgd(dense)),
        Variant("ours", ours, _sgd(ours), after_step=masks.apply_),
        Variant("torch.prune", hooked, _sgd(hooked)),
    ]


def train_step(variant: Variant, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One step as in tune_prune.loop.train_epoch; returns the (detached) loss without syncing."""
    variant.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(variant.model(x), y)
    loss.backward()
    variant.optimizer.step()
    if variant.after_step is not None:
        variant.after_step()
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_apply(apply: Callable[[], None], calls: int, device: torch.device) -> float:
    """Mean seconds per call of ``apply`` alone, over ``calls`` back-to-back calls.

    A step-time difference of a few percent is within the block-to-block noise
    of a shared or virtualised machine; timing the mask update by itself shows
    its true per-step cost, which is what ours/dense estimates.
    """
    apply()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        apply()
    _sync(device)
    return (time.perf_counter() - start) / calls


def time_block(
    variant: Variant, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, device: torch.device
) -> float:
    """Mean seconds per step over ``steps`` timed steps, after ``warmup`` untimed ones.

    The warm-up runs before every block, not once per variant: the previous
    block trained a different model, so caches and allocator state have to be
    brought back to this one before the clock starts.
    """
    for _ in range(warmup):
        train_step(variant, x, y)
    _sync(device)
    gc.collect()
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step(variant, x, y)
    _sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{variant.label}: loss became {loss.item()}; timing is meaningless")
    return elapsed / steps


@torch.no_grad()
def effective_sparsity(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of exactly-zero entries in the tensors the forward pass actually uses.

    One forward first, so that the hooked model's ``weight`` attributes are
    recomputed from the final ``weight_orig`` (for the other models it is a
    no-op on the weights).
    """
    model(x)
    # After torch.nn.utils.prune the parameter is "<name>_orig" and the tensor the
    # forward uses is the plain attribute "<name>"; read the latter.
    tensors = [
        getattr(module, name.removesuffix("_orig")) for module, name in _hooked_tensors(model)
    ]
    zeros = sum(int((t == 0).sum().item()) for t in tensors)
    return zeros / sum(t.numel() for t in tensors)


def run_case(
    case: Case, sparsity: float, steps: int, warmup: int, repeats: int, device: torch.device
) -> Result:
    """Benchmark one model: interleave the three variants over ``repeats`` and take medians."""
    variants = build_variants(case, sparsity, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, *case.in_shape, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (case.batch,), generator=gen).to(device)

    per_step: dict[str, list[float]] = {v.label: [] for v in variants}
    apply_times: list[float] = []
    ours_apply = next(v.after_step for v in variants if v.label == "ours")
    assert ours_apply is not None
    for _ in range(repeats):
        for variant in variants:
            per_step[variant.label].append(time_block(variant, x, y, steps, warmup, device))
        apply_times.append(time_apply(ours_apply, 10 * steps, device))

    ms = {label: 1e3 * statistics.median(times) for label, times in per_step.items()}
    spread = {label: (1e3 * min(times), 1e3 * max(times)) for label, times in per_step.items()}
    by_label = {v.label: v for v in variants}
    return Result(
        case=case,
        ms=ms,
        spread=spread,
        ours_sparsity=effective_sparsity(by_label["ours"].model, x),
        prune_sparsity=effective_sparsity(by_label["torch.prune"].model, x),
        apply_ms=1e3 * statistics.median(apply_times),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: torch.device, threads: int) -> list[str]:
    """Lines describing where and when the figures were taken."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"date        {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"torch       {torch.__version__}  (python {platform.python_version()})",
        f"cpu         {_cpu_name()}  ({os.cpu_count()} logical cores)",
        f"threads     {threads} (torch.get_num_threads() = {torch.get_num_threads()})",
        f"device      {device}"
        + (f"  ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"load avg    {load}  (1, 5, 15 min, at start)",
    ]
    return lines


def format_table(results: Sequence[Result]) -> str:
    """Plain-text table: one row per model, ratios against dense, PASS/MISS for the goal."""
    header = (
        "model", "batch", "dense ms/step", "ours ms/step", "ours/dense",
        "torch.prune ms/step", "prune/dense", f"goal ours<={GOAL_RATIO:.2f}x",
    )  # fmt: skip
    rows = [header]
    for r in results:
        ours_ratio = r.ms["ours"] / r.ms["dense"]
        prune_ratio = r.ms["torch.prune"] / r.ms["dense"]
        rows.append(
            (
                r.case.name,
                str(r.case.batch),
                f"{r.ms['dense']:.2f}",
                f"{r.ms['ours']:.2f}",
                f"{ours_ratio:.3f}x",
                f"{r.ms['torch.prune']:.2f}",
                f"{prune_ratio:.3f}x",
                "PASS" if ours_ratio <= GOAL_RATIO else "MISS",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def format_spread(results: Sequence[Result]) -> str:
    """min..max per-step ms over the repeats: a wide range means the machine was busy."""
    lines = []
    for r in results:
        cells = [f"{v} {lo:.2f}..{hi:.2f}" for v, (lo, hi) in r.spread.items()]
        lines.append(f"  {r.case.name}: " + ", ".join(cells))
    return "\n".join(lines)


def format_apply(results: Sequence[Result]) -> str:
    """Per-step cost of MaskSet.apply_() on its own, absolute and as a share of a dense step."""
    return "\n".join(
        f"  {r.case.name}: {r.apply_ms:.3f} ms = {100 * r.apply_ms / r.ms['dense']:.1f}% "
        "of a dense step"
        for r in results
    )


def format_sparsity(results: Sequence[Result], target: float) -> str:
    """One line per model: effective sparsity of both pruned variants after the timed steps."""
    lines = []
    for r in results:
        checks = []
        for label, value in (("ours", r.ours_sparsity), ("torch.prune", r.prune_sparsity)):
            ok = abs(value - target) <= SPARSITY_TOLERANCE
            checks.append(f"{label} {100 * value:.3f}% {'ok' if ok else 'MISMATCH'}")
        lines.append(f"  {r.case.name}: " + ", ".join(checks))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        type=parse_case,
        default=[parse_case(m) for m in DEFAULT_MODELS],
        metavar="NAME[:CxHxW[:BATCH]]",
        help=f"models to time (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before each block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per variant; median taken")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda if available")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny run to check the script works: lenet only, 3 steps, 1 warm-up, 1 repeat",
    )
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.models = [parse_case(DEFAULT_MODELS[0])]
        args.steps, args.warmup, args.repeats = 3, 1, 1
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if min(args.steps, args.repeats, args.threads) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats and --threads must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print("mask_step: one training step (fwd + CE bwd + SGD m=0.9 wd=5e-4)")
    print("\n".join(machine_info(device, args.threads)))
    print(
        f"sparsity {args.sparsity}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"median of {args.repeats} interleaved repeats"
    )
    print()

    results = []
    for case in args.models:
        results.append(
            run_case(case, args.sparsity, args.steps, args.warmup, args.repeats, device)
        )

    print(format_table(results))
    print(f"goal: ours within {GOAL_RATIO:.2f}x of dense (ratio ours/dense)")
    print("MaskSet.apply_() timed alone (the whole per-step cost of keeping masks exact):")
    print(format_apply(results))
    print("per-step ms over repeats, min..max (a wide range means a busy machine):")
    print(format_spread(results))
    print(f"effective sparsity after the timed steps (target {100 * args.sparsity:.3f}%):")
    print(format_sparsity(results, args.sparsity))
    print(f"load avg at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
