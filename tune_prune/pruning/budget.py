"""How a trial's fine-tuning budget (in epochs) is spread over its prune events.

A policy is a pure function ``(budget_epochs, spent, event_index, n_events) -> cap``
giving the most epochs prune event ``event_index`` (0-based) may run. Every policy
leaves at least one epoch for each later event, so a trial never spends more than
its budget and always reaches its target sparsity; validation rejects a schedule
with more events than budget epochs.

A trial may also have no budget (``budget_epochs=None``): the paper's patience
protocol, where patience alone ends each event and only a per-event safety cap
(``max_event_epochs``) bounds it. ``event_cap`` is the one place both cases meet.
"""

from __future__ import annotations

from typing import Callable

BudgetPolicy = Callable[[int, int, int, int], int]


def even(budget_epochs: int, spent: int, event_index: int, n_events: int) -> int:
    """Equal fixed shares decided up front; epochs an event leaves unused are lost.

    The first ``budget mod n`` events get one extra epoch.
    """
    base, extra = divmod(budget_epochs, n_events)
    return base + (1 if event_index < extra else 0)


def carry_over(budget_epochs: int, spent: int, event_index: int, n_events: int) -> int:
    """An equal share of what remains; epochs an event leaves unused roll forward."""
    remaining = budget_epochs - spent
    return remaining // (n_events - event_index)


def front_loaded(budget_epochs: int, spent: int, event_index: int, n_events: int) -> int:
    """Everything that remains except one epoch reserved for each later event.

    Suits patience fine-tuning after a big first event (the hybrid schedule).
    """
    remaining = budget_epochs - spent
    return remaining - (n_events - event_index - 1)


BUDGET_POLICIES: dict[str, BudgetPolicy] = {
    "even": even,
    "carry_over": carry_over,
    "front_loaded": front_loaded,
}


def event_cap(budget_epochs: int | None, policy: str, spent: int, event_index: int, n_events: int,
              max_event_epochs: int | None = None) -> int:
    """The most epochs event ``event_index`` may run: the policy's share of a bounded budget,
    or the safety cap alone when the trial has no budget; never above ``max_event_epochs``."""
    if budget_epochs is None:
        if max_event_epochs is None:
            raise ValueError("a trial without a budget needs max_event_epochs (a per-event safety cap)")
        return max_event_epochs
    cap = get(policy)(budget_epochs, spent, event_index, n_events)
    return cap if max_event_epochs is None else min(cap, max_event_epochs)


def planned_range(budget_epochs: int | None, policy: str, least: list[int], most: list[int | None],
                  max_event_epochs: int | None = None) -> tuple[int, int]:
    """(fewest, most) fine-tuning epochs a trial can spend, given per event the fewest epochs it
    runs before it may stop (``least``: patience, or the fixed count) and the most it would run
    uncapped (``most``; None: until the cap). Each bound is simulated event by event, because
    what an event may use depends on what the earlier ones spent."""
    n = len(least)
    bounds = []
    for wanted in (least, most):
        spent = 0
        for i, w in enumerate(wanted):
            cap = event_cap(budget_epochs, policy, spent, i, n, max_event_epochs)
            spent += cap if w is None else min(cap, w)
        bounds.append(spent)
    return bounds[0], bounds[1]


def get(name: str) -> BudgetPolicy:
    try:
        return BUDGET_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown budget policy '{name}'; accepted: {', '.join(sorted(BUDGET_POLICIES))}"
        ) from None
