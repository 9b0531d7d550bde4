"""SparseGPT's layer-wise solver (Frantar & Alistarh, "SparseGPT: Massive Language Models Can
Be Accurately Pruned in One-Shot", 2023), pure torch.

Each Linear layer is pruned on its own, so that its output on calibration inputs X changes as
little as possible: min ||W X - W' X||^2 over W' with the chosen sparsity pattern. The exact
problem is a separate least-squares fit per row with its own mask; SparseGPT approximates it
by sweeping the input columns left to right: when column j is decided, its pruned entries
are zeroed and the error they cause is spread over the columns j+1.. not yet decided, through
the inverse of the input Hessian H = X X^T / n restricted to those columns (the Optimal Brain
Surgeon update). All those restricted inverses come from one Cholesky factor: with
H^-1 = U^T U (U upper triangular), the inverse of the trailing block H[j:, j:] is
U[j:, j:]^T U[j:, j:], so its first row is U_jj * U[j, j:] and its first diagonal entry
U_jj^2, which is all that step j of the sweep needs.

Conventions (as in ``masks``): keep-masks, 1 = kept; sparsity is the fraction of the
ORIGINAL entries removed; a weight is (out_features x in_features), rows are outputs.

- ``input_hessians``: per Linear weight, H = mean over calibration tokens of x x^T.
- ``prune_layer_``: one layer, in place; returns its new keep-mask.
- ``prune_model_``: every prunable 2-D weight of a model; refuses anything else.
"""

from __future__ import annotations

from typing import Callable

import torch

from tune_prune.pruning.criteria import record_linear_inputs


