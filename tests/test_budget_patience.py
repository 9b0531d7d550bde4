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


def test_without_a_budget_the_safety_cap_is_every_events_cap_and_policies_are_not_asked():
    assert [budget.event_cap(None, "carry_over", spent, i, 5, max_event_epochs=200)
            for i, spent in enumerate([0, 999, 5000, 7, 0])] == [200] * 5
    with pytest.raises(ValueError, match="max_event_epochs"):
        budget.event_cap(None, "carry_over", 0, 0, 3)
    # with a budget the cap also clips the policy's share
    assert budget.event_cap(100, "front_loaded", 0, 0, 3) == 98
    assert budget.event_cap(100, "front_loaded", 0, 0, 3, max_event_epochs=40) == 40


def test_planned_range_simulates_both_ends_event_by_event():
    # no budget: patience 10 after every event, cap 50: 3 events cost 30 to 150 epochs
    assert budget.planned_range(None, "carry_over", [10, 10, 10], [None] * 3, max_event_epochs=50) == (30, 150)
    # a hybrid-like first patience of 200 with a cap of 1000
    assert budget.planned_range(None, "carry_over", [200, 10], [None, None], 1000) == (210, 2000)
    # budget 12, carry_over: events that use everything spend 4 + 4 + 4; patience 5 is clipped to the share
    assert budget.planned_range(12, "carry_over", [5, 5, 5], [None] * 3) == (12, 12)
    # patience 1 leaves epochs unused; the upper end is still the whole budget
    assert budget.planned_range(12, "carry_over", [1, 1, 1], [None] * 3) == (3, 12)
    # fixed epochs: both ends equal
    assert budget.planned_range(None, "carry_over", [4, 4], [4, 4], 100) == (8, 8)
