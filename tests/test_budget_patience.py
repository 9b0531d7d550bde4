import pytest

from tune_prune.pruning import budget
from tune_prune.pruning.patience import Patience


def _simulate(policy, budget_epochs, n_events, used_fraction):
    spent, caps = 0, []
    for i in range(n_events):
        cap = policy(budget_epochs, spent, i, n_events)
        caps.append(cap)
        spent += max(1, int(cap * used_fraction))
    return caps, spent


@pytest.mark.parametrize("name", sorted(budget.BUDGET_POLICIES))
@pytest.mark.parametrize("n_events,budget_epochs", [(1, 10), (7, 7), (22, 40), (10, 100)])
@pytest.mark.parametrize("used", [1.0, 0.5, 0.0])
def test_policies_never_overspend_and_leave_an_epoch_for_every_event(name, n_events, budget_epochs, used):
    caps, spent = _simulate(budget.get(name), budget_epochs, n_events, used)
    assert all(c >= 1 for c in caps)
    assert spent <= budget_epochs


def test_even_split_and_carry_over_differ_when_events_stop_early():
    assert [budget.even(10, 0, i, 3) for i in range(3)] == [4, 3, 3]
    # carry_over: event 0 used 1 of its 3, so the rest is re-split
    assert budget.carry_over(10, 1, 1, 3) == 4
    assert budget.front_loaded(10, 0, 0, 3) == 8


def test_unknown_policy_lists_accepted_names():
    with pytest.raises(ValueError, match="accepted: carry_over, even, front_loaded"):
        budget.get("greedy")


def test_patience_stops_after_n_stale_epochs_and_keeps_best():
    p = Patience(patience=2)
    assert p.update(0.5, 0)
    assert p.update(0.6, 1)
    assert not p.update(0.6, 2)  # equal is not an improvement
    assert not p.should_stop
    assert not p.update(0.55, 3)
    assert p.should_stop
    assert (p.best, p.best_epoch) == (0.6, 1)


def test_min_delta_ignores_tiny_gains():
    p = Patience(patience=1, min_delta=0.01)
    p.update(0.5, 0)
    assert not p.update(0.505, 1)
    assert p.should_stop


def test_patience_zero_stops_at_first_non_improvement():
    p = Patience(patience=0)
    p.update(0.5, 0)
    assert not p.should_stop
    p.update(0.4, 1)
    assert p.should_stop


def test_negative_patience_is_refused():
    with pytest.raises(ValueError, match="patience"):
        Patience(patience=-1)
