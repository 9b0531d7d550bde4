"""Frontier -> printable table, CSV and PNG plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tune_prune import frontier as fr


def format_frontier(front: pd.DataFrame, dense: dict[str, float]) -> str:
    """The table a sweep ends with: test accuracy (%) per sparsity and strategy, plus the dense baseline."""
    lines = []
    if dense.get("seeds"):
        lines.append(
            f"dense baseline (sparsity 0): test accuracy {dense['test_accuracy_mean'] * 100:.2f} "
            f"± {dense['test_accuracy_std'] * 100:.2f} % over {dense['seeds']} seed(s)"
        )
    table = fr.pivot(front)
    if table.empty:
        lines.append("no pruned trial finished: no frontier")
    else:
        lines.append("test accuracy (%) of each strategy's best configuration (chosen on validation), mean ± std over seeds:")
        lines.append(table.to_string())
    return "\n".join(lines)


def write_csv(front: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    front.to_csv(path, index=False)
    return path


def plot_frontier(front: pd.DataFrame, dense: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Test accuracy vs sparsity per strategy (error bars: std over seeds) with the dense baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for strategy, part in front.groupby("strategy"):
        part = part.sort_values("sparsity_level")
        ax.errorbar(part["sparsity_level"] * 100, part["test_accuracy_mean"] * 100,
                    yerr=part["test_accuracy_std"] * 100, marker="o", capsize=3, label=strategy)
    if dense.get("seeds"):
        ax.axhline(dense["test_accuracy_mean"] * 100, color="black", linestyle="--", linewidth=1,
                   label=f"dense ({dense['test_accuracy_mean'] * 100:.1f}%)")
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy-sparsity frontier")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