@torch.no_grad()
def input_hessians(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                   run_batches: Callable[[], None], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Per prunable Linear weight (module name + ".weight"), the mean over every calibration
    token of x x^T, an (in_features x in_features) matrix in ``dtype``, recorded by forward
    hooks while ``run_batches()`` runs the model.

    Inputs of any rank are flattened to (tokens, in_features). Weights not owned by a Linear
    are skipped (``prune_model_`` refuses them with a message); so is a Linear that saw no
    token. The hooks are removed even if ``run_batches`` raises.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(key: str, x: torch.Tensor) -> None:
        x = x.to(dtype)
        xtx = x.T @ x
        sums[key] = xtx if key not in sums else sums[key] + xtx
        counts[key] = counts.get(key, 0) + x.shape[0]

    record_linear_inputs(model, weights, run_batches, add)
    return {k: s / counts[k] for k, s in sums.items() if counts[k] > 0}


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, so that H^-1 = U^T U."""
    h = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except torch.linalg.LinAlgError as exc:
        raise ValueError(f"SparseGPT: the input Hessian is not positive definite even with damp={damp}; "
                         "raise damp or gather more calibration tokens") from exc


def _row_lowest(saliency: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Per row, the ``quota[row]`` entries of lowest saliency (ties by column order)."""
    order = torch.sort(saliency, dim=1, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(saliency.shape[1], device=saliency.device).expand_as(order))
    return position < quota.view(-1, 1)


@torch.no_grad()
def prune_layer_(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, alive: torch.Tensor | None = None,
                 block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Prune one Linear weight (out x in) IN PLACE with SparseGPT; return its keep-mask.

    ``hessian`` is the (in x in) mean of x x^T over calibration inputs (``input_hessians``).
    Every row ends with exactly round(sparsity * in_features) pruned entries, the entries with
    ``alive == 0`` (pruned by an earlier event) among them: they stay zero and count toward
    the row's quota. The weights still kept are updated to make up for what was removed.

    Mask selection is adaptive, as in the paper: it is made per row within each block of
    ``block_size`` columns, just before the block is swept, from the OBS saliency
    w_j^2 / U_jj^2 of the weights as updated by the blocks before it. U_jj^2 = [H_F^-1]_jj is
    the diagonal of the inverse Hessian over the columns F = j.. not yet eliminated, i.e. the
    error of pruning w_j at the moment the sweep reaches it (the paper's w^2 / [H^-1]_jj^2, its
    H^-1 being this Cholesky factor). The count per row is fixed overall, not per block: at each
    block every row ranks ALL its columns not yet swept and takes its remaining quota of the
    lowest, dead entries first (ties by column order); the choices inside the block are final,
    the rest are re-ranked at the next block with the weights the sweep has updated by then. So
    a row may prune more in one block than another, and the count is exact: the dead entries
    still ahead never exceed the quota (checked up front), so each is chosen in its block, and
    the last block takes all that is left. With ``block_size >= in_features`` this is one
    selection over the whole row with the initial inverse; smaller blocks re-select more often.

    Dead input features (H_jj == 0) get H_jj = 1 and a zero weight column, as in the paper;
    their zero weights have the lowest saliency, so they are the first live entries pruned.
    ``damp`` adds damp * mean(diag H) to the diagonal. The sweep runs in float32 (the Hessian
    inverse in float64 on the CPU) and is cast back to the weight's dtype at the end; the
    pruned entries are exactly zero, so weight * mask == weight afterwards.
    """
    if weight.dim() != 2:
        raise ValueError(f"SparseGPT prunes 2-D Linear weights; got shape {tuple(weight.shape)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match the weight's {cols} input features")
    if alive is not None and alive.shape != weight.shape:
        raise ValueError(f"alive mask shape {tuple(alive.shape)} differs from the weight's {tuple(weight.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")

    device = weight.device
    goal = round(sparsity * cols)
    dead = torch.zeros(rows, cols, dtype=torch.bool, device=device) if alive is None else (alive.to(device) == 0)
    dead_per_row = dead.sum(1)
    if int(dead_per_row.max()) > goal:
        row = int(dead_per_row.argmax())
        raise ValueError(f"row {row} already has {int(dead_per_row[row])} pruned entries, more than the "
                         f"{goal} that sparsity {sparsity} allows; the schedule must not decrease")

    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(device, torch.float64 if device.type == "cpu" else torch.float32).clone()
    no_signal = torch.diagonal(h) == 0
    idle = no_signal.nonzero().squeeze(1)
    h[idle, idle] = 1.0
    w[:, no_signal] = 0.0
    u = _inverse_hessian_factor(h, damp).to(torch.float32)

    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    quota = torch.full((rows,), goal, dtype=torch.long, device=device)  # what each row has still to prune
    diag_sq = torch.diagonal(u).pow(2).view(1, -1)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        width = end - start
        # rank every column not yet swept with the weights as updated so far; keep the choices
        # that fall in this block. Dead entries rank first and quota >= the dead still ahead,
        # so each is chosen in its block; in the last block all of the quota is chosen.
        saliency = (w[:, start:].pow(2) / diag_sq[:, start:]).masked_fill(dead[:, start:], float("-inf"))
        cut = _row_lowest(saliency, quota)[:, :width]
        pruned[:, start:end] = cut
        quota -= cut.sum(1)
        w_blk = w[:, start:end].clone()
        u_blk = u[start:end, start:end]

        # OBS sweep inside the block; what it changes beyond the block is applied once, lazily
        err = torch.zeros(rows, width, dtype=torch.float32, device=device)
        for i in range(width):
            col = w_blk[:, i]
            e = torch.where(cut[:, i], col, torch.zeros_like(col)) / u_blk[i, i]
            w_blk[:, i:] -= e.view(-1, 1) * u_blk[i, i:].view(1, -1)
            w_blk[:, i] = torch.where(cut[:, i], torch.zeros_like(col), col)
            err[:, i] = e
        w[:, start:end] = w_blk
        if end < cols:
            w[:, end:] -= err @ u[start:end, end:]

    mask = (~pruned).to(weight.dtype)
    weight.copy_(w.masked_fill(pruned, 0.0).to(weight.dtype))
    return mask


@torch.no_grad()
def prune_model_(params: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], sparsity: float,
                 masks: dict[str, torch.Tensor] | None = None, block_size: int = 128,
                 damp: float = 0.01) -> dict[str, torch.Tensor]:
    """SparseGPT on every prunable tensor in ``params``, in place; return the new keep-mask per name.

    Every tensor must be a 2-D Linear weight with an entry in ``hessians`` (``input_hessians``):
    SparseGPT covers Linear layers only, so a convolution, a bias or a weight without
    calibration statistics is refused, naming it, before any tensor is changed. ``masks`` are
    the current keep-masks; their pruned entries stay pruned. Layers are solved independently
    from the same Hessians, each row to the same sparsity.
    """
    for name, p in params.items():
        if p.dim() != 2:
            raise ValueError(f"SparseGPT covers Linear layers only: '{name}' has shape {tuple(p.shape)}; "
                             "leave convolutions and biases out of the prunable set (weights_only, prune.exclude) "
                             "or use another criterion")
        if name not in hessians:
            raise ValueError(f"SparseGPT covers Linear layers only and needs calibration statistics: '{name}' "
                             "has no input Hessian (is it the weight of an nn.Linear the calibration batches reach?)")
    return {name: prune_layer_(p.data if isinstance(p, torch.nn.Parameter) else p, hessians[name], sparsity,
                               alive=None if masks is None else masks.get(name), block_size=block_size, damp=damp)
            for name, p in params.items()}
