"""Measured inference speed of a pruned model against its dense original.

Unstructured zeros buy nothing on dense kernels; channel pruning does; a sparse
storage format may. So we measure rather than estimate: batch-1 latency and
large-batch throughput, on the trial's own device, for the dense model, the
pruned model and (unstructured) the pruned model exported to a sparse format.

Protocol: inference mode, eval mode, random inputs of the model's shape, a few
warm-up calls per model and input, then ``repeats`` rounds in which every
variant is timed once per input in turn, starting from a different variant each
round (interleaving spreads any drift of the machine over all variants alike);
the median of the rounds is reported. A sample is as many back-to-back calls as
last at least 2 ms, so tiny models are not timed at the timer's resolution. CUDA
timings synchronise before and after each sample.

Sparse export: every Linear whose weight is at least ``CSR_MIN_SPARSITY`` zeros
is stored as a CSR matrix and multiplied with ``torch.sparse.mm``; other layers
stay dense. That is the format CPU kernels gain from at high sparsity. Convolutions
have no sparse kernel in torch and stay dense. (On Ampere-or-newer GPUs, 2:4
semi-structured sparsity would be the format, but it needs 2:4 masks, which the
global unstructured ranking does not produce.)
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

CSR_MIN_SPARSITY = 0.5


@dataclass(frozen=True)
class Timing:
    latency_ms: float  # median seconds per batch-1 forward, in ms
    throughput: float  # images per second at the large batch (median round)


class CsrLinear(nn.Module):
    """A Linear layer whose weight is stored as a CSR sparse matrix (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and measured here
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def to_csr(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with sparse-enough Linear layers in CSR; returns it and how many were converted."""
    out = copy.deepcopy(model).eval()
    converted = 0
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and float((child.weight == 0).float().mean()) >= CSR_MIN_SPARSITY:
                setattr(module, child_name, CsrLinear(child))
                converted += 1
    return out, converted


#: a timed sample lasts at least this long: a single call of a tiny model takes
#: tens of microseconds, where timer and cache effects would decide the ratio
MIN_SAMPLE_SECONDS = 2e-3


def _sample_seconds(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    if cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / calls


@torch.inference_mode()
def compare(models: dict[str, nn.Module], in_shape: tuple[int, ...], device: torch.device,
            batch_size: int = 256, warmup: int = 3, repeats: int = 15, seed: int = 0,
            vocab_size: int | None = None) -> dict[str, Timing]:
    """Latency (batch 1) and throughput (``batch_size``) of each model, measured interleaved.

    Each sample is the mean of enough back-to-back calls to last MIN_SAMPLE_SECONDS
    (the count is set once per input from the slowest model's warm-up, and used for
    every model alike). Round r starts with variant r mod len(models), so no variant
    always runs first (or always follows the same neighbour).
    """
    gen = torch.Generator().manual_seed(seed)
    if vocab_size is None:
        inputs = {"one": torch.randn(1, *in_shape, generator=gen).to(device),
                  "big": torch.randn(batch_size, *in_shape, generator=gen).to(device)}
    else:  # a language model: random token blocks of its block size
        inputs = {"one": torch.randint(0, vocab_size, (1, *in_shape), generator=gen).to(device),
                  "big": torch.randint(0, vocab_size, (batch_size, *in_shape), generator=gen).to(device)}
    calls = {}
    for key, x in inputs.items():
        slowest = 0.0
        for m in models.values():
            m.eval()
            for _ in range(max(0, warmup - 1)):
                m(x)
            slowest = max(slowest, _sample_seconds(m, x, 1))  # the last warm-up call, timed
        calls[key] = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(slowest, 1e-9)))
    names = list(models)
    samples: dict[str, dict[str, list[float]]] = {key: {k: [] for k in names} for key in inputs}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for key, x in inputs.items():
                samples[key][name].append(_sample_seconds(models[name], x, calls[key]))
    return {k: Timing(latency_ms=statistics.median(samples["one"][k]) * 1e3,
                      throughput=batch_size / statistics.median(samples["big"][k])) for k in names}


def speedup_metrics(dense: nn.Module, pruned: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    structured: bool, batch_size: int = 256, warmup: int = 3, repeats: int = 15,
                    vocab_size: int | None = None) -> dict[str, float]:
    """The metrics a trial logs: dense and pruned timings, their ratios, and the CSR export's if it applies."""
    models = {"dense": dense, "pruned": pruned}
    if not structured:
        csr, converted = to_csr(pruned)
        if converted:
            models["csr"] = csr
    t = compare(models, in_shape, device, batch_size, warmup, repeats, vocab_size=vocab_size)
    out = {
        "dense_latency_ms": t["dense"].latency_ms,
        "dense_throughput": t["dense"].throughput,
        "latency_ms": t["pruned"].latency_ms,
        "throughput": t["pruned"].throughput,
        "latency_speedup": t["dense"].latency_ms / t["pruned"].latency_ms,
        "throughput_speedup": t["pruned"].throughput / t["dense"].throughput,
    }
    if "csr" in t:
        out.update({
            "csr_latency_ms": t["csr"].latency_ms,
            "csr_throughput": t["csr"].throughput,
            "csr_latency_speedup": t["dense"].latency_ms / t["csr"].latency_ms,
            "csr_throughput_speedup": t["csr"].throughput / t["dense"].throughput,
        })
    return out
