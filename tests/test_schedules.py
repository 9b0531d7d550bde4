import math

import pytest

from tune_prune.pruning.schedules import (
    ScheduleError,
    build_schedule,
    constant,
    geometric,
    hybrid,
    one_shot,
)


def _assert_valid(schedule, target):
    assert schedule[-1] == target
    assert all(0 < s < 1 for s in schedule)
    assert all(b > a for a, b in zip(schedule, schedule[1:]))


def test_one_shot_is_the_target_alone():
    assert one_shot(0.8) == (0.8,)


def test_geometric_0_9_rate_0_1_has_22_events_ending_exactly_at_target():
    s = geometric(0.9, rate0=0.1)
    assert len(s) == 22
    assert s[-1] == 0.9
    _assert_valid(s, 0.9)
    # every event removes the same fraction r of what remains
    r = 1 - 0.1 ** (1 / 22)
    remaining = [1 - x for x in (0.0,) + s]
    for before, after in zip(remaining, remaining[1:]):
        assert after / before == pytest.approx(1 - r, rel=1e-9)


def test_geometric_event_count_is_the_smallest_that_reaches_target():
    for target, rate0 in [(0.5, 0.1), (0.98, 0.05), (0.96, 0.2), (0.7, 0.02)]:
        n = len(geometric(target, rate0))
        assert 1 - (1 - rate0) ** n >= target - 1e-12
        assert 1 - (1 - rate0) ** (n - 1) < target


def test_geometric_exact_power_is_not_overcounted():
    # 1 - 0.5**3 = 0.875 exactly: three events, not four
    assert len(geometric(0.875, 0.5)) == 3


def test_constant_uses_round_half_even_like_the_authors():
    assert constant(0.98, 0.1) == pytest.approx(tuple(0.098 * i for i in range(1, 11)))
    assert len(constant(0.5, 0.2)) == 2  # round(2.5) == 2
    assert constant(0.3, 0.3) == (0.3,)
    _assert_valid(constant(0.9, 0.07), 0.9)


def test_hybrid_big_first_event_then_geometric_tail_over_original_weights():
    s = hybrid(0.9, first_fraction=0.7, rate0=0.1)
    assert s[0] == pytest.approx(0.63)
    _assert_valid(s, 0.9)
    tail = [b - a for a, b in zip(s, s[1:])]
    n = len(tail)
    assert n == math.ceil(math.log(1 - 0.27) / math.log(0.9))
    r = 1 - (1 - 0.27) ** (1 / n)
    assert tail == pytest.approx([r * (1 - r) ** t for t in range(n)])
    assert sum(tail) == pytest.approx(0.27)


@pytest.mark.parametrize(
    "name,target,knobs,field",
    [
        ("one_shot", 1.0, {}, "target"),
        ("one_shot", -0.1, {}, "target"),
        ("geometric", 0.9, {"rate0": 0.0}, "rate0"),
        ("constant", 0.5, {"step": 0.6}, "step"),
        ("hybrid", 0.9, {"first_fraction": 1.2, "rate0": 0.1}, "first_fraction"),
        ("geometric", 0.9, {"step": 0.1}, "rate0"),
        ("nope", 0.9, {}, "accepted: constant, geometric, hybrid, one_shot"),
    ],
)
def test_bad_knobs_name_the_field(name, target, knobs, field):
    with pytest.raises(ScheduleError, match=field):
        build_schedule(name, target, **knobs)


def test_hybrid_with_an_absolute_first_sparsity_is_a_row_of_the_papers_table():
    # Table 3 style: first step to 0.7 of the ORIGINAL weights, then a geometric tail at rate 0.05
    s = hybrid(0.92, rate0=0.05, first_sparsity=0.7)
    assert s[0] == 0.7 and s[-1] == 0.92
    assert s[1:] == pytest.approx(tuple(0.7 + t for t in geometric(0.92 - 0.7, 0.05)))
    assert hybrid(0.9, rate0=0.1, first_sparsity=0.63) == pytest.approx(hybrid(0.9, rate0=0.1, first_fraction=0.7))
    for bad in ({}, {"first_fraction": 0.7, "first_sparsity": 0.5}):
        with pytest.raises(ScheduleError, match="exactly one of first_fraction and first_sparsity"):
            hybrid(0.9, rate0=0.1, **bad)
    with pytest.raises(ScheduleError, match="first_sparsity 0.9 must be below the target 0.9"):
        hybrid(0.9, rate0=0.1, first_sparsity=0.9)
    with pytest.raises(ScheduleError, match=r"needs first_fraction or first_sparsity \(exactly one\)"):
        build_schedule("hybrid", 0.9, rate0=0.1)
