"""Data the user has: ImageFolder trees streamed or resident, torchvision datasets by class name.

The image trees are real pictures (scikit-learn's digits, as RGB PNGs of several
sizes) written to tmp_path; the torchvision case reads the real Fashion-MNIST
files of Debian's dataset-fashion-mnist package.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tune_prune.data as data
from tune_prune import models
from tune_prune.data import DataBundle, StreamingBundle, check_data, describe, load_dataset
from tune_prune.loop import evaluate, gradient_statistics, model_view, train_epoch
from tune_prune.pruning.masks import MaskSet
from tune_prune.spec import (
    BudgetSpec, DatasetSpec, FinetuneSpec, ModelSpec, PretrainSpec, SpecError, TrialSpec, parse_spec,
)

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
CLASSES = (0, 3, 7)  # three digit classes


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """ROOT/digit<k>/<i>.png: 6 real digits per class, RGB, of varying size and aspect ratio."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("digits_tree")
    for k in CLASSES:
        (root / f"digit{k}").mkdir()
        for i, img in enumerate(d.images[d.target == k][:6]):
            pixels = np.rint(img * (255.0 / 16.0)).astype(np.uint8)
            size = (30 + 4 * i, 26 + 2 * (i % 3))  # (width, height): resize and crop do real work
            Image.fromarray(pixels).convert("RGB").resize(size, Image.BILINEAR).save(root / f"digit{k}" / f"{i}.png")
    return root


