"""A user's own network through a real sweep: local Ray, a SQLite MLflow store, real images.

The images are real Fashion-MNIST pictures written out as an ImageFolder of RGB PNGs, the way
a user's own data arrives. Two users: one with a torchvision ResNet-18 checkpoint of their own
(the dense baseline must be that checkpoint, evaluated, not retrained), one with an
architecture in a module of their working directory that every Ray worker must import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import need
from tune_prune.data import FASHION_MNIST_SYSTEM_DIR

pytestmark = pytest.mark.integration

CLASSES = 3
PER_CLASS = 24

USER_MODULE = '''
from torch import nn


def tiny_cnn(num_classes, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
'''


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    need(Path(FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz").is_file(),
         "Debian's dataset-fashion-mnist is not installed")
    from PIL import Image

    from tune_prune.data import load_dataset

    data = load_dataset("fashion_mnist", root=str(tmp_path_factory.mktemp("fmnist")), val_size=10)
    root = tmp_path_factory.mktemp("user_images")
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        picks = (data.y_train == c).nonzero().flatten()[:PER_CLASS]
        for i, idx in enumerate(picks.tolist()):
            Image.fromarray(data.x_train[idx, 0].numpy()).convert("RGB").save(root / f"class{c}" / f"{i}.png")
    return root


def _spec(name: str, images: Path, model: dict) -> dict:
    return {
        "name": name,
        "dataset": {"name": "imagefolder", "root": str(images), "image_size": 32, "val_size": 12,
                    "test_size": 12},
        "model": model,
        "finetune": {"lr": 0.01, "batch_size": 16},
        "budget": {"epochs": 2},
        "target_sparsities": [0.6],
        "seeds": [0],
        "strategies": {"one_shot": {"patience": 1}},
        "prune": {"exclude": ["conv1"]} if model.get("source") == "torchvision" else {},
        "speed": {"enabled": False},
    }


def _sweep(work: Path, raw: dict):
    from tune_prune.spec import load_spec
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    old = os.getcwd()
    os.chdir(work)
    try:
        spec = load_spec(path, check_data=True)
        outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None))
    finally:
        os.chdir(old)
    return spec, outcome


def _runs(outcome) -> dict:
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    return {r.data.tags["tune_prune.kind"]: r for r in runs}


def test_a_torchvision_checkpoint_is_the_dense_baseline_and_is_pruned(image_folder, tmp_path):
    from tune_prune import models
    from tune_prune.data import load_dataset
    from tune_prune.loop import evaluate

    raw = _spec("user-resnet", image_folder, {"source": "torchvision", "name": "resnet18"})
    ckpt = tmp_path / "users_resnet18.pt"
    torch.manual_seed(123)
    from tune_prune.spec import parse_spec

    arch = parse_spec(raw).model
    torch.save({"model": models.build(arch, (3, 32, 32), CLASSES).state_dict(), "step": 1000}, ckpt)
    raw["model"]["checkpoint"] = str(ckpt)
    spec, outcome = _sweep(tmp_path, raw)
    assert outcome.failed == []
    runs = _runs(outcome)
    dense, trial = runs["dense"], runs["trial"]
    # the baseline is the checkpoint as it is: no pretraining epoch, and its accuracy is the checkpoint's
    assert dense.data.metrics["pretrain_epochs"] == 0
    data = load_dataset("imagefolder", **spec.dataset.load_kwargs())
    mine = models.build(spec.model, (3, 32, 32), CLASSES, weights=True).eval()
    assert dense.data.metrics["test_accuracy"] == pytest.approx(evaluate(mine, data, "test").accuracy)
    assert dense.data.params["checkpoint_sha256"] == spec.model.checkpoint_sha256
    # pruned to the target over the prunable layers, conv1 kept dense, per-layer sparsity logged
    assert trial.data.metrics["sparsity"] == pytest.approx(0.6, abs=1e-4)
    layers = MlflowClient(outcome.tracking_uri).download_artifacts(trial.info.run_id, "layer_sparsity.json",
                                                                    str(tmp_path))
    import json

    per_layer = json.loads(Path(layers).read_text())
    assert "conv1" not in per_layer and per_layer["fc"]["sparsity"] >= 0
    total = sum(v["params"] for v in per_layer.values())
    pruned = sum(v["params"] * v["sparsity"] for v in per_layer.values())
    assert pruned / total == pytest.approx(0.6, abs=1e-4)
    assert int(trial.data.params["prunable_params"]) == total


def test_a_users_own_module_is_imported_on_the_ray_workers(image_folder, tmp_path):
    (tmp_path / "users_nets.py").write_text(USER_MODULE)
    raw = _spec("user-module", image_folder, {"source": "python", "name": "users_nets:tiny_cnn",
                                              "kwargs": {"width": 6}})
    raw["pretrain"] = {"epochs": 2, "lr": 0.05, "batch_size": 16}
    spec, outcome = _sweep(tmp_path, raw)
    assert outcome.failed == []
    runs = _runs(outcome)
    assert runs["dense"].data.metrics["pretrain_epochs"] == 2
    assert runs["trial"].data.params["model_source"] == "python"
    assert runs["trial"].data.metrics["sparsity"] == pytest.approx(0.6, abs=1e-3)
