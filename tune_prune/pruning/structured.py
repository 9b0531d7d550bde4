"""Structured (channel) pruning: physically smaller models, not masks.

Torch-Pruning's dependency graph (DepGraph) finds, for every Conv2d/Linear
output channel, everything that must go with it: the BatchNorm channel after
it, the input channel of the next layer, and the channels of every layer tied
to it through a residual addition (those form one group and are cut together,
with the same indices). We use the library for that graph and for the surgery,
and keep the schedule arithmetic here:

- Layer-wise: a prune event to ratio ``s`` leaves every group with
  ``max(1, round((1 - s) * n0))`` channels, ``n0`` being the group's ORIGINAL
  width (so ``s`` is cumulative over original channels, like unstructured
  sparsities are over original weights). The classifier's outputs are kept.
- Channel importance is the group's mean over its layers of a per-channel
  score: L2 (``l2_magnitude``) or L1 (``global_magnitude``) norm of the
  channel's weights, or the summed first-order Taylor (|w g|) or
  Hessian-diagonal (0.5 w^2 E[g^2]) saliency of its weights, from the same
  training-set gradient statistics the unstructured criteria use.
- What was reached is measured on the model: the fraction of prunable
  parameters and of multiply-accumulates removed, next to the nominal ratio.

A pruned model is rebuilt from its state dict by ``resize_to_state``: build the
dense architecture, then shrink every layer to the saved shapes.

timm Vision Transformers get ``structured_vit.ViTPruner``, a ChannelPruner that
cuts whole attention heads and MLP channels and never the embedding dimension.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.pruning.masks import PRUNABLE_TYPES, prunable_parameters, select_layers

# importance callables per criterion; normalizer=None: groups are cut one by one
# (layer-wise), so scores are only ever compared within a group.
_MAGNITUDE = {
    "l2_magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None),
    "global_magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
}
# Gradient criteria go through Torch-Pruning's Taylor importance, which sums
# |w * p.grad| per channel: with p.grad = mean gradient that is the Taylor
# criterion, and with p.grad = 0.5 * w * E[g^2] it is exactly 0.5 w^2 E[g^2].
_GRADIENT = ("taylor", "hessian_diag")
STRUCTURED_CRITERIA = tuple(sorted((*_MAGNITUDE, *_GRADIENT)))


def classifier_of(model: nn.Module) -> nn.Linear:
    """The last Linear layer in module order: the classifier, whose outputs are never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("structured pruning needs a model that ends in an nn.Linear classifier")
    return linears[-1]


