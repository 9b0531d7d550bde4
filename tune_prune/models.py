"""Model registry: name -> constructor ``(in_shape, num_classes, **kwargs) -> nn.Module``.

Every model accepts any (C, H, W) input from 8x8 digits upward (convolutional
models end in an adaptive average pool). Only nn.Conv2d, nn.Linear and
nn.BatchNorm2d carry parameters, because the pruning code ranks the weights
and biases of Conv2d and Linear layers and must see every prunable tensor.
Convolutions followed by BatchNorm have no bias: BN's shift makes it redundant.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from tune_prune.fields import PositiveInt, Widths
from tune_prune.registry import Registry

__all__ = ["MODELS", "BasicBlock", "ResNet", "build_model"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _model_options(builder: Callable[..., nn.Module]) -> list[str]:
    params = list(inspect.signature(builder).parameters.values())[2:]  # after in_shape, num_classes
    return [p.name for p in params]


def _positive_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{field}: must be an int >= 1, got {value!r}")
    return int(value)


def build_model(
    name: str, in_shape: tuple[int, int, int], num_classes: int, **kwargs: object
) -> nn.Module:
    """Build registered model ``name`` for inputs of shape (C, H, W) and ``num_classes`` outputs.

    ``kwargs`` are the model's own options (e.g. ``hidden`` for mlp, ``width``
    for the CNNs); an unknown one raises ValueError listing the accepted ones.
    """
    builder = MODELS.get(name)
    if (
        not isinstance(in_shape, Sequence)
        or len(in_shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in in_shape)
    ):
        raise ValueError(f"model.in_shape: must be three ints >= 1 (C, H, W), got {in_shape!r}")
    num_classes = _positive_int(num_classes, "model.num_classes")
    accepted = _model_options(builder)
    for key in sorted(kwargs):
        if key not in accepted:
            raise ValueError(
                f"model.{key}: not an option of model {name!r}; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
    return builder(tuple(int(d) for d in in_shape), num_classes, **kwargs)


# --------------------------------------------------------------------------- fully connected


@MODELS.register
def mlp(
    in_shape: tuple[int, int, int], num_classes: int, hidden: Widths = (256, 128)
) -> nn.Module:
    """Flatten -> Linear+ReLU for each width in ``hidden`` -> Linear classifier."""
    widths = [hidden] if isinstance(hidden, Integral) and not isinstance(hidden, bool) else hidden
    if not isinstance(widths, Sequence) or isinstance(widths, str):
        raise ValueError(f"model.hidden: must be a list of ints >= 1, got {hidden!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    prev = math.prod(in_shape)
    for width in widths:
        width = _positive_int(width, "model.hidden")
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@MODELS.register
def lenet_300_100(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """LeCun et al.'s fully connected LeNet-300-100: flatten -> 300 -> 100 -> classes, ReLU."""
    return mlp(in_shape, num_classes, hidden=(300, 100))


# --------------------------------------------------------------------------- convolutional


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


@MODELS.register
def small_cnn(in_shape: tuple[int, int, int], num_classes: int, width: PositiveInt = 32) -> nn.Module:
    """Three stride-2 3x3 conv+BN+ReLU (width, 2*width, 2*width), 2x2 adaptive avg pool, linear.

    Strided convolutions rather than max-pools, and a 2x2 rather than 1x1 final
    pool: on 2 CPU threads an epoch of 5k 28x28 images takes ~0.6 s (max-pool
    versions 1-2 s), and keeping a little spatial layout before the classifier
    gained several points on Fashion-MNIST over global pooling.
    """
    w = _positive_int(width, "model.width")
    return nn.Sequential(
        *_conv_bn_relu(in_shape[0], w, 2),
        *_conv_bn_relu(w, 2 * w, 2),
        *_conv_bn_relu(2 * w, 2 * w, 2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * 4, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN plus a shortcut: identity, or 1x1 conv+BN (option B) if the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, BasicBlock stages, avg pool, linear.

    Stage ``i`` has ``widths[i]`` channels and ``blocks[i]`` blocks; every stage
    after the first halves the resolution in its first block.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: Sequence[int]
    ):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0], 1))
        stages = []
        c_in = widths[0]
        for i, (c_out, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(c_in, c_out, stride)] + [
                BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)
            ]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register
def resnet20(in_shape: tuple[int, int, int], num_classes: int, width: PositiveInt = 16) -> nn.Module:
    """He et al.'s CIFAR ResNet-20: 3 stages x 3 blocks of 16/32/64 (x width/16), ~0.27M params."""
    w = _positive_int(width, "model.width")
    return ResNet(in_shape[0], num_classes, widths=(w, 2 * w, 4 * w), blocks=(3, 3, 3))


@MODELS.register
def resnet18(in_shape: tuple[int, int, int], num_classes: int, width: PositiveInt = 64) -> nn.Module:
    """CIFAR ResNet-18: 4 stages x 2 blocks of 64/128/256/512 (x width/64), ~11.2M params."""
    w = _positive_int(width, "model.width")
    return ResNet(in_shape[0], num_classes, widths=(w, 2 * w, 4 * w, 8 * w), blocks=(2, 2, 2, 2))
