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
- ``wanda``: |w_ij| * ||x_j||_2 (Sun et al., "A Simple and Effective Pruning Approach for
  Large Language Models"): a weight's magnitude times the L2 norm of the input feature
  it multiplies, over calibration tokens, compared WITHIN each output row rather than
  globally. It needs activation statistics (``activation_sq_sums``), gathered from
  calibration batches before each prune event like the gradient statistics. To keep
  one global ranking (and MaskSet's "already pruned stays pruned"), each row's scores
  are replaced by their normalised rank within the row, (rank + 0.5) / row length:
  the global cut at sparsity s then takes the same share, s, of every row.
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
    needs_activations: bool = False  # wanda: per-input-feature sums of squared activations
    #: sparsegpt: not a ranking but a layer-wise solver that also updates the kept weights
    #: (tune_prune.pruning.sparsegpt), fed with each Linear's input Hessian from calibration batches
    solver: bool = False


def _magnitude(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return w.detach().abs()


def _l2_magnitude(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return w.detach().pow(2)


def _taylor(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return (w.detach() * g).abs()


def _hessian_diag(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    return 0.5 * w.detach().pow(2) * g2


def row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each entry's normalised rank within its row (last dimension), (rank + 0.5) / row length, in (0, 1).

    Ties keep position order (stable sort), as MaskSet's global ranking does.
    """
    flat = scores.reshape(-1, scores.shape[-1]) if scores.dim() > 1 else scores.reshape(1, -1)
    order = torch.sort(flat.float(), dim=1, stable=True).indices
    ranks = torch.empty_like(order, dtype=torch.float32)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], dtype=torch.float32, device=flat.device).expand_as(order))
    return ((ranks + 0.5) / flat.shape[1]).view_as(scores)


def wanda_scores(w: torch.Tensor, input_sq_sum: torch.Tensor | None) -> torch.Tensor:
    """Wanda's |w_ij| * ||x_j|| as per-row normalised ranks (a 1-D bias is one row of |b|)."""
    w = w.detach()
    if w.dim() > 2:  # a convolution: Wanda has no activation rule for it; magnitude within each filter
        return row_ranks(w.abs().reshape(w.shape[0], -1)).view_as(w)
    if w.dim() == 1 or input_sq_sum is None:
        return row_ranks(w.abs())
    return row_ranks(w.abs() * input_sq_sum.to(w.device, torch.float32).sqrt().view(1, -1))


def _wanda(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    raise ValueError("criterion 'wanda' needs activation statistics: use criteria.scores(..., activations=...)")


def _sparsegpt(w: torch.Tensor, g: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    raise ValueError("criterion 'sparsegpt' is a layer-wise solver, not a ranking: use pruning.sparsegpt.prune_model_")


CRITERIA: dict[str, Criterion] = {
    "global_magnitude": Criterion("global_magnitude", False, _magnitude),
    "l2_magnitude": Criterion("l2_magnitude", False, _l2_magnitude),
    "taylor": Criterion("taylor", True, _taylor),
    "hessian_diag": Criterion("hessian_diag", True, _hessian_diag),
    "wanda": Criterion("wanda", False, _wanda, needs_activations=True),
    "sparsegpt": Criterion("sparsegpt", False, _sparsegpt, solver=True),
}


def get(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion '{name}'; accepted: {', '.join(sorted(CRITERIA))}") from None


def scores(name: str, params: dict[str, torch.Tensor], grad_mean: dict[str, torch.Tensor] | None = None,
           grad_sq_mean: dict[str, torch.Tensor] | None = None,
           activations: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Score every prunable tensor with criterion ``name``.

    ``activations`` (wanda): per prunable WEIGHT name, the sum over calibration tokens of
    each input feature's squared activation (``activation_sq_sums``)."""
    crit = get(name)
    if crit.needs_gradients and (grad_mean is None or grad_sq_mean is None):
        raise ValueError(f"criterion '{name}' needs gradient statistics")
    if crit.needs_activations:
        if activations is None:
            raise ValueError(f"criterion '{name}' needs activation statistics from calibration batches")
        return {n: wanda_scores(p, activations.get(n)) for n, p in params.items()}
    return {n: crit.score(p, grad_mean[n] if grad_mean else None, grad_sq_mean[n] if grad_sq_mean else None)
            for n, p in params.items()}


@torch.no_grad()
def record_linear_inputs(model: torch.nn.Module, weights: dict[str, torch.Tensor], run_batches: Callable[[], None],
                         on_input: Callable[[str, torch.Tensor], None]) -> None:
    """Call ``on_input(weight name, inputs as (tokens, in_features))`` for the input of every Linear
    owning one of the 2-D ``weights`` (module name + ".weight"), at each forward pass while
    ``run_batches()`` runs the model. Other tensors are skipped; the hooks are removed even
    if ``run_batches`` raises."""
    modules = dict(model.named_modules())
    hooks = []
    for name, w in weights.items():
        mod = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
        if not isinstance(mod, torch.nn.Linear) or w.dim() != 2:
            continue

        def hook(_m, inputs, _out, key=name):
            on_input(key, inputs[0].detach().reshape(-1, inputs[0].shape[-1]))

        hooks.append(mod.register_forward_hook(hook))
    try:
        run_batches()
    finally:
        for h in hooks:
            h.remove()


def activation_sq_sums(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                       run_batches: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Per prunable Linear weight, the sum over every calibration token of each input feature's
    squared activation, recorded while ``run_batches()`` runs the model.

    Only 2-D (Linear) weights are covered; Wanda has no rule for convolutions.
    """
    sums: dict[str, torch.Tensor] = {}

    def add(key: str, x: torch.Tensor) -> None:
        acc = x.float().pow(2).sum(0)
        sums[key] = acc if key not in sums else sums[key] + acc

    record_linear_inputs(model, weights, run_batches, add)
    return sums
