"""Structured pruning of timm Vision Transformers: whole attention heads and MLP hidden channels.

A ViT's embedding dimension is one residual stream: the patch embedding, every
block's attention and MLP outputs, the norms, the cls and position tokens and the
classifier's inputs all share it, so it could only be cut everywhere at once. It
is left whole, and so are the classifier's outputs. What is cut lives inside the
blocks, with Torch-Pruning's DepGraph doing the surgery as for ChannelPruner:

- MLP hidden channels: fc1's outputs with fc2's inputs (and the hidden-width norm,
  when the Mlp has one). One group per block, scored per channel exactly as
  ChannelPruner scores a channel group.
- Attention heads: a head is ``head_dim`` rows of each of q, k and v in the fused
  qkv layer plus the ``head_dim`` proj inputs they feed. DepGraph maps proj input
  channel ``i`` to qkv rows ``i``, ``A + i`` and ``2A + i`` (``A`` = heads x
  head_dim), so a group rooted at proj's inputs carries the whole head. A head's
  score is the sum over its ``head_dim`` channels of that group's score (its q, k
  and v rows and its proj columns, under the chosen criterion); the weakest heads
  go whole, and ``num_heads`` and ``attn_dim`` are then set from qkv's new shape.
  Per-head q/k norms are left out of the graph: they act within a head.

The schedule arithmetic is ChannelPruner's: at ratio ``s`` every block keeps
``max(1, round((1 - s) * n0))`` MLP channels and ``max(1, round((1 - s) * h0))``
heads, ``n0`` and ``h0`` being the ORIGINAL counts. MACs also count the two
attention matmuls (q k^T and the weighted sum of v, ``2 N^2 A`` per image), which
shrink with the heads.

timm classes are looked up among the loaded modules, never imported: a model that
holds one was built by timm, so timm is loaded whenever it matters.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

import torch
import torch_pruning as tp
from torch import nn

from tune_prune.pruning.structured import ChannelPruner, count_macs, forward_with_hooks

#: What structured pruning of attention handles, for messages.
SUPPORTED_ATTENTION = "timm Vision Transformers (timm's Attention with a fused qkv layer, and its Mlp)"


def _timm_class(module: str, name: str) -> type | None:
    return getattr(sys.modules.get(module), name, None)


def _is(module: nn.Module, cls: type | None) -> bool:
    # exact type: a subclass may reshape by other rules in its own forward
    return cls is not None and type(module) is cls


def vit_attention(model: nn.Module) -> dict[str, nn.Module]:
    """The timm Attention layers of ``model``, by name (empty for any other model)."""
    cls = _timm_class("timm.layers.attention", "Attention")
    return {n: m for n, m in model.named_modules() if _is(m, cls)}


def vit_mlps(model: nn.Module) -> dict[str, nn.Module]:
    """The timm Mlp layers (fc1 -> act -> [norm] -> fc2) of ``model``, by name."""
    cls = _timm_class("timm.layers.mlp", "Mlp")
    return {n: m for n, m in model.named_modules()
            if _is(m, cls) and isinstance(m.fc1, nn.Linear) and isinstance(m.fc2, nn.Linear)}


def unsupported_attention(model: nn.Module) -> list[str]:
    """What in ``model`` structured pruning cannot handle, one phrase each; empty when it can.

    Attention is handled only as timm's own Attention class, whose forward reshapes
    qkv by ``num_heads`` and ``head_dim``; anything else that has heads
    (nn.MultiheadAttention, other classes with ``num_heads``) is not. A block whose
    attention is handled must have timm's plain Mlp, or its hidden channels could
    not be cut.
    """
    attention = vit_attention(model)
    problems = []
    others = sorted({type(m).__name__ for n, m in model.named_modules() if n not in attention
                     and (isinstance(m, nn.MultiheadAttention) or hasattr(m, "num_heads"))})
    if others:
        problems.append(f"attention layers {', '.join(others)}")
    for name, attn in attention.items():
        qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
        heads, head_dim = getattr(attn, "num_heads", 0), getattr(attn, "head_dim", 0)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and hasattr(attn, "attn_dim")
                and qkv.out_features == 3 * heads * head_dim == 3 * proj.in_features):
            problems.append(f"{name}: a timm Attention without one fused qkv layer of 3 x heads x head_dim "
                            "outputs (an older timm?)")
    mlps, modules = vit_mlps(model), dict(model.named_modules())
    odd = [f"{block}.mlp" if block else "mlp" for block in (n.rpartition(".")[0] for n in attention)]
    odd = [n for n in odd if n in modules and n not in mlps]
    if odd:
        kinds = ", ".join(sorted({type(modules[n]).__name__ for n in odd}))
        more = f" and {len(odd) - 1} more" if len(odd) > 1 else ""
        problems.append(f"MLPs that are not timm's Mlp with Linear fc1 and fc2 ({odd[0]}{more}: {kinds})")
    return problems


def sync_heads(model: nn.Module) -> None:
    """Set every timm Attention's ``num_heads`` and ``attn_dim`` from its qkv layer's rows.

    ``head_dim`` never changes (whole heads go), so the head count is qkv's rows
    over 3 x head_dim. What its forward reshapes by must agree with the weights.
    """
    for name, attn in vit_attention(model).items():
        rows, per_head = attn.qkv.out_features, 3 * attn.head_dim
        if rows % per_head:
            raise ValueError(f"{name}.qkv has {rows} outputs, not a whole number of heads of 3 x {attn.head_dim}")
        attn.num_heads = rows // per_head
        attn.attn_dim = attn.num_heads * attn.head_dim


@torch.no_grad()
def count_attention_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the timm Attention matmuls per image: q k^T and attn v, N^2 x attn_dim each."""
    total = 0

    def count(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        batch, tokens = inputs[0].shape[:2]
        total += 2 * batch * tokens * tokens * module.attn_dim

    forward_with_hooks(model, list(vit_attention(model).values()), count, example)
    return total // example.shape[0]


class ViTPruner(ChannelPruner):
    """Prunes whole attention heads and MLP channels of a timm ViT in place along a cumulative schedule.

    The surface (``prune_to``, ``reached``, ``state_dict``, ``layer_report``) and
    the ``state`` it is restored from are ChannelPruner's: a head count is qkv's
    width over 3 x head_dim, so the original widths carry the original heads.
    ``include``/``exclude`` select layers as there: heads are cut where qkv is
    selected, MLP channels where fc1 is.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, state: dict[str, Any] | None = None,
                 include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        problems = unsupported_attention(model)
        if problems:
            raise ValueError(f"structured pruning does not handle {'; '.join(problems)}: it prunes "
                             f"attention heads only in {SUPPORTED_ATTENTION}")
        self.attentions = vit_attention(model)
        if not self.attentions:
            raise ValueError("ViTPruner needs a model with timm Attention layers; use ChannelPruner")
        self.mlps = vit_mlps(model)
        super().__init__(model, example, state, include, exclude)

    def original_heads(self, name: str) -> int:
        """Heads attention layer ``name`` had before any pruning."""
        return self.original_widths[f"{name}.qkv"] // (3 * self.attentions[name].head_dim)

    def layer_report(self) -> dict[str, dict[str, float]]:
        """ChannelPruner's report, with the heads left and the original heads on each qkv layer."""
        report = super().layer_report()
        for name, attn in self.attentions.items():
            report[f"{name}.qkv"].update(heads=attn.num_heads, original_heads=self.original_heads(name))
        return report

    def _channel_layers(self) -> set[str]:
        # the layers whose outputs this pruner cuts: the rest carry the embedding dimension
        return {f"{n}.qkv" for n in self.attentions} | {f"{n}.fc1" for n in self.mlps}

    def _macs(self) -> int:
        return count_macs(self.model, self.example) + count_attention_macs(self.model, self.example)

    def _dependency_graph(self) -> tp.DependencyGraph:
        # q/k norms normalise within a head; traced, DepGraph would cut them like channels.
        per_head = [m for a in self.attentions.values() for m in (a.q_norm, a.k_norm)
                    if not isinstance(m, nn.Identity)]
        # verbose=False: cls/pos tokens are "unwrapped parameters", and they stay whole anyway
        return tp.DependencyGraph().build_dependency(self.model, example_inputs=self.example,
                                                     ignored_layers=per_head, verbose=False)

    def _cuts(self, graph: tp.DependencyGraph, importance: Any,
              ratio: float) -> list[tuple[nn.Module, Any, list[int]]]:
        kept = {id(m) for m in self.kept}
        cuts = []
        for name, attn in self.attentions.items():
            heads, d = attn.num_heads, attn.head_dim
            keep = self._keep(self.original_heads(name), ratio)
            if id(attn.qkv) in kept or heads <= keep:
                continue
            group = graph.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(heads * d)))
            per_head = importance(group).float().cpu().view(heads, d).sum(1)
            gone = sorted(torch.sort(per_head, stable=True).indices[: heads - keep].tolist())
            cuts.append((attn.proj, tp.prune_linear_in_channels, [h * d + j for h in gone for j in range(d)]))
        for name, mlp in self.mlps.items():
            width = mlp.fc1.out_features
            keep = self._keep(self.original_widths[f"{name}.fc1"], ratio)
            if id(mlp.fc1) in kept or width <= keep:
                continue
            group = graph.get_pruning_group(mlp.fc1, tp.prune_linear_out_channels, list(range(width)))
            drop = torch.sort(importance(group).float().cpu(), stable=True).indices[: width - keep].tolist()
            cuts.append((mlp.fc1, tp.prune_linear_out_channels, sorted(drop)))
        return cuts

    def _after_cuts(self) -> None:
        sync_heads(self.model)
