"""The patience rule for fine-tuning after a prune event."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Patience:
    """Stop when the monitored metric (higher is better, or lower with mode="min") has not
    improved by more than ``min_delta`` for ``patience`` consecutive epochs; remember the best epoch.

    ``update`` is called once per evaluation, including the evaluation made right
    after pruning (epoch 0 of the event), so a fine-tune that never helps keeps
    the freshly pruned weights.
    """

    patience: int
    min_delta: float = 0.0
    mode: str = "max"  # "min" for a loss: lower is better
    best: float = field(default=float("-inf"), init=False)
    best_epoch: int = field(default=-1, init=False)
    stale: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {self.mode!r}")
        if self.mode == "min":
            self.best = float("inf")

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` at ``epoch``; return True when it is a new best."""
        better = value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        if better or self.best_epoch < 0:
            self.best, self.best_epoch, self.stale = value, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        # patience 0 means: stop at the first epoch that fails to improve.
        return self.stale >= max(self.patience, 1)
