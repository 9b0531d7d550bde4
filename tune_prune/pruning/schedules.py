"""Pruning schedules as pure functions: (target, knobs) -> cumulative sparsities.

Index convention (stated once, tested): a schedule is a tuple ``(s_1, ..., s_n)``
where ``s_i`` is the fraction of the ORIGINAL prunable weights that is pruned
after prune event ``i`` (1-based, no leading 0). It is non-empty, strictly
increasing, every entry lies in (0, 1) and ``s_n`` equals the target exactly.
"""

from __future__ import annotations

import math
from typing import Callable

ScheduleFn = Callable[..., tuple[float, ...]]

#: name -> schedule function; keys equal the function names.
SCHEDULES: dict[str, ScheduleFn] = {}

#: name -> the knobs that schedule accepts (besides ``target``).
SCHEDULE_KNOBS: dict[str, tuple[str, ...]] = {}
#: name -> groups of knobs of which exactly one must be given; every other knob is required.
SCHEDULE_ONE_OF: dict[str, tuple[tuple[str, ...], ...]] = {"hybrid": (("first_fraction", "first_sparsity"),)}


def required_knobs(name: str) -> tuple[str, ...]:
    """The knobs schedule ``name`` cannot do without (alternatives in SCHEDULE_ONE_OF excluded)."""
    optional = {k for group in SCHEDULE_ONE_OF.get(name, ()) for k in group}
    return tuple(k for k in SCHEDULE_KNOBS[name] if k not in optional)


class ScheduleError(ValueError):
    """A schedule knob or target is out of range; the message names it."""


def _register(*knobs: str) -> Callable[[ScheduleFn], ScheduleFn]:
    def deco(fn: ScheduleFn) -> ScheduleFn:
        SCHEDULES[fn.__name__] = fn
        SCHEDULE_KNOBS[fn.__name__] = knobs
        return fn

    return deco


def get(name: str) -> ScheduleFn:
    """Return the schedule function registered as ``name``."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ScheduleError(
            f"unknown schedule '{name}'; accepted: {', '.join(sorted(SCHEDULES))}"
        ) from None


def _check_target(target: float) -> float:
    target = float(target)
    if not 0.0 < target < 1.0:
        raise ScheduleError(f"target sparsity must be in (0, 1), got {target}")
    return target


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ScheduleError(f"{name} must be in (0, 1), got {value}")
    return value


def _events_to_reach(target: float, rate0: float) -> int:
    """Smallest n with 1 - (1 - rate0)**n >= target (a tiny tolerance absorbs float noise)."""
    n = math.ceil(math.log1p(-target) / math.log1p(-rate0) - 1e-9)
    return max(1, n)


def _geometric_cumulative(target: float, n: int) -> tuple[float, ...]:
    # Each event removes the same fraction r of what remains; r is chosen so
    # that n events land exactly on target.
    keep = 1.0 - target
    r = 1.0 - keep ** (1.0 / n)
    values = [1.0 - (1.0 - r) ** i for i in range(1, n)]
    return tuple(values) + (target,)


@_register()
def one_shot(target: float) -> tuple[float, ...]:
    """A single prune event straight to ``target``."""
    return (_check_target(target),)


@_register("step")
def constant(target: float, step: float) -> tuple[float, ...]:
    """n = round(target / step) equal events of target/n of the original weights each.

    Python's round (half to even) is used, as in the authors' code; at least one event.
    """
    target = _check_target(target)
    step = float(step)
    if not 0.0 < step <= target:
        raise ScheduleError(f"step must be in (0, target={target}], got {step}")
    n = max(1, round(target / step))
    return tuple(i * target / n for i in range(1, n)) + (target,)


@_register("rate0")
def geometric(target: float, rate0: float) -> tuple[float, ...]:
    """Each event removes a fixed fraction r of the weights that remain.

    n is the smallest count with 1-(1-rate0)^n >= target; then r = 1-(1-target)^(1/n),
    so the last cumulative sparsity is exactly ``target``.
    """
    target = _check_target(target)
    rate0 = _check_rate("rate0", rate0)
    return _geometric_cumulative(target, _events_to_reach(target, rate0))


@_register("first_fraction", "first_sparsity", "rate0")
def hybrid(target: float, rate0: float, first_fraction: float | None = None,
           first_sparsity: float | None = None) -> tuple[float, ...]:
    """One big event to p_k, then a geometric tail to target.

    p_k is ``first_sparsity`` (absolute, as in the paper's Tables 3-4, which only use
    p_k below the target) or ``first_fraction * target``: exactly one of the two.
    Variant implemented (the authors' code): the tail removes r(1-r)^(t-1) of the
    ORIGINAL weights at tail event t, with n the smallest count such that
    1-(1-rate0)^n >= target - p_k and r = 1-(1-(target-p_k))^(1/n); the tail therefore
    sums to exactly target - p_k, i.e. s = p_k + geometric(target - p_k, rate0).
    """
    target = _check_target(target)
    rate0 = _check_rate("rate0", rate0)
    if (first_fraction is None) == (first_sparsity is None):
        raise ScheduleError("hybrid needs exactly one of first_fraction and first_sparsity")
    if first_sparsity is not None:
        p_k = _check_rate("first_sparsity", first_sparsity)
        if p_k >= target:
            raise ScheduleError(f"first_sparsity {p_k} must be below the target {target}")
    else:
        p_k = _check_rate("first_fraction", first_fraction) * target
    tail_total = target - p_k
    n = _events_to_reach(tail_total, rate0)
    tail = _geometric_cumulative(tail_total, n)
    values = (p_k,) + tuple(p_k + t for t in tail[:-1]) + (target,)
    return values


def build_schedule(name: str, target: float, **knobs: float) -> tuple[float, ...]:
    """Build the schedule ``name`` for ``target``; unknown or missing knobs raise ScheduleError."""
    fn = get(name)
    accepted = SCHEDULE_KNOBS[name]
    unknown = sorted(set(knobs) - set(accepted))
    if unknown:
        raise ScheduleError(
            f"schedule '{name}' does not take {', '.join(unknown)}; "
            f"accepted knobs: {', '.join(accepted) or 'none'}"
        )
    missing = [k for k in required_knobs(name) if k not in knobs]
    for group in SCHEDULE_ONE_OF.get(name, ()):
        if sum(k in knobs for k in group) != 1:
            missing.append(" or ".join(group) + " (exactly one)")
    if missing:
        raise ScheduleError(f"schedule '{name}' needs {', '.join(missing)}")
    schedule = fn(target, **knobs)
    check_schedule(schedule, target)
    return schedule


def check_schedule(schedule: tuple[float, ...], target: float) -> None:
    """Assert the invariants every schedule must satisfy (see the module docstring)."""
    if not schedule:
        raise ScheduleError("schedule is empty")
    if any(not 0.0 < s < 1.0 for s in schedule):
        raise ScheduleError(f"schedule entries must be in (0, 1): {schedule}")
    if any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ScheduleError(f"schedule must be strictly increasing: {schedule}")
    if schedule[-1] != target:
        raise ScheduleError(f"schedule must end at the target {target}: {schedule}")
