"""The trial loop on real data (scikit-learn's digits), small enough for CI."""

import pytest
import torch

from tune_prune.data import load_dataset
from tune_prune.loop import Hooks, evaluate, pretrain_dense, run_trial
from tune_prune.pruning.masks import prunable_parameters
from tune_prune.spec import BudgetSpec, DatasetSpec, FinetuneSpec, ModelSpec, PretrainSpec, TrialSpec


def make_trial(schedule="geometric", target=0.9, knobs=(("rate0", 0.3),), patience=2, budget=12,
               policy="carry_over", epochs_per_event=None, first_patience=None, seed=0):
    return TrialSpec(
        dataset=DatasetSpec(name="digits", val_size=0.2, train_subset=600),
        model=ModelSpec(name="mlp", options=(("hidden", (64,)),)),
        pretrain=PretrainSpec(epochs=8, lr=0.05, batch_size=64),
        finetune=FinetuneSpec(lr=0.01, batch_size=64),
        budget=BudgetSpec(epochs=budget, policy=policy),
        schedule=schedule, target=target, seed=seed, knobs=knobs, patience=patience,
        first_patience=first_patience, epochs_per_event=epochs_per_event,
    )


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", val_size=0.2, train_subset=600)


@pytest.fixture(scope="module")
def dense(data):
    torch.set_num_threads(1)
    return pretrain_dense(make_trial(), data, torch.device("cpu"))


def test_pretraining_learns_something(dense):
    _, result = dense
    assert result.val_score > 0.8  # ten classes: chance is 0.1
    assert result.epochs == 8 and result.wall_seconds > 0


@pytest.mark.parametrize("policy", ["even", "carry_over", "front_loaded"])
@pytest.mark.parametrize("schedule,knobs", [("one_shot", ()), ("constant", (("step", 0.3),)),
                                            ("geometric", (("rate0", 0.3),)),
                                            ("hybrid", (("first_fraction", 0.7), ("rate0", 0.3)))])
def test_trial_reaches_target_within_budget(data, dense, schedule, knobs, policy):
    trial = make_trial(schedule=schedule, knobs=knobs, policy=policy, patience=1)
    epochs = []
    records = run_trial(trial, data, dense[0], torch.device("cpu"), Hooks(on_epoch=epochs.append))
    assert len(records) == len(trial.sparsities)
    for rec, scheduled in zip(records, trial.sparsities):
        assert abs(rec.sparsity - scheduled) < 1e-4
        assert 1 <= rec.event_epochs <= rec.budget_cap
    assert records[-1].sparsity == pytest.approx(0.9, abs=1e-4)
    assert records[-1].cost_epochs == len(epochs) <= trial.budget.epochs
    assert [e.global_epoch for e in epochs] == list(range(1, len(epochs) + 1))


def test_fixed_epochs_run_exactly_that_many(data, dense):
    trial = make_trial(schedule="constant", knobs=(("step", 0.3),), patience=None, epochs_per_event=2)
    records = run_trial(trial, data, dense[0], torch.device("cpu"))
    assert [r.event_epochs for r in records] == [2, 2, 2]
    assert records[-1].cost_epochs == 6


def test_kept_checkpoint_is_the_best_validation_epoch(data, dense):
    trial = make_trial(schedule="one_shot", knobs=(), patience=3, budget=10)
    seen, finals = [], []
    (rec,) = run_trial(trial, data, dense[0], torch.device("cpu"), Hooks(on_epoch=seen.append, on_final=finals.append))
    best = max([rec.pruned_val_accuracy] + [e.val_accuracy for e in seen])
    assert rec.val_accuracy == pytest.approx(best)
    # fine-tuning beat the freshly pruned weights, and later epochs ran: keeping the last
    # epoch's weights instead of the best one's would show below
    assert 1 <= rec.best_epoch < len(seen)
    kept = seen[rec.best_epoch - 1]
    assert kept.val_accuracy == pytest.approx(rec.val_accuracy)
    assert seen[-1].val_loss != pytest.approx(kept.val_loss)
    # the model handed on is that epoch's checkpoint, and test accuracy was measured on it
    final = finals[0]
    again = evaluate(final, data, "val")
    assert (again.accuracy, again.loss) == (pytest.approx(kept.val_accuracy), pytest.approx(kept.val_loss))
    assert rec.test_accuracy == pytest.approx(evaluate(final, data, "test").accuracy)


def test_resuming_from_an_event_checkpoint_reproduces_the_uninterrupted_run(data, dense):
    trial = make_trial(budget=15)
    states = []
    full = run_trial(trial, data, dense[0], torch.device("cpu"),
                     Hooks(on_event=lambda rec, st: states.append(st)))
    resumed = run_trial(trial, data, dense[0], torch.device("cpu"), resume=states[1])
    assert [r.event for r in resumed] == [r.event for r in full[2:]]
    for a, b in zip(resumed, full[2:]):
        assert a.cost_epochs == b.cost_epochs
        assert a.val_accuracy == pytest.approx(b.val_accuracy)
        assert a.sparsity == b.sparsity


def test_test_split_never_drives_selection(data, dense, monkeypatch):
    # Break the test labels: if test data fed patience or checkpoint choice, val results would move.
    trial = make_trial(budget=8)
    clean = run_trial(trial, data, dense[0], torch.device("cpu"))
    from dataclasses import replace

    shuffled = replace(data, y_test=data.y_test[torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(0))])
    broken = run_trial(trial, shuffled, dense[0], torch.device("cpu"))
    assert [r.val_accuracy for r in broken] == [r.val_accuracy for r in clean]
    assert [r.cost_epochs for r in broken] == [r.cost_epochs for r in clean]
    assert broken[-1].test_accuracy != clean[-1].test_accuracy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trial_runs_on_cuda_with_exact_masks(data):
    device = torch.device("cuda")
    gdata = data.to(device)
    state, result = pretrain_dense(make_trial(), gdata, device)
    assert result.val_score > 0.8
    masks, finals = [], []
    records = run_trial(make_trial(), gdata, state, device,
                        Hooks(on_event=lambda rec, st: masks.append(st.mask_state), on_final=finals.append))
    assert records[-1].sparsity == pytest.approx(0.9, abs=1e-4)
    assert records[-1].cost_epochs <= 12
    # exact on the GPU: what one event pruned stays pruned, and after the last event's
    # fine-tuning every masked weight of the final model is exactly zero
    for before, after in zip(masks, masks[1:]):
        assert all(torch.all(after[n][~before[n]] == 0) for n in before)
    weights = prunable_parameters(finals[0])
    assert all(p.is_cuda for p in weights.values())
    total = sum(p.numel() for p in weights.values())
    assert sum(int((~m).sum()) for m in masks[-1].values()) == round(0.9 * total)
    assert all(torch.all(weights[n][~m.to(device)] == 0) for n, m in masks[-1].items())
    # the test accuracy measured on the GPU is that of these weights
    test = evaluate(finals[0], gdata, "test")
    assert test.accuracy == pytest.approx(records[-1].test_accuracy) and test.accuracy > 0.5
