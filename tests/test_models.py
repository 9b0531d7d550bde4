"""Model registry: every model builds for small and CIFAR-sized inputs, sizes, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune_prune.models import MODELS, build_model
from tune_prune.registry import UnknownNameError

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
PARAMETRIC = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_registry_keys():
    assert MODELS.names() == ["lenet_300_100", "mlp", "resnet18", "resnet20", "small_cnn"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_runs_and_trains(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    x, y = torch.randn(4, *shape), torch.tensor([0, 3, 7, 9])
    out = model(x)
    assert out.shape == (4, 10)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    # every parameter takes part: a gradient that is missing or all zero would leave it untrained
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert nn.functional.cross_entropy(model(x), y) < loss  # one step on the batch lowers its loss
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)


@pytest.mark.parametrize("name", MODELS.names())
def test_only_prunable_layer_types_hold_parameters(name):
    # The pruning code ranks Conv2d/Linear tensors: a parameter anywhere else would escape it.
    model = build_model(name, (3, 32, 32), 10)
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, PARAMETRIC), type(module)


def test_resnet_sizes():
    assert 11.1e6 <= n_params(build_model("resnet18", (3, 32, 32), 10)) <= 11.3e6
    assert 0.26e6 <= n_params(build_model("resnet20", (3, 32, 32), 10)) <= 0.28e6
    resnet20 = build_model("resnet20", (3, 32, 32), 10)
    convs = [m for m in resnet20.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # stem + 3 stages x 3 blocks x 2: with the classifier, 20 layers
    assert [c.out_channels for c in convs][::6] == [16, 16, 32, 64]


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18", (3, 32, 32), 100)
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.fc.in_features == 512 and model.fc.out_features == 100


def test_lenet_300_100_layers():
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(784, 300), (300, 100), (100, 10)]


def test_mlp_hidden_and_width_kwargs():
    model = build_model("mlp", (1, 8, 8), 10, hidden=[32])
    assert [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)
    ] == [(64, 32), (32, 10)]
    assert [
        m.out_features
        for m in build_model("mlp", (1, 8, 8), 3).modules()
        if isinstance(m, nn.Linear)
    ] == [256, 128, 3]
    narrow = build_model("small_cnn", (1, 28, 28), 10, width=8)
    assert n_params(narrow) < n_params(build_model("small_cnn", (1, 28, 28), 10))
    assert build_model("resnet20", (3, 32, 32), 10, width=8)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        10,
    )


def test_unknown_model_lists_names():
    with pytest.raises(
        UnknownNameError, match="unknown model 'vgg'; accepted: lenet_300_100, mlp, resnet18"
    ):
        build_model("vgg", (3, 32, 32), 10)


def test_unknown_kwarg_names_it_and_the_accepted_ones():
    with pytest.raises(
        ValueError, match=r"model\.depth: not an option of model 'small_cnn'; accepted: width"
    ):
        build_model("small_cnn", (1, 28, 28), 10, depth=3)
    with pytest.raises(
        ValueError,
        match=r"model\.hidden: not an option of model 'lenet_300_100'; accepted: \(none\)",
    ):
        build_model("lenet_300_100", (1, 28, 28), 10, hidden=[10])


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("small_cnn", (1, 28, 28), 10), {"width": 0}, "width"),
        (("mlp", (1, 28, 28), 10), {"hidden": [64, -1]}, "hidden"),
        (("mlp", (1, 28, 28), 10), {"hidden": "64"}, "hidden"),
        (("mlp", (28, 28), 10), {}, "in_shape"),
        (("mlp", (1, 28, 28), 0), {}, "num_classes"),
    ],
)
def test_bad_values_name_the_field(args, kwargs, field):
    with pytest.raises(ValueError, match=rf"model\.{field}:"):
        build_model(*args, **kwargs)
