"""Seconds per masked fine-tuning epoch, per model, on a device: the figure a spec's
``budget.epoch_seconds`` (sweep-wide accelerator-hour budgets) needs.

It times ``tune_prune.loop.train_epoch`` exactly as trials run it (resident uint8
data, on-device normalisation and crop/flip augmentation, SGD, masks re-applied after
every step) on synthetic CIFAR-shaped data, at 90 % sparsity, and prints images/s
and s/epoch per model side by side. Synthetic pixels: step time does not depend on
what the images show.

    python benchmarks/epoch_time.py [--device cuda] [--images 50000] [--models resnet18,resnet20,small_cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tune_prune.data import DataBundle
from tune_prune.loop import train_epoch
from tune_prune.models import build_model
from tune_prune.pruning.masks import MaskSet


def synthetic(n: int, device: torch.device) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    small_x, small_y = x[:256], y[:256]
    return DataBundle("synthetic", x, y, small_x, small_y, small_x, small_y, 10,
                      (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment="crop_flip").to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="small_cnn,resnet20,resnet18")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (median reported) after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args()
    if args.smoke_test:
        args.models, args.images, args.epochs = "small_cnn", 512, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic(args.images, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"torch {torch.__version__} on {name}; {args.images} images 3x32x32, batch {args.batch_size}, "
          f"sparsity 0.9, median of {args.epochs} epochs after 1 warm-up")
    print(f"{'model':<10} {'params':>10} {'s/epoch':>9} {'images/s':>10}")
    for model_name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(model_name, (3, 32, 32), 10).to(device)
        masks = MaskSet(model)
        masks.prune_to(0.9)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator(device=device).manual_seed(0)
        times = []
        for i in range(args.epochs + 1):
            sync(device)
            t0 = time.perf_counter()
            train_epoch(model, opt, data, args.batch_size, gen, masks)
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        params = sum(q.numel() for q in model.parameters())
        print(f"{model_name:<10} {params:>10,} {med:>9.3f} {args.images / med:>10.0f}")


if __name__ == "__main__":
    main()
