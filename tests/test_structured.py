"""Structured (channel) pruning: physically smaller models, measured ratios, resumable."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tune_prune.data import load_dataset
from tune_prune.loop import Hooks, LoopState, pretrain_dense, run_trial
from tune_prune.models import build_model
from tune_prune.pruning.structured import ChannelPruner, prunable_count, resize_to_state
from tune_prune.spec import STRUCTURED, ModelSpec, SpecError, parse_spec


def _resnet20():
    torch.manual_seed(0)
    return build_model("resnet20", (3, 32, 32), 10)


def test_channels_are_cut_to_the_ratio_of_original_widths_with_residual_groups_consistent():
    model = _resnet20()
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruner = ChannelPruner(model, torch.zeros(1, 3, 32, 32))
    pruner.prune_to(0.5)
    pruner.prune_to(0.75)  # cumulative over ORIGINAL widths, not over what was left
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == round(0.25 * original[name]), name
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.weight.numel() == m.running_mean.numel()
    # residual-coupled layers: every block output of a stage and the stem/shortcut agree
    for stage in model.stages:
        outs = {blk.conv2.out_channels for blk in stage} | {blk.shortcut[0].out_channels for blk in stage if len(blk.shortcut)}
        assert len(outs) == 1
    assert model.stem[0].out_channels == model.stages[0][0].conv2.out_channels
    assert model.fc.out_features == 10 and model.fc.in_features == model.stages[-1][-1].conv2.out_channels
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_reached_ratios_match_parameters_and_macs_counted_independently():
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 28, 28), 10, width=16)

    def by_hand(w1, w2, w3):  # 28x28 -> 14 -> 7 -> 4 (stride-2 3x3 convs), 2x2 pool, linear
        params = 9 * (1 * w1 + w1 * w2 + w2 * w3) + (4 * w3 * 10 + 10)
        macs = 9 * (14 * 14 * w1 * 1 + 7 * 7 * w2 * w1 + 4 * 4 * w3 * w2) + 4 * w3 * 10
        return params, macs

    dense_params, dense_macs = by_hand(16, 32, 32)
    pruner = ChannelPruner(model, torch.zeros(1, 1, 28, 28))
    assert (pruner.dense_params, pruner.dense_macs) == (dense_params, dense_macs)
    pruner.prune_to(0.6)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [round(0.4 * 16), round(0.4 * 32), round(0.4 * 32)]
    params, macs = by_hand(*widths)
    got = pruner.reached()
    assert got["param_sparsity"] == pytest.approx(1 - params / dense_params, abs=1e-12)
    assert got["mac_sparsity"] == pytest.approx(1 - macs / dense_macs, abs=1e-12)
    assert got["channel_sparsity"] == pytest.approx(1 - sum(widths) / 80)
    assert pruner.measured_sparsity() == 0.6


def test_magnitude_cuts_the_weakest_channel_of_a_group():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 2, 2), 3, hidden=[4])
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].weight[2].fill_(0.01)  # hidden unit 2: tiny incoming weights
        model[3].weight.fill_(1.0)
        model[3].weight[:, 2].fill_(0.01)  # and tiny outgoing ones
    ChannelPruner(model, torch.zeros(1, 1, 2, 2)).prune_to(0.25)
    assert model[1].out_features == 3 and model[3].in_features == 3
    assert (model[1].weight > 0.5).all() and (model[3].weight > 0.5).all()


@pytest.mark.parametrize("criterion", ["taylor", "hessian_diag"])
def test_gradient_criteria_cut_by_gradient_not_by_size(criterion):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 2, 2), 3, hidden=[4])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        model[1].weight[0].fill_(5.0)  # the largest unit...
    names = dict(model.named_parameters())
    g = {n: torch.ones_like(p) for n, p in names.items()}
    g["0.weight" if "0.weight" in g else "1.weight"][0] = 0.0  # ...with no gradient through it
    g["1.weight"][0].zero_()
    g["1.bias"][0] = 0.0
    g["3.weight"][:, 0] = 0.0
    g2 = {n: v.pow(2) for n, v in g.items()}
    ChannelPruner(model, torch.zeros(1, 1, 2, 2)).prune_to(0.25, criterion, g, g2)
    assert model[1].out_features == 3
    assert (model[1].weight < 2).all()  # the big, gradient-free unit went
    # and magnitude would have kept it
    torch.manual_seed(0)
    other = build_model("mlp", (1, 2, 2), 3, hidden=[4])
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(1.0)
        other[1].weight[0].fill_(5.0)
        other[1].weight[1].fill_(0.5)
    ChannelPruner(other, torch.zeros(1, 1, 2, 2)).prune_to(0.25)
    assert (other[1].weight == 5.0).any()


def test_resize_to_state_rebuilds_a_pruned_model_exactly():
    model = _resnet20()
    ChannelPruner(model, torch.zeros(1, 3, 32, 32)).prune_to(0.7)
    state = model.state_dict()
    rebuilt = resize_to_state(_resnet20(), state)
    rebuilt.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))
    assert prunable_count(rebuilt) == prunable_count(model)


def test_pruner_refuses_bad_ratios_and_criteria():
    pruner = ChannelPruner(_resnet20(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pruner.prune_to(1.0)
    with pytest.raises(ValueError, match="accepted: global_magnitude, hessian_diag, l2_magnitude, taylor"):
        pruner.prune_to(0.5, "random")
    with pytest.raises(ValueError, match="needs gradient statistics"):
        pruner.prune_to(0.5, "taylor")


# ---------------------------------------------------------------- through the training loop

@pytest.fixture(scope="module")
def cnn_setup():
    from test_loop import make_trial

    torch.set_num_threads(1)
    data = load_dataset("digits", val_size=0.2, train_subset=600)
    base = replace(make_trial(target=0.75, knobs=(("rate0", 0.4),), patience=1, budget=6),
                   model=ModelSpec(name="small_cnn", options=(("width", 8),)), structure=STRUCTURED,
                   criterion="l2_magnitude")
    state, _ = pretrain_dense(base, data, torch.device("cpu"))
    return base, data, state


def test_a_structured_trial_ends_with_a_physically_smaller_model(cnn_setup):
    base, data, state = cnn_setup
    finals = []
    records = run_trial(base, data, state, torch.device("cpu"), Hooks(on_final=finals.append))
    dense = build_model("small_cnn", data.in_shape, data.num_classes, width=8)
    final = finals[0]
    assert [r.sparsity for r in records] == pytest.approx(list(base.sparsities))
    assert prunable_count(final) == pytest.approx((1 - records[-1].param_sparsity) * prunable_count(dense), abs=0.5)
    assert prunable_count(final) < 0.2 * prunable_count(dense)
    assert records[-1].mac_sparsity > 0.75 and records[-1].channel_sparsity > 0.6
    assert records[-1].cost_epochs <= base.budget.epochs
    assert not final.training


def test_a_structured_trial_resumes_from_an_event_checkpoint(cnn_setup):
    base, data, state = cnn_setup
    assert len(base.sparsities) >= 2
    saved: list[LoopState] = []
    full = run_trial(base, data, state, torch.device("cpu"), Hooks(on_event=lambda r, s: saved.append(s)))
    resumed = run_trial(base, data, state, torch.device("cpu"), resume=saved[0])
    assert [r.val_accuracy for r in resumed] == [r.val_accuracy for r in full[1:]]
    assert [r.param_sparsity for r in resumed] == [r.param_sparsity for r in full[1:]]


def test_spec_accepts_structure_and_refuses_unknown_ones(quickstart_path):
    import yaml

    raw = yaml.safe_load(quickstart_path.read_text())
    plain = parse_spec(raw)
    raw["structure"] = "structured"
    spec = parse_spec(raw)
    assert spec.criterion == "l2_magnitude"  # the structured default: L2 group norm
    assert all(t.structure == "structured" for t in spec.trials())
    # same settings, different structure: different trials; unstructured keys did not move
    assert {t.key for t in spec.trials() if not t.is_dense}.isdisjoint(t.key for t in plain.trials())
    raw["structure"] = "blocky"
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.field == "structure" and "structured, unstructured" in str(info.value)


def test_unstructured_trial_keys_are_unchanged_by_the_structure_field(quickstart_path):
    """Keys published before ``structure`` (and the model sources, prune patterns, the per-event cap) existed must
    stay, or old sweeps could not resume: the key is the hash of the old fields only."""
    from tune_prune.spec import _hash, load_spec

    for trial in load_spec(quickstart_path).trials()[:5]:
        d = trial.to_dict()
        for added in ("structure", "prune_include", "prune_exclude", "task", "arm"):
            del d[added]
        d["model"] = {"name": d["model"]["name"], "options": d["model"]["options"]}
        for added in ("monitor", "optimizer", "batches_per_epoch"):
            del d["finetune"][added]
        del d["pretrain"]["optimizer"]
        del d["budget"]["max_event_epochs"]
        assert trial.key == _hash(d)
        assert trial.dense_key == _hash({"model": d["model"], "dataset": d["dataset"], "seed": d["seed"],
                                         "pretrain": d["pretrain"]})


def test_every_criterion_a_spec_accepts_has_a_structured_form():
    """The spec validates against criteria.CRITERIA for both modes: the channel pruner must know them all."""
    from tune_prune.pruning.criteria import CRITERIA
    from tune_prune.pruning.structured import STRUCTURED_CRITERIA

    # wanda compares weights within an output row and sparsegpt refits them: no channel rule, both
    # refused in structured mode at validate
    assert set(STRUCTURED_CRITERIA) == set(CRITERIA) - {"wanda", "sparsegpt"}
