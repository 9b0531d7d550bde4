"""The metric each task is scored by, named once with its direction. Pure Python.

A task's metric is logged as ``val_<name>`` and ``test_<name>`` (MLflow, Tune, records);
patience and the kept checkpoint, the frontier, Pareto, ``recommend``, adaptive search
and the plots ask this module which way is better rather than assuming "higher".

- ``classification``: accuracy, higher is better, shown in percent.
- ``causal_lm``: perplexity (exp of the mean next-token loss), lower is better, shown as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str  # accuracy | perplexity
    higher_is_better: bool
    percent: bool  # shown x100 with a % sign
    floor: float  # no value can lie below it (a CI is clipped there)
    ceiling: float  # nor above

    @property
    def val(self) -> str:
        return f"val_{self.name}"

    @property
    def test(self) -> str:
        return f"test_{self.name}"

    def column(self, split: str, stat: str) -> str:
        """A frontier column: ``column("test", "ci95")`` -> 'test_accuracy_ci95'."""
        return f"{split}_{self.name}_{stat}"

    @property
    def mode(self) -> str:
        """Ray Tune / Optuna / Patience direction."""
        return "max" if self.higher_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        """Strictly better: a beats b."""
        return a > b if self.higher_is_better else a < b

    @property
    def ascending(self) -> bool:
        """How to sort so that the best value comes first (pandas' ``ascending``)."""
        return not self.higher_is_better

    def score(self, value: float) -> float:
        """The value turned so that larger is always better (for dominance checks)."""
        return value if self.higher_is_better else -value

    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def shown(self, value: float) -> float:
        """The value as a person reads it (accuracy in percent)."""
        return value * 100 if self.percent else value

    def fmt(self, value: float, digits: int = 2) -> str:
        """'91.23 %' or '37.41'."""
        return f"{self.shown(value):.{digits}f}" + (" %" if self.percent else "")

    def interval(self, mean: float, halfwidth: float) -> tuple[float, float]:
        """mean ± halfwidth, shown, clipped to what the metric can take."""
        lo, hi = max(self.floor, mean - halfwidth), min(self.ceiling, mean + halfwidth)
        return self.shown(lo), self.shown(hi)

    @property
    def unit(self) -> str:
        return " (%)" if self.percent else ""

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def label(self, split: str = "test") -> str:
        """Axis and table label: 'test accuracy (%)', 'test perplexity'."""
        return f"{split} {self.name}{self.unit}"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


ACCURACY = Metric("accuracy", higher_is_better=True, percent=True, floor=0.0, ceiling=1.0)
PERPLEXITY = Metric("perplexity", higher_is_better=False, percent=False, floor=1.0, ceiling=math.inf)

#: task -> its metric
TASKS: dict[str, Metric] = {"classification": ACCURACY, "causal_lm": PERPLEXITY}
METRICS: dict[str, Metric] = {m.name: m for m in TASKS.values()}


def for_task(task: str) -> Metric:
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"task: unknown value {task!r}; accepted: {', '.join(TASKS)}") from None


def of_columns(columns: Any) -> Metric:
    """The metric a frame of records (``val_<name>``) or of frontier points (``val_<name>_mean``)
    carries; accuracy when it names none (classification sweeps logged before tasks existed)."""
    cols = set(columns)
    for m in METRICS.values():
        if m.val in cols or f"{m.val}_mean" in cols or f"{m.test}_mean" in cols:
            return m
    return ACCURACY
