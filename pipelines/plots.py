"""PNG plots logged with each weekly MLflow run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.vocabulary import EVENT_TYPES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_feature_importance(importance: pd.Series, path: str | Path, top: int = 20) -> Path:
    """Horizontal bars of the `top` features by total gain for one target."""
    plt = _pyplot()
    shown = importance.sort_values().tail(top)
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
    axis.barh(shown.index, shown.to_numpy(), color="#4c72b0")
    axis.set_xlabel("total gain")
    axis.set_title(f"LightGBM feature importance: {importance.name}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def plot_recall_curves(curves: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Recall@k per type, one line per ranking (`curves`: name -> frame with `k` and one column per type)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(EVENT_TYPES), figsize=(12, 3.6), sharey=False)
    for axis, event_type in zip(axes, EVENT_TYPES):
        for name, curve in curves.items():
            axis.plot(curve["k"], curve[event_type], marker="o", label=name)
        axis.set_title(f"recall@k: {event_type}")
        axis.set_xlabel("k")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("recall")
    axes[-1].legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
