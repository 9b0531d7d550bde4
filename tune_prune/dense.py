"""The dense-model cache: one pretrained model per (model, dataset, seed, pretrain settings).

Files live at ``<cache_dir>/dense/<dense_key>.pt`` with a JSON sidecar holding the
pretraining cost and accuracy. Writes go to a temporary name and are renamed into
place, so a reader never sees half a file and two writers cannot corrupt each other.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from tune_prune.data import DataBundle
from tune_prune.loop import FP32, Evaluation, FastPath, PretrainResult, pretrain_dense
from tune_prune.spec import TrialSpec


def paths(cache_dir: str | Path, dense_key: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / "dense"
    return base / f"{dense_key}.pt", base / f"{dense_key}.json"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` then rename into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(cache_dir: str | Path, dense_key: str) -> tuple[dict[str, torch.Tensor], PretrainResult] | None:
    """Return the cached dense weights and their pretraining record, or None if absent."""
    weights, meta = paths(cache_dir, dense_key)
    if not (weights.is_file() and meta.is_file()):
        return None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return state, PretrainResult.from_dict(json.loads(meta.read_text())["result"])


def ensure(
    trial: TrialSpec,
    data: DataBundle,
    cache_dir: str | Path,
    device: torch.device,
    progress: Callable[[int, Evaluation], None] | None = None,
    fast: FastPath = FP32,
) -> tuple[dict[str, torch.Tensor], PretrainResult, bool]:
    """Load the dense model for ``trial`` or train and cache it; the bool says it was trained now."""
    found = load(cache_dir, trial.dense_key)
    if found is not None:
        return found[0], found[1], False
    state, result = pretrain_dense(trial, data, device, progress, fast=fast)
    weights, meta = paths(cache_dir, trial.dense_key)
    atomic_write(weights, lambda tmp: torch.save(state, tmp))
    record = {
        "dense_key": trial.dense_key,
        "model": asdict(trial.model),
        "dataset": asdict(trial.dataset),
        "seed": trial.seed,
        "pretrain": asdict(trial.pretrain),
        "result": asdict(result),
    }
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, default=str)))
    return state, result, True
