"""The paper's vision setups as shipped specs: they validate, and their smoke runs pass here.

A smoke run is the same code path as the cluster run (torchvision or timm model, the
model's own input resizing, library-weight head replacement switched off only because
nothing can be downloaded here) on real digits shown as RGB, on local Ray with a SQLite
MLflow store.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tune_prune.cli import main
from tune_prune.spec import load_spec

SPECS = Path(__file__).resolve().parent.parent / "search_spaces"
PAPER = ["imagenet_resnet18.yaml", "cifar10_efficientnetv2s.yaml", "cifar10_vit_s16.yaml"]


@pytest.mark.parametrize("name", PAPER)
def test_the_paper_spec_validates_for_its_cluster(name, capsys):
    # the data lives on the cluster: check everything else
    assert main(["validate", "--no-data-check", str(SPECS / name)]) == 0
    out = capsys.readouterr().out
    assert "starts from library weights" in out
    spec = load_spec(SPECS / name)
    assert spec.model.source in ("torchvision", "timm") and spec.model.starts_from_weights
    assert spec.finetune.lr == 0.001 and spec.finetune.momentum == 0.9 and spec.finetune.weight_decay == 5e-4


#: these smoke runs take 2.5 (a 224 px ResNet-18), 1.5 (EfficientNetV2-S) and 1 minute (ViT-S/16)
#: on a 2-core CPU, so they run with -m slow. By default every spec above validates, the CIFAR
#: ResNet-18 studies' smoke runs go through the same sweep path (test_paper_protocol.py), and
#: timm ViTs are pruned, structured too, in test_structured_vit.py and test_model_sources.py.
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", PAPER)
def test_the_paper_spec_smoke_run_passes_on_this_cpu(name, tmp_path):
    from tune_prune.sweep import run_sweep
    from tune_prune.tracking import resolve_tracking_uri

    spec = load_spec(SPECS / name, smoke_test=True, check_data=True)
    assert not spec.model.starts_from_weights  # nothing to download
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        outcome = run_sweep(spec, tracking_uri=resolve_tracking_uri(None), smoke_test=True)
    finally:
        os.chdir(old)
    assert outcome.failed == []
    assert outcome.n_trials == len(spec.trials())
    reached = outcome.frontier[outcome.frontier["sparsity_level"] == 0.8]
    assert set(reached["strategy"]) == {s.schedule for s in spec.strategies} >= {"one_shot", "geometric"}
