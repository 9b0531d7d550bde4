import pytest
import torch

from tune_prune.data import load_dataset
from tune_prune.loop import gradient_statistics, pretrain_dense, run_trial
from tune_prune.pruning import criteria
from tune_prune.pruning.masks import MaskSet
from tune_prune.spec import SpecError, parse_spec


def test_scores_by_hand():
    w = {"a": torch.tensor([1.0, -2.0, 0.5])}
    g = {"a": torch.tensor([0.1, 0.1, -4.0])}
    g2 = {"a": torch.tensor([0.01, 1.0, 16.0])}
    assert torch.equal(criteria.scores("global_magnitude", w)["a"], torch.tensor([1.0, 2.0, 0.5]))
    assert torch.allclose(criteria.scores("taylor", w, g, g2)["a"], torch.tensor([0.1, 0.2, 2.0]))
    assert torch.allclose(criteria.scores("hessian_diag", w, g, g2)["a"], torch.tensor([0.005, 2.0, 2.0]))


def test_gradient_criteria_prune_a_different_set_than_magnitude():
    w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    g = {"a": torch.tensor([10.0, 1.0, 1.0, 0.01])}
    # by magnitude 1.0 goes first; by Taylor |w g| the 4.0 with a tiny gradient goes first
    assert criteria.scores("taylor", w, g, g)["a"].argmin().item() == 3
    assert criteria.scores("global_magnitude", w)["a"].argmin().item() == 0


def test_unknown_or_underfed_criterion_is_refused():
    with pytest.raises(ValueError, match="accepted: global_magnitude, hessian_diag, l2_magnitude, sparsegpt, taylor, wanda"):
        criteria.get("random")
    with pytest.raises(ValueError, match="needs gradient statistics"):
        criteria.scores("taylor", {"a": torch.ones(2)})


def test_spec_refuses_an_unknown_criterion(quickstart_path):
    import yaml

    raw = yaml.safe_load(quickstart_path.read_text())
    raw["criterion"] = "random"
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.field == "criterion"


@pytest.mark.parametrize("name", ["taylor", "hessian_diag"])
def test_gradient_criteria_run_in_a_trial_and_reach_the_exact_target(name):
    from test_loop import make_trial

    data = load_dataset("digits", val_size=0.2, train_subset=600)
    base = make_trial()
    state, _ = pretrain_dense(base, data, torch.device("cpu"))
    from dataclasses import replace

    trial = replace(base, criterion=name)
    records = run_trial(trial, data, state, torch.device("cpu"))
    assert len(records) == len(trial.sparsities) > 1  # zip below would pass an empty list
    for rec, s in zip(records, trial.sparsities):
        assert abs(rec.sparsity - s) < 1e-4
    assert records[-1].cost_epochs <= trial.budget.epochs
    # the chosen weights differ from magnitude pruning's
    mag = run_trial(base, data, state, torch.device("cpu"))
    assert [r.val_accuracy for r in records] != [r.val_accuracy for r in mag]


def test_gradient_statistics_leave_weights_and_batchnorm_untouched():
    from tune_prune.models import build_model

    torch.manual_seed(0)
    data = load_dataset("digits", val_size=0.2, train_subset=300)
    model = build_model("small_cnn", data.in_shape, data.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = MaskSet(model)
    g, g2 = gradient_statistics(model, masks, data, 32, torch.Generator().manual_seed(0), batches=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(g) == set(masks.params) and all((g2[n] >= g[n].pow(2) - 1e-9).all() for n in g)
