"""Causal language models: built the way Hugging Face names them, scored by perplexity.

- ``build_causal_lm``: ``AutoModelForCausalLM.from_pretrained(path or hub id)``, or
  ``from_config`` for a model described by its config (tests, and a tiny GPT-Neo that
  trains on a CPU). A hub id needs network access where it runs.
- ``transformer_linears``: what gets pruned in a transformer by default: the Linear
  layers of its attention and MLP blocks. Embeddings, layer norms and the LM head stay
  dense (the head is usually tied to the token embedding: pruning it would prune the
  embedding too).
- ``evaluate_lm``: mean next-token loss over a split's blocks and its perplexity,
  exp(loss). Perplexity is the metric: lower is better.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

#: module-name globs kept dense in a transformer unless a spec's prune.include asks for them
LM_DENSE_BY_DEFAULT = ("lm_head", "*embed*", "*wte", "*wpe")


def _transformers():
    # transformers imports torchvision, which needs tune_prune's shim on CPU-only torch
    from tune_prune._torchvision import import_torchvision

    import_torchvision()
    import transformers

    return transformers


def build_causal_lm(name: str | None = None, config: Any = None, model_type: str | None = "gpt_neo",
                    seed: int | None = None, revision: str | None = None) -> nn.Module:
    """A causal LM from a local path or hub id (``name``), or from a config (``config``: a mapping of
    ``model_type``'s fields, or a transformers config object with ``model_type=None``)."""
    tf = _transformers()
    if (name is None) == (config is None):
        raise ValueError("give exactly one of name (a local path or hub id) and config")
    if name is not None:
        return tf.AutoModelForCausalLM.from_pretrained(name, revision=revision)
    cfg = config if model_type is None else tf.AutoConfig.for_model(model_type, **_plain(config))
    if seed is not None:
        torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(cfg)


def causal_lm_config(name: str, revision: str | None = None) -> Any:
    """The config of a model directory or hub id (a fresh model of the same architecture)."""
    return _transformers().AutoConfig.from_pretrained(name, revision=revision)


def _plain(value: Any) -> Any:
    """Frozen spec values (tuples of pairs) back to the lists and dicts a config expects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def transformer_linears(model: nn.Module) -> list[str]:
    """Names of the Linear layers that are prunable by default: those of attention and MLP blocks."""
    from fnmatch import fnmatchcase

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and not any(fnmatchcase(n, p) or fnmatchcase(n.rsplit(".", 1)[-1], p) for p in LM_DENSE_BY_DEFAULT)]


@dataclass(frozen=True)
class LMEvaluation:
    loss: float  # mean next-token cross-entropy, nats
    perplexity: float
    tokens: int


def next_token_loss(logits: torch.Tensor, blocks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each position's logits against the next token of ``blocks``."""
    logits = logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1),
                                       reduction=reduction)


@torch.no_grad()
def evaluate_lm(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16,
                autocast: Callable[[], Any] = contextlib.nullcontext) -> LMEvaluation:
    """Mean next-token loss over every predicted token of ``blocks`` and its perplexity
    (``autocast``: the context the forward passes run in, e.g. bf16 on CUDA)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=blocks.device)  # one sync per evaluation
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i:i + batch_size]
        with autocast():
            logits = model(input_ids=x).logits
        total += next_token_loss(logits, x, reduction="sum")
    model.train(was_training)
    count = blocks.shape[0] * (blocks.shape[1] - 1)
    loss = float(total) / count
    return LMEvaluation(loss, math.exp(min(loss, 700.0)), count)


def lm_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training loss of one batch of blocks."""
    return next_token_loss(model(input_ids=x).logits, x)
