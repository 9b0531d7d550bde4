"""Importance criteria for unstructured pruning: (weights, gradient statistics) -> scores.

Lower scores are pruned first, compared globally across all prunable tensors.
Gradient-based criteria use statistics gathered from training-set batches right
before each prune event (``gradient_statistics`` in ``tune_prune.loop``):
``grad_mean`` is the mean gradient over the batches and ``grad_sq_mean`` the mean
of squared per-batch gradients.

- ``global_magnitude``: |w| (L1).
- ``l2_magnitude``: w^2. Per weight it ranks exactly like |w|; the two differ in
  structured mode, where a channel's score is the L1 or L2 norm of its weights.
- ``taylor``: |w * g|, the first-order Taylor estimate of the loss change when w is
  set to zero (Molchanov et al.'s criterion, per weight).
- ``hessian_diag``: 0.5 * w^2 * E[g^2], the Optimal-Brain-Damage saliency with the
  Hessian diagonal approximated by the empirical Fisher diagonal (mean squared
  gradient), which needs no second backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_gradients: bool
    score: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def _magnitude(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return w.detach().abs()


def _l2_magnitude(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return w.detach().pow(2)


def _taylor(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return (w.detach() * g).abs()


def _hessian_diag(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return 0.5 * w.detach().pow(2) * g2


CRITERIA: dict[str, Criterion] = {
    "global_magnitude": Criterion("global_magnitude", False, _magnitude),
    "l2_magnitude": Criterion("l2_magnitude", False, _l2_magnitude),
    "taylor": Criterion("taylor", True, _taylor),
    "hessian_diag": Criterion("hessian_diag", True, _hessian_diag),
}


def get(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion '{name}'; accepted: {', '.join(sorted(CRITERIA))}") from None


def scores(name: str, params: dict[str, torch.Tensor], grad_mean: dict[str, torch.Tensor] | None = None,
           grad_sq_mean: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Score every prunable tensor with criterion ``name``."""
    crit = get(name)
    if crit.needs_gradients and (grad_mean is None or grad_sq_mean is None):
        raise ValueError(f"criterion '{name}' needs gradient statistics")
    return {n: crit.score(p, grad_mean[n] if grad_mean else None, grad_sq_mean[n] if grad_sq_mean else None)
            for n, p in params.items()}
