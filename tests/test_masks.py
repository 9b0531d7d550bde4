import pytest
import torch
from torch import nn

from tune_prune.pruning.masks import MaskSet, prunable_parameters
from tune_prune.pruning.schedules import geometric, hybrid


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def test_prunable_parameters_are_conv_and_linear_weights_and_biases_not_batchnorm():
    names = list(prunable_parameters(_net()))
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"]


def test_measured_sparsity_matches_every_event_of_a_schedule():
    model = _net()
    masks = MaskSet(model)
    for s in geometric(0.9, 0.1):
        masks.prune_to(s)
        assert abs(masks.measured_sparsity() - s) < 1e-4  # 0.01 percentage points
        assert abs(masks.sparsity - s) <= 0.5 / masks.total + 1e-12


def test_pruning_is_global_by_magnitude_over_original_weights():
    model = _net()
    masks = MaskSet(model)
    all_abs = torch.cat([p.detach().abs().flatten() for p in masks.params.values()])
    masks.prune_to(0.5)
    kept = torch.cat([p.detach().abs().flatten() for p in masks.params.values()])
    threshold = all_abs.sort().values[round(0.5 * masks.total) - 1]
    # everything kept is at least as large as everything removed
    assert kept[kept > 0].min() >= threshold
    # global: layers end up with different sparsities
    assert len({round(v, 3) for v in masks.layer_sparsities().values()}) > 1


def test_already_pruned_stay_pruned_even_if_other_weights_shrink():
    model = _net()
    masks = MaskSet(model)
    masks.prune_to(0.3)
    before = {n: m.clone() for n, m in masks.masks.items()}
    # shrink live weights below everything: they must not swap places with pruned ones
    with torch.no_grad():
        for p in masks.params.values():
            p.mul_(1e-6)
    masks.prune_to(0.6)
    for n, m in masks.masks.items():
        assert torch.all(m[before[n] == 0] == 0)
    assert masks.sparsity == pytest.approx(0.6, abs=1e-4)


def test_masks_stay_exact_through_sgd_with_momentum_and_weight_decay():
    model = _net()
    masks = MaskSet(model)
    masks.prune_to(0.8)
    pruned = {n: (m == 0) for n, m in masks.masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        masks.apply_()
    for n, p in masks.params.items():
        assert torch.all(p[pruned[n]] == 0)
    assert masks.measured_sparsity() == pytest.approx(0.8, abs=1e-4)


def test_without_apply_momentum_revives_pruned_weights():
    # the failure apply_() exists to prevent: shows the test above can fail
    model = _net()
    masks = MaskSet(model)
    masks.prune_to(0.8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert masks.measured_sparsity() < 0.5


def test_mask_state_round_trips_to_a_fresh_model():
    model = _net()
    masks = MaskSet(model)
    for s in hybrid(0.9, 0.7, 0.1):
        masks.prune_to(s)
    other = _net(seed=1)
    own = {n: p.detach().clone() for n, p in prunable_parameters(other).items()}
    other_masks = MaskSet(other)
    other_masks.load_state_dict(masks.state_dict())
    assert other_masks.measured_sparsity() == pytest.approx(0.9, abs=1e-4)
    # the same positions, not merely the same count (the fresh model's own magnitudes would
    # pick others), applied to the fresh model's own weights
    for n, m in masks.masks.items():
        assert torch.equal(other_masks.masks[n], m), n
        assert torch.equal(other_masks.params[n], own[n] * m), n


def test_out_of_range_sparsity_is_refused():
    masks = MaskSet(_net())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        masks.prune_to(1.0)
