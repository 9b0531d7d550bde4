"""A user's own network: model sources (builtin, torchvision, timm, python), checkpoints, prune patterns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from tune_prune import models
from tune_prune.pruning.masks import MaskSet
from tune_prune.spec import SpecError, parse_spec

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def _raw(**changes) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.pop("smoke_test")
    raw.pop("pretrain")
    raw["target_sparsities"] = [0.5]
    raw["seeds"] = [0]
    raw["strategies"] = {"one_shot": {"patience": 1}}
    raw.update(copy.deepcopy(changes))
    return raw


def _images(tmp_path: Path, classes: int = 3) -> dict:
    root = tmp_path / "images"
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        (root / f"class{c}" / "x.png").write_bytes(b"")
    return {"name": "imagefolder", "root": str(root), "image_size": 32}


def _resnet18_checkpoint(path: Path, num_classes: int, wrap: str | None = "state_dict") -> dict:
    torch.manual_seed(0)
    spec = parse_spec(_raw(model={"source": "torchvision", "name": "resnet18"})).model
    state = models.build(spec, (3, 32, 32), num_classes).state_dict()
    torch.save({wrap: state, "epoch": 7} if wrap else state, path)
    return state


def test_a_torchvision_checkpoint_is_the_dense_model_named_by_its_content(tmp_path):
    ckpt = tmp_path / "mine.pt"
    state = _resnet18_checkpoint(ckpt, num_classes=3)
    raw = _raw(dataset=_images(tmp_path), model={"source": "torchvision", "name": "resnet18", "checkpoint": str(ckpt)})
    spec = parse_spec(raw, check_data=True)
    assert spec.pretrain.epochs == 0  # a checkpoint is used as it is unless pretrain.epochs says otherwise
    dense = spec.trials()[0]
    assert spec.model.checkpoint_sha256 is not None and dense.model.source == "torchvision"
    # the starting weights are the checkpoint's, loaded strictly (the "state_dict" key found by itself)
    built = models.build(spec.model, (3, 32, 32), 3, weights=True)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in state.items())
    # the same bytes elsewhere: the same dense model; other bytes: another one
    moved = tmp_path / "moved.pt"
    moved.write_bytes(ckpt.read_bytes())
    again = parse_spec({**raw, "model": {**raw["model"], "checkpoint": str(moved)}}).trials()[0]
    assert again.dense_key == dense.dense_key and again.key == dense.key
    _resnet18_checkpoint(moved, num_classes=3, wrap=None)  # reseeded: same weights, no wrapper dict: new bytes
    other = parse_spec({**raw, "model": {**raw["model"], "checkpoint": str(moved)}}).trials()[0]
    assert other.dense_key != dense.dense_key


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_tensors(tmp_path):
    ckpt = tmp_path / "five.pt"
    _resnet18_checkpoint(ckpt, num_classes=5)
    raw = _raw(dataset=_images(tmp_path), model={"source": "torchvision", "name": "resnet18", "checkpoint": str(ckpt)})
    with pytest.raises(SpecError) as info:
        parse_spec(raw, check_data=True)
    assert info.value.field == "model.checkpoint"
    assert "fc.weight is [5, 512] in the checkpoint but [3, 512] in the model" in str(info.value)
    torch.save({"a": {}, "b": {}}, ckpt)
    with pytest.raises(SpecError, match=r"^model.checkpoint_key: .* name the key that holds the state_dict"):
        parse_spec(raw, check_data=True)
    with pytest.raises(SpecError, match=r"^model.checkpoint: no such file"):
        parse_spec({**raw, "model": {**raw["model"], "checkpoint": str(tmp_path / "gone.pt")}}, check_data=True)


def test_a_users_own_architecture_from_a_module_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "from torch import nn\n"
        "def tiny(num_classes, width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    raw = _raw(model={"source": "python", "name": "my_nets:tiny", "kwargs": {"width": 6}})
    spec = parse_spec(raw, check_data=True)
    model = models.build(spec.model, (1, 8, 8), 10)
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [6, 10]
    with pytest.raises(SpecError, match=r"^model.name: cannot import 'not_there'"):
        parse_spec(_raw(model={"source": "python", "name": "not_there:tiny"}), check_data=True)
    with pytest.raises(SpecError, match=r"^model.name: must be module:function"):
        parse_spec(_raw(model={"source": "python", "name": "my_nets.tiny"}))


@pytest.mark.parametrize("model,field,message", [
    ({"source": "torchvision", "name": "resnet1800"}, "model.name", "torchvision has no classification model"),
    ({"source": "torchvision", "name": "resnet18", "weights": "CIFAR"}, "model.weights", "accepted: IMAGENET1K_V1"),
    ({"source": "timm", "name": "vit_smol"}, "model.name", "timm has no model 'vit_smol'"),
    ({"source": "keras", "name": "x"}, "model.source", "accepted: builtin, huggingface, python, timm, torchvision"),
    ({"source": "timm", "name": "resnet18", "hidden": 3}, "model.hidden", "unknown field"),
])
def test_model_sources_refuse_unknown_names(model, field, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_raw(model=model))
    assert info.value.field == field and message in str(info.value)


def test_a_timm_vit_is_pruned_unstructured_and_accepted_structured_at_validate(tmp_path):
    vit = {"source": "timm", "name": "vit_small_patch16_224",
           "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}}
    spec = parse_spec(_raw(dataset=_images(tmp_path), model=vit, prune={"exclude": ["patch_embed.*", "head"]}),
                      check_data=True)
    model = models.build(spec.model, (3, 32, 32), 3)
    masks = MaskSet(model, spec.prune_include, spec.prune_exclude)
    assert "head.weight" not in masks.params and "patch_embed.proj.weight" not in masks.params
    assert "blocks.0.attn.qkv.weight" in masks.params and "blocks.1.mlp.fc2.weight" in masks.params
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks.prune_to(0.7)
    assert abs(masks.measured_sparsity() - 0.7) < 1e-4
    assert torch.equal(model.head.weight, before["head.weight"])  # excluded: untouched
    structured = parse_spec(_raw(dataset=_images(tmp_path), model=vit, structure="structured"), check_data=True)
    assert structured.structure == "structured"  # heads and MLP channels: tests/test_structured_vit.py


def test_prune_patterns_must_match_a_layer_and_leave_something(tmp_path):
    with pytest.raises(SpecError, match=r"^prune.exclude\[1\]: 'fcc' matches no Conv2d or Linear layer; layers: 1, 3"):
        parse_spec(_raw(prune={"exclude": ["1", "fcc"]}), check_data=True)
    with pytest.raises(SpecError, match=r"^prune: include and exclude leave no layer to prune"):
        parse_spec(_raw(prune={"include": ["1"], "exclude": ["1"]}), check_data=True)
    spec = parse_spec(_raw(prune={"exclude": ["1"]}))
    keyed = spec.trials()[1]
    plain = parse_spec(_raw()).trials()[1]
    assert keyed.key != plain.key and keyed.dense_key == plain.dense_key  # same dense model, other trial


def test_library_weights_that_cannot_be_fetched_fail_with_what_to_do(monkeypatch, tmp_path):
    import urllib.error

    # No machine here reaches download.pytorch.org; the fetch is made to fail at once the way it
    # fails here (without retries), so the test does not depend on the network either way.
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    from tune_prune._torchvision import import_torchvision

    import_torchvision()  # the CPU shim first, then torchvision itself
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = parse_spec(_raw(model={"source": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"})).model
    with pytest.raises(RuntimeError, match=r"torchvision resnet18 IMAGENET1K_V1: could not fetch the library "
                                            r"weights \(URLError.*model.checkpoint instead"):
        models.build(spec, (3, 32, 32), 10, weights=True)
    # the architecture alone needs nothing from the network; its inputs are normalised as the weights expect
    assert models.build(spec, (3, 32, 32), 10).fc.out_features == 10
    assert models.preferred_normalize(spec) == models.IMAGENET_NORMALIZE


def test_the_layer_report_adds_up_to_the_measured_sparsity():
    from tune_prune.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=[16, 12])
    masks = MaskSet(model, exclude=["3"])
    masks.prune_to(0.75)
    report = masks.layer_report()
    assert set(report) == {"1", "5"}  # Linear layers 1 and 5; 3 excluded
    assert report["1"]["params"] == 64 * 16 + 16 and report["5"]["params"] == 12 * 10 + 10
    pruned = sum(r["params"] * r["sparsity"] for r in report.values())
    assert pruned == masks.pruned and masks.total == sum(r["params"] for r in report.values())
