"""tune_prune: one-shot vs iterative pruning under a compute budget.

The pure core (`tune_prune.pruning`, `tune_prune.frontier`) imports torch/pandas
only; Ray and MLflow live in `trainable`, `tracking` and `sweep`.
"""

__version__ = "0.1.0"
