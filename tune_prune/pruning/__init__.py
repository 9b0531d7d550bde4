"""The pure pruning core: schedules, masks, budget policies, patience. torch only."""

from tune_prune.pruning.budget import BUDGET_POLICIES
from tune_prune.pruning.masks import CRITERIA, MaskSet, prunable_parameters
from tune_prune.pruning.patience import Patience
from tune_prune.pruning.schedules import SCHEDULE_KNOBS, SCHEDULES, ScheduleError, build_schedule

__all__ = [
    "BUDGET_POLICIES",
    "CRITERIA",
    "MaskSet",
    "Patience",
    "SCHEDULES",
    "SCHEDULE_KNOBS",
    "ScheduleError",
    "build_schedule",
    "prunable_parameters",
]