def prunable_count(model: nn.Module) -> int:
    """Weights and biases of every Conv2d and Linear (what unstructured sparsity counts too)."""
    return sum(p.numel() for p in prunable_parameters(model).values())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers in one forward pass on ``example``.

    Conv: output elements x (in_channels / groups) x kernel area; Linear: output
    elements x in_features. Bias adds, BatchNorm, activations and pooling are not
    counted: they are a rounding error next to the weight layers.
    """
    total = 0

    def count(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * (module.in_channels // module.groups) * k
        else:
            total += out.numel() * module.in_features

    forward_with_hooks(model, [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)], count, example)
    return total // example.shape[0]


@torch.no_grad()
def forward_with_hooks(model: nn.Module, modules: list[nn.Module], hook: Callable[..., None],
                       example: torch.Tensor) -> None:
    """One eval-mode forward pass on ``example`` with ``hook`` on ``modules``; the hooks are removed
    and the model's training mode restored afterwards."""
    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    try:
        model.eval()(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


class ChannelPruner:
    """Prunes whole channels of ``model`` in place along a cumulative schedule.

    ``state`` (from ``state_dict``) restores a pruner for a model that was already
    pruned and rebuilt with ``resize_to_state``: it carries the original widths
    and the dense parameter and MAC counts the ratios refer to.
    """

    structured = True

    def __init__(self, model: nn.Module, example: torch.Tensor, state: dict[str, Any] | None = None,
                 include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.model = model
        self.example = example
        self.classifier = classifier_of(model)
        layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
        chosen = set(select_layers(layers, include, exclude))
        # layers the prune section leaves alone keep their output channels, like the classifier
        self.kept = [self.classifier] + [m for n, m in model.named_modules()
                                         if isinstance(m, PRUNABLE_TYPES) and n not in chosen]
        if state is None:
            state = {"original_widths": _widths(model), "dense_params": prunable_count(model),
                     "dense_macs": self._macs(), "ratio": 0.0}
        self.original_widths: dict[str, int] = dict(state["original_widths"])
        self.dense_params = int(state["dense_params"])
        self.dense_macs = int(state["dense_macs"])
        self.ratio = float(state["ratio"])

    # ---- the MaskSet-like surface the training loop uses ---------------------
    @property
    def params(self) -> dict[str, nn.Parameter]:
        """Every parameter (gradient statistics are gathered for all; the Taylor importance reads Conv/Linear)."""
        return dict(self.model.named_parameters())

    def apply_(self) -> None:
        """Nothing to re-apply: removed channels no longer exist."""

    def measured_sparsity(self) -> float:
        """The nominal channel ratio reached (the frontier's axis); see ``reached`` for measured ratios."""
        return self.ratio

    def reached(self) -> dict[str, float]:
        """Measured fractions removed: prunable parameters, MACs, and channels of the pruned layers."""
        widths = _widths(self.model)
        counted = self._channel_layers()
        now = sum(w for n, w in widths.items() if n in counted)
        before = sum(w for n, w in self.original_widths.items() if n in counted)
        return {
            "param_sparsity": 1.0 - prunable_count(self.model) / self.dense_params,
            "mac_sparsity": 1.0 - self._macs() / self.dense_macs,
            "channel_sparsity": 1.0 - now / before,
        }

    def _channel_layers(self) -> set[str]:
        """Layers whose output channels ``channel_sparsity`` counts: all but the classifier."""
        clf = self._name_of(self.classifier)
        return {n for n in self.original_widths if n != clf}

    def _macs(self) -> int:
        return count_macs(self.model, self.example)

    def layer_report(self) -> dict[str, dict[str, float]]:
        """Per Conv2d/Linear layer: its parameters now, and the fraction of its output channels removed."""
        widths = _widths(self.model)
        modules = dict(self.model.named_modules())
        return {n: {"params": sum(p.numel() for p in modules[n].parameters(recurse=False)),
                    "channels": w, "original_channels": self.original_widths.get(n, w),
                    "sparsity": 1.0 - w / self.original_widths.get(n, w)}
                for n, w in widths.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"original_widths": dict(self.original_widths), "dense_params": self.dense_params,
                "dense_macs": self.dense_macs, "ratio": self.ratio}

    # ---- pruning --------------------------------------------------------------
    def _name_of(self, module: nn.Module) -> str:
        for name, m in self.model.named_modules():
            if m is module:
                return name
        raise KeyError("module not in model")

    @torch.no_grad()
    def prune_to(self, ratio: float, criterion: str = "l2_magnitude",
                 grad_mean: dict[str, torch.Tensor] | None = None,
                 grad_sq_mean: dict[str, torch.Tensor] | None = None) -> int:
        """Cut every group down to round((1 - ratio) * original width) channels; return channels removed.

        Scores are computed for all groups first, then the cuts are made, so the
        result does not depend on the order groups are visited in.
        """
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if criterion not in STRUCTURED_CRITERIA:
            raise ValueError(f"unknown criterion '{criterion}'; accepted: {', '.join(STRUCTURED_CRITERIA)}")
        if criterion in _GRADIENT and (grad_mean is None or grad_sq_mean is None):
            raise ValueError(f"criterion '{criterion}' needs gradient statistics")
        was_training = self.model.training
        self.model.eval()  # tracing runs a forward pass: keep BatchNorm's running statistics as they are
        with torch.enable_grad():
            graph = self._dependency_graph()
        if criterion in _GRADIENT:
            importance = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
            for name, p in self.model.named_parameters():
                p.grad = grad_mean[name].clone() if criterion == "taylor" else 0.5 * p.detach() * grad_sq_mean[name]
        else:
            importance = _MAGNITUDE[criterion]()

        cuts = self._cuts(graph, importance, ratio)
        removed = 0
        for root, handler, drop in cuts:
            graph.get_pruning_group(root, handler, drop).prune()
            removed += len(drop)
        self._after_cuts()
        if criterion in _GRADIENT:
            self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        self.ratio = max(self.ratio, ratio)
        return removed

    def _dependency_graph(self) -> tp.DependencyGraph:
        return tp.DependencyGraph().build_dependency(self.model, example_inputs=self.example)

    def _keep(self, original: int, ratio: float) -> int:
        """What a unit of ``original`` channels (or heads) keeps at ``ratio``: at least one."""
        return max(1, round((1.0 - ratio) * original))

    def _cuts(self, graph: tp.DependencyGraph, importance: Any,
              ratio: float) -> list[tuple[nn.Module, Any, list[int]]]:
        """(root layer, pruning function, indices to drop) for every group that is wider than ``ratio`` allows."""
        names = {m: n for n, m in self.model.named_modules()}
        cuts = []
        for group in graph.get_all_groups(ignored_layers=self.kept, root_module_types=PRUNABLE_TYPES):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
            keep = self._keep(self.original_widths[names[root]], ratio)
            if width <= keep:
                continue
            scores = importance(group)
            drop = torch.sort(scores.float().cpu(), stable=True).indices[: width - keep].tolist()
            cuts.append((root, handler, sorted(drop)))
        return cuts

    def _after_cuts(self) -> None:
        """What a pruned model needs beyond new tensor shapes (nothing for convolutional networks)."""


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink ``model``'s Conv2d, Linear, BatchNorm2d and LayerNorm layers to the shapes in ``state``, in place.

    The tensors are left uninitialised; load ``state`` next. Only these layer
    types may differ (our models, and the timm ViTs structured pruning handles,
    hold prunable parameters in nothing else). Attention layers whose heads were
    pruned get their head count back from their qkv layer's shape.
    """
    from tune_prune.pruning.structured_vit import sync_heads  # it builds on this module

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if not isinstance(module, (*PRUNABLE_TYPES, nn.BatchNorm2d, nn.LayerNorm)):
            continue
        for attr, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + attr)
            if saved is None or saved.shape == tensor.shape:
                continue
            fresh = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                setattr(module, attr, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
            else:
                setattr(module, attr, fresh)
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:  # without affine weights nothing was saved, so nothing can differ
                module.normalized_shape = tuple(module.weight.shape)
        else:
            module.num_features = module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0]
    sync_heads(model)
    return model
