"""How a trial's fine-tuning budget (in epochs) is spread over its prune events.

A policy is a pure function ``(budget_epochs, spent, event_index, n_events) -> cap``
giving the most epochs prune event ``event_index`` (0-based) may run. Every policy
leaves at least one epoch for each later event, so a trial never spends more than
its budget and always reaches its target sparsity; validation rejects a schedule
with more events than budget epochs.
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


def get(name: str) -> BudgetPolicy:
    try:
        return BUDGET_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown budget policy '{name}'; accepted: {', '.join(sorted(BUDGET_POLICIES))}"
        ) from None
