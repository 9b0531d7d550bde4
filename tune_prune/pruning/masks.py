"""Unstructured masks over the prunable parameters of a model.

Prunable parameters are the weights AND biases of every ``nn.Conv2d`` and
``nn.Linear`` (classifier included) unless glob patterns on module names narrow
them; BatchNorm, embeddings and everything else is left dense. All sparsities are fractions of the ORIGINAL prunable count ``W``
(``torch.nn.utils.prune``'s float ``amount`` is relative to what remains, a
classic source of wrong schedules; we never use it).

Exactness through training: after every optimizer step call ``apply_()``; it
multiplies every masked tensor by its mask in one fused ``_foreach_mul_``. A
pruned weight is therefore exactly zero at every forward pass whatever momentum
or weight decay do to the optimizer state (and a fresh optimizer is built per
prune event anyway).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

#: score(param) -> tensor of the same shape; lower scores are pruned first.
Criterion = Callable[[torch.Tensor], torch.Tensor]


def global_magnitude(param: torch.Tensor) -> torch.Tensor:
    """L1 magnitude, compared globally across all prunable tensors."""
    return param.detach().abs()


CRITERIA: dict[str, Criterion] = {"global_magnitude": global_magnitude}


def select_layers(names: Iterable[str], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    """The module names a prune section selects: matching an include glob (all when none), and no exclude glob."""
    include, exclude = tuple(include), tuple(exclude)
    return [n for n in names
            if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
            and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


def prunable_parameters(model: nn.Module, include: Iterable[str] = (),
                        exclude: Iterable[str] = (), weights_only: bool = False) -> dict[str, nn.Parameter]:
    """Weights and biases of every Conv2d/Linear, keyed by their state-dict name, in module order.

    ``include``/``exclude`` are glob patterns on module names (``layer1.*``, ``fc``) that
    narrow the layers; by default every Conv2d and Linear is prunable, classifier included.
    ``weights_only`` leaves biases dense (as language-model pruning does: Wanda, SparseGPT).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    found: dict[str, nn.Parameter] = {}
    for module_name in select_layers(layers, include, exclude):
        for pname, param in layers[module_name].named_parameters(recurse=False):
            if weights_only and pname != "weight":
                continue
            found[f"{module_name}.{pname}" if module_name else pname] = param
    return found


class MaskSet:
    """Keep-masks (1 = kept, 0 = pruned) for the prunable parameters of one model."""

    def __init__(self, model: nn.Module, include: Iterable[str] = (), exclude: Iterable[str] = (),
                 weights_only: bool = False) -> None:
        self.params = prunable_parameters(model, include, exclude, weights_only)
        if not self.params:
            raise ValueError("model has no Conv2d or Linear parameters to prune (after prune.include/exclude)")
        self.masks: dict[str, torch.Tensor] = {
            # same layout as the parameter (channels_last too), so the fused multiply stays on its fast path
            name: torch.ones_like(p).detach()
            for name, p in self.params.items()
        }
        self.total = sum(p.numel() for p in self.params.values())
        self._refresh_views()

    def _refresh_views(self) -> None:
        # foreach kernels want plain lists; keep them in one fixed order.
        self._param_list = [p.data for p in self.params.values()]
        self._mask_list = [self.masks[n] for n in self.params]

    @property
    def pruned(self) -> int:
        """Number of prunable entries currently masked out."""
        return int(sum((m == 0).sum().item() for m in self.masks.values()))

    @property
    def sparsity(self) -> float:
        """Masked-out fraction of the original prunable count."""
        return self.pruned / self.total

    @torch.no_grad()
    def prune_to(self, sparsity: float, criterion: Criterion = global_magnitude,
                 scores: dict[str, torch.Tensor] | None = None) -> int:
        """Grow the pruned set to round(sparsity * W) entries; return how many were newly pruned.

        ``scores`` (one tensor per prunable parameter, e.g. from ``criteria.scores``)
        replaces ``criterion`` when given.

        Entries already pruned stay pruned and are not re-ranked: they are given a
        score of -inf so they always fill the bottom of the global ranking, and the
        remaining quota goes to the lowest-scoring live entries. Ties are broken by
        position (stable sort), so the result is deterministic.
        """
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        goal = round(sparsity * self.total)
        already = self.pruned
        if goal <= already:
            return 0
        scores = torch.cat(
            [
                torch.where(self.masks[n] > 0, (scores[n] if scores is not None else criterion(p)).float(),
                            float("-inf")).flatten()
                for n, p in self.params.items()
            ]
        )
        order = torch.sort(scores, stable=True).indices[:goal]
        flat = torch.ones_like(scores)
        flat[order] = 0.0
        offset = 0
        for name, mask in self.masks.items():
            n = mask.numel()
            mask.copy_(flat[offset : offset + n].view_as(mask))
            offset += n
        self.apply_()
        return goal - already

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Take ``masks`` (one per prunable tensor, e.g. from a layer-wise solver) and apply them.

        They must keep everything pruned pruned: a mask that would revive a weight is refused."""
        if set(masks) != set(self.masks):
            raise ValueError("masks do not match the model's prunable parameters")
        for name, mask in self.masks.items():
            new = masks[name].to(mask.device, mask.dtype)
            if bool(((mask == 0) & (new != 0)).any()):
                raise ValueError(f"{name}: the new mask revives pruned weights")
            mask.copy_(new)
        self.apply_()

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned entry in place (call after each optimizer step)."""
        torch._foreach_mul_(self._param_list, self._mask_list)

    def measured_sparsity(self) -> float:
        """Fraction of prunable entries that are exactly zero in the model right now."""
        zeros = sum(int((p == 0).sum().item()) for p in self.params.values())
        return zeros / self.total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.bool().cpu() for name, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.masks):
            raise ValueError("mask state does not match the model's prunable parameters")
        for name, mask in self.masks.items():
            mask.copy_(state[name].to(mask.device, mask.dtype))
        self.apply_()

    def layer_sparsities(self) -> dict[str, float]:
        """Per-tensor pruned fraction, for logging where global ranking put the cuts."""
        return {n: float((m == 0).float().mean().item()) for n, m in self.masks.items()}

    def layer_report(self) -> dict[str, dict[str, float]]:
        """Per prunable layer (module name): its prunable entries and the fraction pruned."""
        out: dict[str, dict[str, float]] = {}
        for name, mask in self.masks.items():
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            row = out.setdefault(layer, {"params": 0, "pruned": 0})
            row["params"] += mask.numel()
            row["pruned"] += int((mask == 0).sum().item())
        return {k: {"params": v["params"], "sparsity": v["pruned"] / v["params"]} for k, v in out.items()}