def _same_batches(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def _trial(model: ModelSpec) -> TrialSpec:
    return TrialSpec(
        dataset=DatasetSpec(name="imagefolder"), model=model, pretrain=PretrainSpec(epochs=1),
        finetune=FinetuneSpec(), budget=BudgetSpec(epochs=1, policy="even"), schedule="one_shot",
        target=0.5, seed=0, knobs=(), patience=1, first_patience=None, epochs_per_event=None,
    )


def _cnn(in_shape, num_classes) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(ModelSpec(name="small_cnn", options=(("width", 4),)), in_shape, num_classes)


def test_streaming_gives_the_resident_batches_and_results(image_tree, monkeypatch):
    monkeypatch.setattr(data, "DECODE_BATCH", 3)  # workers decode a batch of 4 in two pieces
    kw = dict(root=str(image_tree), image_size=16, resize=20, test_size=4, val_size=3)
    resident = load_dataset("imagefolder", **kw)
    streaming = load_dataset("imagefolder", storage="streaming", **kw).with_workers(1)
    assert isinstance(resident, DataBundle) and resident.storage == "resident"
    assert isinstance(streaming, StreamingBundle) and streaming.storage == "streaming"
    assert streaming.in_shape == resident.in_shape == (3, 16, 16)
    assert streaming.num_classes == resident.num_classes == 3 and streaming.augment == "crop_flip"
    # the same examples in every split (chosen from the labels, before any decoding)
    assert [streaming.size(s) for s in ("train", "val", "test")] == [11, 3, 4]
    for split in ("train", "val", "test"):
        assert torch.equal(streaming.labels(split), resident.labels(split))
        assert _same_batches(resident.batches(split, 4), streaming.batches(split, 4))
        assert _same_batches(
            resident.batches(split, 4, torch.Generator().manual_seed(7)),
            streaming.batches(split, 4, torch.Generator().manual_seed(7)),
        )
    # a pass started inside another (the persistent workers are busy) gets a loader of its own
    outer = streaming.batches("train", 4)
    first = next(outer)
    assert _same_batches(streaming.batches("val", 4), resident.batches("val", 4))
    assert _same_batches([first, *outer], resident.batches("train", 4))
    # statistics from one streamed pass equal the resident histogram's, exactly
    assert streaming.mean == resident.mean and streaming.std == resident.std

    def train(bundle):
        model = _cnn(bundle.in_shape, bundle.num_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        # a resumed trial rebuilds its generator from (seed, epoch): same batches, same crops
        losses = [train_epoch(model, opt, bundle, 4, torch.Generator().manual_seed(epoch)) for epoch in (1, 2)]
        grads = gradient_statistics(model, MaskSet(model), bundle, 4, torch.Generator().manual_seed(3), batches=2)
        return losses, evaluate(model, bundle, "val", batch_size=2), evaluate(model, bundle, "test"), grads

    (loss_r, val_r, test_r, grads_r), (loss_s, val_s, test_s, grads_s) = train(resident), train(streaming)
    assert loss_r == loss_s and val_r == val_s and test_r == test_s
    assert all(torch.equal(grads_r[0][n], grads_s[0][n]) for n in grads_r[0])


def test_imagefolder_at_224_streams_through_workers_into_a_cnn(image_tree, monkeypatch):
    monkeypatch.setattr(data, "RESIDENT_LIMIT_BYTES", 1)  # nothing fits: auto must stream
    bundle = load_dataset("imagefolder", root=str(image_tree), image_size=224, resize=256, test_size=3, val_size=3)
    assert bundle.storage == "streaming" and bundle.in_shape == (3, 224, 224)
    bundle = bundle.with_workers(1)

    decode = data._ImageFiles._decode

    def in_a_worker_only(self, item):
        # forked workers inherit this patch; the trial's own process must never decode
        assert torch.utils.data.get_worker_info() is not None, "decoded in the main process"
        return decode(self, item)

    monkeypatch.setattr(data._ImageFiles, "_decode", in_a_worker_only)
    model = _cnn(bundle.in_shape, bundle.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = train_epoch(model, opt, bundle, 4, torch.Generator().manual_seed(0))
    assert np.isfinite(loss) and loss > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    ev = evaluate(model, bundle, "val")
    assert 0.0 <= ev.accuracy <= 1.0 and np.isfinite(ev.loss)
    # a pretrained model's own normalisation replaces the data's on a streaming bundle too
    seen = model_view(_trial(ModelSpec(name="small_cnn", normalize="imagenet")), bundle)
    assert seen.storage == "streaming" and seen.mean == models.IMAGENET_NORMALIZE[0]


def test_auto_storage_is_resident_while_the_images_fit(image_tree, monkeypatch):
    kw = dict(root=str(image_tree), image_size=8, test_size=3, val_size=3)
    assert load_dataset("imagefolder", **kw).storage == "resident"  # 18 tiny images
    needed = 18 * 3 * 8 * 8
    monkeypatch.setattr(data, "RESIDENT_LIMIT_BYTES", needed)
    assert load_dataset("imagefolder", **kw).storage == "resident"
    monkeypatch.setattr(data, "RESIDENT_LIMIT_BYTES", needed - 1)
    assert load_dataset("imagefolder", **kw).storage == "streaming"
    assert load_dataset("imagefolder", storage="resident", **kw).storage == "resident"  # asked for: obeyed
    # data decoded by its loader is resident whatever the limit
    assert load_dataset("digits").storage == "resident"
    monkeypatch.setattr(data, "RESIDENT_LIMIT_BYTES", None)
    assert data.resident_limit_bytes() > 10**8  # a share of this machine's memory
    with pytest.raises(ValueError, match=r"dataset\.storage: must be one of auto, resident, streaming"):
        load_dataset("imagefolder", storage="disk", **kw)


def test_resize_is_the_shorter_side_before_the_center_crop(image_tree):
    b = load_dataset("imagefolder", root=str(image_tree), image_size=12, resize=24, test_size=3, val_size=3)
    wide = load_dataset("imagefolder", root=str(image_tree), image_size=12, test_size=3, val_size=3)
    # resize 24 then crop 12 keeps the center half: a zoom, so the images differ from resize 12
    assert b.in_shape == wide.in_shape == (3, 12, 12) and not torch.equal(b.x_train, wide.x_train)
    with pytest.raises(ValueError, match=r"dataset\.resize: must be >= dataset\.image_size \(12\)"):
        load_dataset("imagefolder", root=str(image_tree), image_size=12, resize=8)
    with pytest.raises(ValueError, match=r"dataset\.resize: must be >= dataset\.image_size"):
        check_data("imagefolder", root=str(image_tree), image_size=12, resize=8)


# --------------------------------------------------------------------------- torchvision by class name


def test_torchvision_fakedata_pool_is_split_and_streams_like_resident():
    kw = dict(class_name="FakeData", kwargs={"size": 24, "image_size": [3, 10, 12], "num_classes": 4},
              test_size=6, val_size=4)
    resident = load_dataset("torchvision", **kw)
    streaming = load_dataset("torchvision", storage="streaming", **kw).with_workers(1)
    assert resident.in_shape == streaming.in_shape == (3, 10, 12) and resident.num_classes == 4
    assert [resident.size(s) for s in ("train", "val", "test")] == [14, 4, 6]
    for split in ("train", "val", "test"):
        assert _same_batches(resident.batches(split, 5, torch.Generator().manual_seed(1)),
                             streaming.batches(split, 5, torch.Generator().manual_seed(1)))
    assert describe("torchvision", class_name="FakeData", kwargs=kw["kwargs"]) == ((3, 10, 12), 4)


def test_torchvision_options_are_checked_and_name_their_field(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.class_name: unknown torchvision .* 'Nope'; accepted: .*CIFAR10"):
        load_dataset("torchvision", class_name="Nope")
    with pytest.raises(FileNotFoundError, match=r"dataset\.root: .*nowhere does not exist"):
        check_data("torchvision", root=str(tmp_path / "nowhere"), class_name="CIFAR10")
    check_data("torchvision", root=str(tmp_path / "nowhere"), class_name="CIFAR10", download=True)
    with pytest.raises(ValueError, match=r"dataset\.image_size: torchvision Food101 images vary in size"):
        check_data("torchvision", root=str(tmp_path), class_name="Food101")
    with pytest.raises(ValueError, match=r"dataset\.test_size: torchvision SVHN has an official test split"):
        check_data("torchvision", root=str(tmp_path), class_name="SVHN", test_size=0.1)
    with pytest.raises(ValueError, match=r"dataset\.kwargs: torchvision EMNIST needs split"):
        check_data("torchvision", root=str(tmp_path), class_name="EMNIST")
    with pytest.raises(ValueError, match=r"dataset\.kwargs: train is set by tune_prune"):
        check_data("torchvision", root=str(tmp_path), class_name="CIFAR10", kwargs={"train": False})
    with pytest.raises(FileNotFoundError, match=r"dataset\.root: torchvision CIFAR10 found no usable files"):
        load_dataset("torchvision", root=str(tmp_path), class_name="CIFAR10")
    assert describe("torchvision", class_name="SVHN") == ((3, 32, 32), 10)
    assert describe("torchvision", class_name="ImageNet", image_size=224) == ((3, 224, 224), 1000)


def _raw_spec(dataset: dict) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    for key in ("smoke_test", "pretrain"):
        raw.pop(key)
    raw.update(target_sparsities=[0.5], seeds=[0], strategies={"one_shot": {"patience": 1}},
               dataset=copy.deepcopy(dataset))
    return raw


def test_the_spec_checks_the_new_options(tmp_path, image_tree):
    with pytest.raises(SpecError, match=r"dataset\.class_name: unknown value 'Nope'; accepted: .*FashionMNIST"):
        parse_spec(_raw_spec({"name": "torchvision", "class_name": "Nope"}))
    with pytest.raises(SpecError, match=r"dataset\.storage: unknown value 'disk'"):
        parse_spec(_raw_spec({"name": "imagefolder", "root": str(image_tree), "storage": "disk"}))
    with pytest.raises(SpecError, match=r"dataset\.root: .* does not exist"):
        parse_spec(_raw_spec({"name": "torchvision", "class_name": "SVHN", "root": str(tmp_path / "x")}),
                   check_data=True)
    spec = parse_spec(_raw_spec({"name": "imagefolder", "root": str(image_tree), "image_size": 224, "resize": 256,
                                 "storage": "streaming"}), check_data=True)
    assert spec.dataset.kwargs_own() == {"image_size": 224, "resize": 256, "storage": "streaming"}


@pytest.mark.needs(
    Path(data.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_torchvision_fashion_mnist_by_class_name_is_fashion_mnist(tmp_path):
    ours = load_dataset("fashion_mnist", root=str(tmp_path), val_size=0.1)
    by_name = load_dataset("torchvision", root=str(tmp_path), class_name="FashionMNIST", val_size=0.1)
    assert by_name.storage == "resident" and by_name.in_shape == (1, 28, 28)
    assert (by_name.num_classes, by_name.augment, by_name.mean, by_name.std) == (
        ours.num_classes, ours.augment, ours.mean, ours.std)
    for split in ("train", "val", "test"):
        assert torch.equal(by_name.labels(split), ours.labels(split))
        assert torch.equal(getattr(by_name, f"x_{split}"), getattr(ours, f"x_{split}"))
    assert describe("torchvision", class_name="FashionMNIST") == ((1, 28, 28), 10)
    # the spec checks find the Debian files too, and size the model from the class's known shape
    spec = parse_spec(_raw_spec({"name": "torchvision", "class_name": "FashionMNIST",
                                 "root": str(tmp_path / "elsewhere")}), check_data=True)
    assert spec.dataset.kwargs_own() == {"class_name": "FashionMNIST"}
