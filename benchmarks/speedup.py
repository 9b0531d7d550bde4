"""What pruning buys at inference: measured speed-up of pruned models over dense, side by side.

For each model and sparsity it times, with ``tune_prune.speed`` (the code every trial
uses on its final model: warm-up, interleaved rounds, medians):
- unstructured: global magnitude masks, run on dense kernels;
- unstructured, CSR export: Linear layers with >= 50 % zeros stored as CSR;
- structured: channels removed with ``ChannelPruner`` at the same nominal ratio (a
  fraction of channels, so it removes more parameters: both are printed).

Weights are random (pruning patterns from random weights; speed does not depend on
accuracy). Figures are latency at batch 1 and throughput at ``--batch-size``, as
dense time / pruned time (above 1 = faster).

    python benchmarks/speedup.py [--device cuda] [--sparsities 0.5 0.8 0.9 0.95 0.98]
        [--models lenet_300_100:1x28x28 small_cnn:1x28x28 resnet20:3x32x32] [--smoke-test]
"""

from __future__ import annotations

import argparse
import copy

import torch

from tune_prune.models import build_model
from tune_prune.pruning.masks import MaskSet
from tune_prune.pruning.structured import ChannelPruner, prunable_count
from tune_prune.speed import speedup_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["lenet_300_100:1x28x28", "small_cnn:1x28x28", "resnet20:3x32x32"])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args()
    if args.smoke_test:
        args.models, args.sparsities, args.batch_size, args.repeats = ["mlp:1x8x8"], [0.9], 32, 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"torch {torch.__version__} on {name}; batch-1 latency and batch-{args.batch_size} throughput, "
          f"median of {args.repeats} interleaved rounds; speed-up = dense time / pruned time")
    head = (f"{'model':<14}{'sparsity':>9} | {'unstructured':>12} {'lat':>6} {'thr':>6} | {'CSR lat':>8} "
            f"{'CSR thr':>8} | {'structured':>10} {'params -%':>9} {'lat':>6} {'thr':>6} | {'dense lat ms':>12}")
    print(head)
    print("-" * len(head))
    for entry in args.models:
        model_name, shape_s = entry.split(":")
        shape = tuple(int(d) for d in shape_s.split("x"))
        torch.manual_seed(0)
        dense = build_model(model_name, shape, 10).to(device).eval()
        for s in args.sparsities:
            un = copy.deepcopy(dense)
            MaskSet(un).prune_to(s)
            st = copy.deepcopy(dense)
            ChannelPruner(st, torch.zeros(1, *shape, device=device)).prune_to(s)
            removed = 1 - prunable_count(st) / prunable_count(dense)
            mu = speedup_metrics(dense, un, shape, device, structured=False, batch_size=args.batch_size,
                                 repeats=args.repeats)
            ms = speedup_metrics(dense, st, shape, device, structured=True, batch_size=args.batch_size,
                                 repeats=args.repeats)
            csr_l = f"{mu['csr_latency_speedup']:.2f}x" if "csr_latency_speedup" in mu else "-"
            csr_t = f"{mu['csr_throughput_speedup']:.2f}x" if "csr_throughput_speedup" in mu else "-"
            print(f"{model_name:<14}{s:>9g} | {'':>12} {mu['latency_speedup']:>5.2f}x {mu['throughput_speedup']:>5.2f}x "
                  f"| {csr_l:>8} {csr_t:>8} | {'':>10} {removed * 100:>8.1f}% {ms['latency_speedup']:>5.2f}x "
                  f"{ms['throughput_speedup']:>5.2f}x | {mu['dense_latency_ms']:>12.3f}")


if __name__ == "__main__":
    main()
