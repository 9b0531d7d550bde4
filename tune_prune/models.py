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


def import_timm():
    """timm, imported after torchvision's CPU shim (timm imports torchvision at import time)."""
    from tune_prune._torchvision import import_torchvision

    import_torchvision()
    import timm

    return timm


# --------------------------------------------------------------------------- model sources

#: Normalisation the ImageNet-trained library weights expect (torchvision's and most of timm's).
IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def import_python_builder(target: str) -> Callable[..., nn.Module]:
    """``module:function`` -> the function. The working directory is importable, as for ``python -m``.

    Raises ValueError naming model.name when the module or the function cannot be found.
    """
    import importlib
    import os
    import sys

    module_name, _, fn_name = target.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        # Ray workers and the `tune-prune` script do not put the working directory on
        # the path by themselves; `python -m` does. Same rule everywhere.
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model.name: cannot import {module_name!r} ({exc}); it must be importable from the "
                         f"working directory ({cwd}) or an installed package") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"model.name: {module_name} has no function {fn_name!r}")
    return fn


def _replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` a fresh classifier (its last nn.Linear) with ``num_classes`` outputs, if it differs."""
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError("model: has no nn.Linear classifier whose outputs could be set to the dataset's classes")
    name, head = heads[-1]
    if head.out_features != num_classes:
        model.set_submodule(name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return model


def _library_error(what: str, exc: Exception) -> RuntimeError:
    return RuntimeError(f"{what}: could not fetch the library weights ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}). Where there is no internet, download them once "
                        "elsewhere and give the file as model.checkpoint instead")


def build(spec, in_shape: tuple[int, int, int], num_classes: int, *, weights: bool = False) -> nn.Module:
    """Build the network a ModelSpec describes, for ``num_classes`` outputs.

    ``weights=False`` gives the architecture with a random init (what a trial then
    loads its dense or pruned state into); ``weights=True`` gives the starting point of
    the dense model: the library weights (head replaced when the classes differ) or
    the checkpoint, loaded strictly.
    """
    source, opts = spec.source, spec.kwargs()
    input_size = opts.pop("input_size", None)
    if source == "builtin":
        model = build_model(spec.name, in_shape, num_classes, **opts)
    elif source == "torchvision":
        from tune_prune._torchvision import import_torchvision

        tv = import_torchvision()
        kwargs = dict(opts.get("kwargs", {}))
        if weights and opts.get("weights"):
            try:
                model = tv.models.get_model(spec.name, weights=opts["weights"], **kwargs)
            except (OSError, RuntimeError) as exc:  # URLError is an OSError
                raise _library_error(f"torchvision {spec.name} {opts['weights']}", exc) from None
            model = _replace_head(model, num_classes)
        else:
            model = tv.models.get_model(spec.name, weights=None, num_classes=num_classes, **kwargs)
    elif source == "timm":
        timm = import_timm()
        pretrained = bool(weights and opts.get("pretrained"))
        try:
            model = timm.create_model(spec.name, pretrained=pretrained, num_classes=num_classes,
                                      **opts.get("kwargs", {}))
        except (OSError, RuntimeError) as exc:
            if not pretrained:
                raise
            raise _library_error(f"timm {spec.name} pretrained", exc) from None
    elif source == "huggingface":
        model = _causal_lm(spec, opts, num_classes, weights)
    elif source == "python":
        fn = import_python_builder(spec.name)
        kwargs = dict(opts.get("kwargs", {}))
        if "num_classes" in inspect.signature(fn).parameters:
            kwargs.setdefault("num_classes", num_classes)
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model.name: {spec.name} returned {type(model).__name__}, not an nn.Module")
    else:
        raise ValueError(f"model.source: unknown source {source!r}")
    if weights and spec.checkpoint is not None:
        model.load_state_dict(load_checkpoint(spec.checkpoint, spec.checkpoint_key))
    if input_size is not None:
        # a pre-hook, not a wrapper module: layer names (prune patterns, checkpoints) stay the model's own
        model.register_forward_pre_hook(ResizeInput(int(input_size)))
    return model


def _causal_lm(spec, opts: dict, vocab_size: int, weights: bool) -> nn.Module:
    """A Hugging Face causal LM: its hub or directory weights (``weights``), else the same
    architecture freshly initialised (what a trial loads its dense or pruned state into)."""
    from tune_prune.lm import build_causal_lm, causal_lm_config

    config = opts.get("config")
    if config is not None:
        cfg = dict(config)
        cfg.setdefault("vocab_size", vocab_size)
        # a trained tokenizer's end-of-text token is id 0 (tune_prune.text.SPECIAL_TOKENS); configs
        # otherwise default to GPT-2's 50256, outside a small vocabulary
        cfg.setdefault("bos_token_id", 0)
        cfg.setdefault("eos_token_id", 0)
        if cfg["vocab_size"] != vocab_size:
            raise ValueError(f"model.config: vocab_size {cfg['vocab_size']} but the tokenizer has {vocab_size} tokens")
        return build_causal_lm(config=cfg, model_type=opts.get("model_type", "gpt_neo"))
    revision = opts.get("revision")
    if weights:
        try:
            model = build_causal_lm(spec.name, revision=revision)
        except OSError as exc:
            raise _library_error(f"huggingface {spec.name}", exc) from None
    else:
        model = build_causal_lm(config=causal_lm_config(spec.name, revision), model_type=None)
    if model.get_output_embeddings() is not None and model.get_output_embeddings().out_features < vocab_size:
        raise ValueError(f"model.name: {spec.name} predicts {model.get_output_embeddings().out_features} tokens "
                         f"but the tokenizer has {vocab_size}; give the model's own tokenizer as dataset.tokenizer")
    return model


class ResizeInput:
    """Forward pre-hook: bilinear resize of the input batch to ``size`` x ``size`` (picklable, for torch.save)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return args
        return (F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False), *args[1:])


def load_checkpoint(path: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file: the file itself, or the dict under ``key``.

    Without ``key`` a dict holding exactly one of state_dict / model / model_state_dict
    / state is unwrapped; a DataParallel "module." prefix on every key is dropped.
    Only tensors and plain containers are unpickled (weights_only).
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"model.checkpoint: {path} holds a {type(obj).__name__}, not a state_dict")
    if key is not None:
        if key not in obj:
            raise ValueError(f"model.checkpoint_key: {key!r} is not in {path}; its keys: "
                             f"{', '.join(map(str, list(obj)[:12]))}")
        obj = obj[key]
    elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = [k for k in ("state_dict", "model", "model_state_dict", "state") if isinstance(obj.get(k), dict)]
        if len(found) != 1:
            raise ValueError(f"model.checkpoint_key: {path} is a dict of {', '.join(map(str, list(obj)[:12]))}; "
                             "name the key that holds the state_dict")
        obj = obj[found[0]]
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def checkpoint_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit ``model`` (first few mismatching tensors), or None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {list(state[k].shape)} in the checkpoint but {list(own[k].shape)} in the model"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:3])}"
                     + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
    if shapes:
        parts.append("; ".join(shapes[:2]) + (f" and {len(shapes) - 2} more" if len(shapes) > 2 else ""))
    return "; ".join(parts) or None


def preferred_normalize(spec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the model's inputs should be normalised with, or None for the data's own statistics."""
    norm = spec.normalize
    if norm == "data":
        return None
    if norm == "imagenet":
        return IMAGENET_NORMALIZE
    if norm is not None:
        d = dict(norm)
        return tuple(d["mean"]), tuple(d["std"])
    opts = spec.kwargs()
    if spec.source == "torchvision" and opts.get("weights"):
        from tune_prune._torchvision import import_torchvision

        tv = import_torchvision()
        t = tv.models.get_weight(f"{tv.models.get_model_weights(spec.name).__name__}.{opts['weights']}").transforms()
        return tuple(t.mean), tuple(t.std)
    if spec.source == "timm" and opts.get("pretrained"):
        cfg = import_timm().models.get_pretrained_cfg(spec.name)
        if cfg is not None and cfg.mean is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return None
